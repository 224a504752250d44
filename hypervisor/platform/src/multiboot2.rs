//! The multiboot2 boot information block (Multiboot2 Specification 1.0,
//! section 3.6), parsed from a byte slice.
//!
//! ```text
//!  +0  total_size u32   size of the whole block, this header included
//!  +4  reserved   u32
//!  +8  tag        type u32, size u32 (header included), payload ...
//!      ...        each tag starts 8-byte aligned
//!      end tag    type 0, size 8
//! ```
//!
//! The block is input from outside Atoll, so every size is checked against
//! the slice and against the block's own `total_size`; a malformed block is an
//! [`Error`], never a panic or an out-of-bounds read.

use crate::HostPhysAddr;
use crate::bytes::{c_str, slice_at, u32_at, u64_at};

/// The value GRUB leaves in EAX when it hands over to a multiboot2 kernel.
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;

/// Upper bound on the block size Atoll accepts; GRUB's blocks are a few KiB.
pub const MAX_TOTAL_SIZE: u32 = 1 << 20;

mod tag {
    pub const END: u32 = 0;
    pub const CMDLINE: u32 = 1;
    pub const BOOTLOADER_NAME: u32 = 2;
    pub const MODULE: u32 = 3;
    pub const MEMORY_MAP: u32 = 6;
    pub const ACPI_OLD_RSDP: u32 = 14;
    pub const ACPI_NEW_RSDP: u32 = 15;
}

/// Why a block was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// EAX did not hold [`BOOTLOADER_MAGIC`]: not booted by a multiboot2 loader.
    BadMagic(u32),
    /// `total_size` is below the 16-byte minimum, above [`MAX_TOTAL_SIZE`] or
    /// beyond the bytes available.
    BadTotalSize(u32),
    /// A tag at this offset has a size below 8 or runs past the block.
    BadTag {
        /// Byte offset of the tag in the information block.
        offset: usize,
    },
    /// The tags end without an end tag.
    MissingEndTag,
    /// A string tag or module name is not NUL-terminated UTF-8.
    BadString {
        /// The tag's type (Multiboot2 3.6).
        tag_type: u32,
    },
    /// The memory map tag's entry size is below 24 bytes.
    BadMemoryMap,
    /// A module's end lies before its start.
    BadModule {
        /// Byte offset of the module tag in the information block.
        offset: usize,
    },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::BadMagic(m) => write!(
                f,
                "boot loader magic {m:#x} is not {BOOTLOADER_MAGIC:#x}: boot Atoll with GRUB's multiboot2 command"
            ),
            Error::BadTotalSize(s) => write!(f, "boot information size {s} is out of range"),
            Error::BadTag { offset } => {
                write!(f, "boot information tag at offset {offset} is malformed")
            }
            Error::MissingEndTag => write!(f, "boot information has no end tag"),
            Error::BadString { tag_type } => {
                write!(
                    f,
                    "boot information tag {tag_type} holds a string that is not NUL-terminated UTF-8"
                )
            }
            Error::BadMemoryMap => {
                write!(f, "boot information memory map has entries under 24 bytes")
            }
            Error::BadModule { offset } => {
                write!(f, "boot module at offset {offset} ends before it starts")
            }
        }
    }
}

/// One tag: its type and its payload (the bytes after the 8-byte tag header).
#[derive(Clone, Copy, Debug)]
struct Tag<'a> {
    tag_type: u32,
    offset: usize,
    payload: &'a [u8],
}

/// A checked boot information block.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo<'a> {
    block: &'a [u8],
}

/// A memory map entry (Multiboot2 3.6.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub base: HostPhysAddr,
    /// Length in bytes.
    pub len: u64,
    /// Available RAM, ACPI-reclaimable, reserved, and so on.
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// One past the region's last byte, saturating at the top of the address
    /// space.
    pub fn end(&self) -> u64 {
        self.base.0.saturating_add(self.len)
    }
}

/// The type of a memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Type 1: RAM free for the kernel.
    Available,
    /// Type 3: ACPI tables, reclaimable once read.
    AcpiReclaimable,
    /// Type 4: must be preserved across hibernation.
    AcpiNvs,
    /// Type 5: defective RAM.
    Bad,
    /// Type 2 or any other value: reserved.
    Reserved(u32),
}

impl From<u32> for MemoryKind {
    fn from(value: u32) -> Self {
        match value {
            1 => MemoryKind::Available,
            3 => MemoryKind::AcpiReclaimable,
            4 => MemoryKind::AcpiNvs,
            5 => MemoryKind::Bad,
            other => MemoryKind::Reserved(other),
        }
    }
}

/// A boot module (Multiboot2 3.6.6): a file GRUB loaded for the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module<'a> {
    /// The module's first byte.
    pub start: HostPhysAddr,
    /// One past the module's last byte.
    pub end: HostPhysAddr,
    /// The module's command line; Atoll uses it as the module's name.
    pub name: &'a str,
}

impl Module<'_> {
    /// The module's size in bytes.
    pub fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }

    /// True for a zero-byte module.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which ACPI RSDP copy the boot loader supplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsdpCopy<'a> {
    /// Tag 15: the ACPI 2.0+ RSDP (with the XSDT address).
    V2(&'a [u8]),
    /// Tag 14: the ACPI 1.0 RSDP (RSDT only).
    V1(&'a [u8]),
}

impl<'a> BootInfo<'a> {
    /// Checks the block at the start of `bytes` (the arch layer hands over
    /// at most [`MAX_TOTAL_SIZE`] bytes from the address GRUB gave in EBX)
    /// and every tag in it.
    pub fn parse(magic: u32, bytes: &'a [u8]) -> Result<Self, Error> {
        if magic != BOOTLOADER_MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let total = u32_at(bytes, 0).ok_or(Error::BadTotalSize(0))?;
        if !(16..=MAX_TOTAL_SIZE).contains(&total) {
            return Err(Error::BadTotalSize(total));
        }
        let block = bytes
            .get(..total as usize)
            .ok_or(Error::BadTotalSize(total))?;
        let info = Self { block };
        info.validate()?;
        Ok(info)
    }

    /// Walks the tags once, checking sizes, strings and the end tag, so the
    /// accessors below can rely on a well-formed block.
    fn validate(&self) -> Result<(), Error> {
        let mut offset = 8;
        loop {
            let tag = self.tag_at(offset)?;
            match tag.tag_type {
                tag::END => return Ok(()),
                tag::CMDLINE | tag::BOOTLOADER_NAME => {
                    c_str(tag.payload).ok_or(Error::BadString {
                        tag_type: tag.tag_type,
                    })?;
                }
                tag::MODULE => {
                    module_from(tag)?;
                }
                tag::MEMORY_MAP if u32_at(tag.payload, 0).is_none_or(|size| size < 24) => {
                    return Err(Error::BadMemoryMap);
                }
                _ => {}
            }
            offset = next_tag_offset(offset, tag.payload.len()).ok_or(Error::MissingEndTag)?;
        }
    }

    /// The tag whose header starts at `offset`.
    fn tag_at(&self, offset: usize) -> Result<Tag<'a>, Error> {
        let header = (u32_at(self.block, offset), u32_at(self.block, offset + 4));
        let (Some(tag_type), Some(size)) = header else {
            return Err(Error::MissingEndTag);
        };
        let payload_len = (size as usize)
            .checked_sub(8)
            .ok_or(Error::BadTag { offset })?;
        let payload =
            slice_at(self.block, offset + 8, payload_len).ok_or(Error::BadTag { offset })?;
        Ok(Tag {
            tag_type,
            offset,
            payload,
        })
    }

    /// All tags before the end tag. The block was validated, so the walk
    /// simply stops at the first problem.
    fn tags(&self) -> impl Iterator<Item = Tag<'a>> + 'a {
        let info = *self;
        let mut offset = Some(8);
        core::iter::from_fn(move || {
            let tag = info
                .tag_at(offset?)
                .ok()
                .filter(|t| t.tag_type != tag::END)?;
            offset = next_tag_offset(tag.offset, tag.payload.len());
            Some(tag)
        })
    }

    /// The kernel command line; empty when the loader gave none.
    pub fn cmdline(&self) -> &'a str {
        self.string_tag(tag::CMDLINE).unwrap_or("")
    }

    /// The boot loader's name, e.g. "GRUB 2.06".
    pub fn bootloader_name(&self) -> Option<&'a str> {
        self.string_tag(tag::BOOTLOADER_NAME)
    }

    fn string_tag(&self, tag_type: u32) -> Option<&'a str> {
        self.tags()
            .find(|t| t.tag_type == tag_type)
            .and_then(|t| c_str(t.payload))
    }

    /// The boot modules, in the order the loader lists them.
    pub fn modules(&self) -> impl Iterator<Item = Module<'a>> + 'a {
        self.tags()
            .filter(|t| t.tag_type == tag::MODULE)
            .filter_map(|t| module_from(t).ok())
    }

    /// The first module with this name.
    pub fn module(&self, name: &str) -> Option<Module<'a>> {
        self.modules().find(|m| m.name == name)
    }

    /// The memory map's entries; empty when there is no memory map tag.
    pub fn memory_map(&self) -> impl Iterator<Item = MemoryRegion> + 'a {
        let tag = self.tags().find(|t| t.tag_type == tag::MEMORY_MAP);
        let payload = tag.map_or(&[][..], |t| t.payload);
        let entry_size = u32_at(payload, 0).unwrap_or(24).max(24) as usize;
        let entries = payload.get(8..).unwrap_or(&[]);
        entries.chunks_exact(entry_size).filter_map(|e| {
            Some(MemoryRegion {
                base: HostPhysAddr(u64_at(e, 0)?),
                len: u64_at(e, 8)?,
                kind: MemoryKind::from(u32_at(e, 16)?),
            })
        })
    }

    /// The ACPI RSDP copy, preferring the ACPI 2.0+ one.
    pub fn rsdp(&self) -> Option<RsdpCopy<'a>> {
        let find = |tag_type| {
            self.tags()
                .find(|t| t.tag_type == tag_type)
                .map(|t| t.payload)
        };
        find(tag::ACPI_NEW_RSDP)
            .map(RsdpCopy::V2)
            .or_else(|| find(tag::ACPI_OLD_RSDP).map(RsdpCopy::V1))
    }

    /// The block's size in bytes.
    pub fn total_size(&self) -> usize {
        self.block.len()
    }
}

/// Tags start 8-byte aligned (Multiboot2 3.6.1).
fn next_tag_offset(offset: usize, payload_len: usize) -> Option<usize> {
    offset
        .checked_add(8)?
        .checked_add(payload_len)?
        .checked_next_multiple_of(8)
}

fn module_from(tag: Tag<'_>) -> Result<Module<'_>, Error> {
    let bad = Error::BadModule { offset: tag.offset };
    let start = u32_at(tag.payload, 0).ok_or(bad)?;
    let end = u32_at(tag.payload, 4).ok_or(bad)?;
    if end < start {
        return Err(bad);
    }
    let name = tag
        .payload
        .get(8..)
        .and_then(c_str)
        .ok_or(Error::BadString {
            tag_type: tag::MODULE,
        })?;
    Ok(Module {
        start: HostPhysAddr(start.into()),
        end: HostPhysAddr(end.into()),
        name,
    })
}

/// Builds boot information blocks for tests, here and in other crates
/// (feature `builder`).
#[cfg(any(test, feature = "builder"))]
pub mod builder {
    extern crate alloc;
    use alloc::vec::Vec;

    /// Collects tags and produces the block bytes.
    #[derive(Default)]
    pub struct Builder {
        tags: Vec<u8>,
    }

    impl Builder {
        /// Adds a raw tag (type and payload); pads to 8 bytes.
        pub fn tag(mut self, tag_type: u32, payload: &[u8]) -> Self {
            let size = 8 + payload.len() as u32;
            self.tags.extend_from_slice(&tag_type.to_le_bytes());
            self.tags.extend_from_slice(&size.to_le_bytes());
            self.tags.extend_from_slice(payload);
            while !self.tags.len().is_multiple_of(8) {
                self.tags.push(0);
            }
            self
        }

        /// Adds a NUL-terminated string tag.
        pub fn string(self, tag_type: u32, s: &str) -> Self {
            let mut p = s.as_bytes().to_vec();
            p.push(0);
            self.tag(tag_type, &p)
        }

        /// Adds a command line tag.
        pub fn cmdline(self, s: &str) -> Self {
            self.string(super::tag::CMDLINE, s)
        }

        /// Adds a module tag.
        pub fn module(self, start: u32, end: u32, name: &str) -> Self {
            let mut p = Vec::new();
            p.extend_from_slice(&start.to_le_bytes());
            p.extend_from_slice(&end.to_le_bytes());
            p.extend_from_slice(name.as_bytes());
            p.push(0);
            self.tag(super::tag::MODULE, &p)
        }

        /// Adds a memory map tag with 24-byte entries `(base, len, type)`.
        pub fn memory_map(self, entries: &[(u64, u64, u32)]) -> Self {
            let mut p = Vec::new();
            p.extend_from_slice(&24u32.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            for &(base, len, kind) in entries {
                p.extend_from_slice(&base.to_le_bytes());
                p.extend_from_slice(&len.to_le_bytes());
                p.extend_from_slice(&kind.to_le_bytes());
                p.extend_from_slice(&0u32.to_le_bytes());
            }
            self.tag(super::tag::MEMORY_MAP, &p)
        }

        /// Adds an RSDP tag: 14 for ACPI 1.0, 15 for 2.0+.
        pub fn rsdp(self, tag_type: u32, rsdp: &[u8]) -> Self {
            self.tag(tag_type, rsdp)
        }

        /// The finished block: header, tags, end tag.
        pub fn build(self) -> Vec<u8> {
            let mut out = Vec::new();
            let total = 8 + self.tags.len() as u32 + 8;
            out.extend_from_slice(&total.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&self.tags);
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&8u32.to_le_bytes());
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::builder::Builder;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn sample() -> Vec<u8> {
        Builder::default()
            .cmdline("selftest=panic")
            .string(tag::BOOTLOADER_NAME, "GRUB 2.06")
            .memory_map(&[
                (0, 0x9fc00, 1),
                (0x100000, 0x1ff00000, 1),
                (0xfffc0000, 0x40000, 2),
            ])
            .module(0x300000, 0x300400, "cluster.toml")
            .module(0x301000, 0x301000, "empty")
            .rsdp(tag::ACPI_OLD_RSDP, &[1; 20])
            .build()
    }

    #[test]
    fn parses_what_grub_gives() {
        let bytes = sample();
        let info = BootInfo::parse(BOOTLOADER_MAGIC, &bytes).unwrap();
        assert_eq!(info.cmdline(), "selftest=panic");
        assert_eq!(info.bootloader_name(), Some("GRUB 2.06"));
        let mem: Vec<_> = info.memory_map().collect();
        assert_eq!(mem.len(), 3);
        assert_eq!(mem[1].base, HostPhysAddr(0x100000));
        assert_eq!(mem[2].kind, MemoryKind::Reserved(2));
        let m = info.module("cluster.toml").unwrap();
        assert_eq!(m.len(), 0x400);
        assert!(info.module("empty").unwrap().is_empty());
        assert_eq!(info.module("missing"), None);
        assert_eq!(info.rsdp(), Some(RsdpCopy::V1(&[1; 20])));
    }

    #[test]
    fn prefers_the_acpi2_rsdp() {
        let bytes = Builder::default()
            .rsdp(tag::ACPI_OLD_RSDP, &[1; 20])
            .rsdp(tag::ACPI_NEW_RSDP, &[2; 36])
            .build();
        let info = BootInfo::parse(BOOTLOADER_MAGIC, &bytes).unwrap();
        assert_eq!(info.rsdp(), Some(RsdpCopy::V2(&[2; 36])));
    }

    #[test]
    fn refuses_malformed_blocks() {
        let good = sample();
        assert_eq!(
            BootInfo::parse(0x2bad_b002, &good).unwrap_err(),
            Error::BadMagic(0x2bad_b002)
        );
        // total_size larger than what is there
        let mut big = good.clone();
        big[0..4].copy_from_slice(&(good.len() as u32 + 8).to_le_bytes());
        assert!(matches!(
            BootInfo::parse(BOOTLOADER_MAGIC, &big),
            Err(Error::BadTotalSize(_))
        ));
        // a tag size below the 8-byte header
        let mut tiny = good.clone();
        tiny[12..16].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(
            BootInfo::parse(BOOTLOADER_MAGIC, &tiny).unwrap_err(),
            Error::BadTag { offset: 8 }
        );
        // no end tag: cut the block before it
        let mut cut = good[..good.len() - 8].to_vec();
        let n = cut.len() as u32;
        cut[0..4].copy_from_slice(&n.to_le_bytes());
        assert_eq!(
            BootInfo::parse(BOOTLOADER_MAGIC, &cut).unwrap_err(),
            Error::MissingEndTag
        );
        // a command line without its NUL
        let no_nul = Builder::default().tag(tag::CMDLINE, b"abcdefgh").build();
        assert_eq!(
            BootInfo::parse(BOOTLOADER_MAGIC, &no_nul).unwrap_err(),
            Error::BadString {
                tag_type: tag::CMDLINE
            }
        );
        let backwards = Builder::default().module(0x2000, 0x1000, "m").build();
        assert_eq!(
            BootInfo::parse(BOOTLOADER_MAGIC, &backwards).unwrap_err(),
            Error::BadModule { offset: 8 }
        );
    }

    proptest! {
        /// Random damage to a valid block never panics and never yields a
        /// module or memory region outside what the bytes say.
        #[test]
        fn random_blocks_never_panic(flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..12),
                                     cut in 0usize..220) {
            let mut bytes = sample();
            for (pos, val) in flips {
                if let Some(b) = bytes.get_mut(pos) { *b = val; }
            }
            bytes.truncate(cut.max(1));
            if let Ok(info) = BootInfo::parse(BOOTLOADER_MAGIC, &bytes) {
                let _ = info.cmdline();
                for m in info.modules() { prop_assert!(m.start <= m.end); }
                prop_assert!(info.memory_map().count() <= bytes.len() / 24);
                let _ = info.rsdp();
            }
        }
    }
}
