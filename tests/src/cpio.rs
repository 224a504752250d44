//! A writer for the cpio "newc" format, the one the Linux kernel unpacks
//! as an initramfs (Documentation/driver-api/early-userspace/
//! buffer-format.rst). Writing it here, rather than running `cpio`, lets
//! the archive hold device nodes without root and come out byte-for-byte
//! the same for the same inputs (mtime 0, inode numbers in order).

use std::collections::BTreeSet;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// An archive being written.
#[derive(Default)]
pub struct Archive {
    bytes: Vec<u8>,
    next_inode: u32,
    directories: BTreeSet<String>,
}

struct Entry<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

impl Archive {
    /// A directory; parents must come first (or use `file_with_parents`).
    pub fn directory(&mut self, path: &str, perm: u32) {
        let name = path.trim_start_matches('/').to_string();
        if !self.directories.insert(name.clone()) {
            return;
        }
        self.entry(Entry {
            name: &name,
            mode: S_IFDIR | perm,
            nlink: 2,
            rdev: (0, 0),
            data: &[],
        });
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(Entry {
            name: path.trim_start_matches('/'),
            mode: S_IFREG | perm,
            nlink: 1,
            rdev: (0, 0),
            data,
        });
    }

    /// A regular file, with any of its directories not yet in the archive.
    pub fn file_with_parents(&mut self, path: &str, perm: u32, data: &[u8]) {
        let trimmed = path.trim_start_matches('/');
        let mut prefix = String::new();
        let parts: Vec<&str> = trimmed.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            let dir = prefix.clone();
            self.directory(&dir, 0o755);
        }
        self.file(trimmed, perm, data);
    }

    /// A character device node.
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(Entry {
            name: path.trim_start_matches('/'),
            mode: S_IFCHR | perm,
            nlink: 1,
            rdev: (major, minor),
            data: &[],
        });
    }

    /// Ends the archive with its trailer entry.
    pub fn finish(&mut self) {
        self.entry(Entry {
            name: "TRAILER!!!",
            mode: 0,
            nlink: 1,
            rdev: (0, 0),
            data: &[],
        });
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// One header, name and data, each padded to 4 bytes.
    fn entry(&mut self, e: Entry<'_>) {
        self.next_inode += 1;
        let fields = [
            self.next_inode,
            e.mode,
            0, // uid
            0, // gid
            e.nlink,
            0, // mtime
            e.data.len() as u32,
            0, // devmajor
            0, // devminor
            e.rdev.0,
            e.rdev.1,
            e.name.len() as u32 + 1,
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(e.name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(e.data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn entries_are_newc_headers_padded_to_four_bytes() {
        let mut a = Archive::default();
        a.file("/init", 0o755, b"#!/bin/sh\n");
        a.finish();
        let b = a.bytes();
        assert_eq!(&b[..6], b"070701");
        assert_eq!(&b[14..22], b"000081ed", "regular file 0755");
        assert_eq!(&b[54..62], b"0000000a", "file size");
        assert_eq!(&b[94..102], b"00000005", "name size with NUL");
        assert_eq!(&b[110..115], b"init\0");
        assert_eq!(b.len() % 4, 0);
    }

    #[test]
    fn the_cpio_tool_lists_what_was_written() {
        if Command::new("cpio").arg("--version").output().is_err() {
            return; // the tool is optional: the kernel is the real reader
        }
        let mut a = Archive::default();
        a.file_with_parents("/usr/lib/x/libz.so", 0o755, b"abc");
        a.char_device("/dev/console", 0o600, 5, 1);
        a.finish();
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(a.bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        for name in ["usr/lib/x/libz.so", "usr/lib", "dev/console"] {
            assert!(listing.contains(name), "{listing}");
        }
        assert!(listing.contains("5,"), "device numbers: {listing}");
    }
}
