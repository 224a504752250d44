//! The committed seed inputs of the fuzz targets whose input is a binary
//! format the fuzzer would take long to find by itself: a bzImage setup
//! header, a multiboot ELF kernel, ACPI tables, a multiboot2 information
//! block. Each is built here from its specification, so it can be read
//! and regenerated (`cargo xtask fuzz --write-seeds`); a test checks the
//! committed files match.
//!
//! Each seed starts with the harness's own header (flags and lengths),
//! documented at the top of its target's source.

use anyhow::{Context, Result};
use atoll_tests::build::workspace_root;
use std::path::PathBuf;

/// A seed: the fuzz crate directory (relative to the workspace), the
/// target, the file name and the bytes.
pub struct Seed {
    pub krate: &'static str,
    pub target: &'static str,
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

impl Seed {
    pub fn path(&self) -> PathBuf {
        workspace_root()
            .join(self.krate)
            .join("seeds")
            .join(self.target)
            .join(self.name)
    }
}

/// Every seed, built.
pub fn all() -> Vec<Seed> {
    let seed = |krate, target, name, bytes| Seed {
        krate,
        target,
        name,
        bytes,
    };
    vec![
        seed(
            "vmm/fuzz",
            "bzimage",
            "linux-6.1-header",
            bzimage_seed(false),
        ),
        seed("vmm/fuzz", "bzimage", "relocatable", bzimage_seed(true)),
        seed(
            "vmm/fuzz",
            "loader",
            "multiboot-elf64",
            multiboot_seed(false),
        ),
        seed(
            "vmm/fuzz",
            "loader",
            "multiboot2-elf32",
            multiboot_seed(true),
        ),
        seed("hypervisor/fuzz", "acpi", "xsdt-numa", acpi_seed(true)),
        seed("hypervisor/fuzz", "acpi", "rsdt", acpi_seed(false)),
        seed("hypervisor/fuzz", "multiboot2", "grub", multiboot2_seed()),
    ]
}

/// Writes every seed file.
pub fn write() -> Result<()> {
    for seed in all() {
        let path = seed.path();
        let dir = path.parent().context("a seed path has a directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&path, &seed.bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {} ({} bytes)", path.display(), seed.bytes.len());
    }
    Ok(())
}

fn put(buf: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if buf.len() < at + bytes.len() {
        buf.resize(at + bytes.len(), 0);
    }
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// A bzImage whose setup header (Documentation/x86/boot.rst, "The
/// Real-Mode Kernel Header") has the field values of the Linux 6.1 guest
/// kernel Atoll boots (boot protocol 2.15, loaded at 16 MiB, 16 MiB
/// init_size), with 3 setup sectors and a 1 KiB protected-mode payload
/// instead of the real code. `relocatable`: a relocatable kernel with a
/// small init_size, which loads in small RAM too.
fn bzimage_seed(relocatable: bool) -> Vec<u8> {
    const SETUP_SECTS: u8 = 3;
    const PAYLOAD: usize = 1024;
    let mut image = vec![0u8; (usize::from(SETUP_SECTS) + 1) * 512];
    let fields: [(usize, &[u8]); 14] = [
        (0x1f1, &[SETUP_SECTS]),
        (0x1f4, &le32(PAYLOAD as u32 / 16)), // syssize, 16-byte units
        (0x1fe, &0xaa55u16.to_le_bytes()),   // boot_flag
        (0x200, &[0xeb, 0x6a]),              // jump past the header to 0x26c
        (0x202, b"HdrS"),
        (0x206, &0x020fu16.to_le_bytes()),     // version 2.15
        (0x211, &[0x01]),                      // loadflags: LOADED_HIGH
        (0x22c, &le32(0x7fff_ffff)),           // initrd_addr_max
        (0x230, &le32(0x20_0000)),             // kernel_alignment
        (0x234, &[u8::from(relocatable), 21]), // relocatable, min_alignment
        (0x236, &0x61u16.to_le_bytes()),       // xloadflags: KERNEL_64 ...
        (0x238, &le32(2047)),                  // cmdline_size
        (0x258, &0x100_0000u64.to_le_bytes()), // pref_address
        (
            0x260,
            &le32(if relocatable { 0x40_0000 } else { 0xfe_b000 }),
        ), // init_size
    ];
    for (at, bytes) in fields {
        put(&mut image, at, bytes);
    }
    image.extend((0..PAYLOAD).map(|i| i as u8));
    // Harness header: RAM 48 MiB (index 3) or 32 MiB (index 2); a
    // 128-byte initrd; the command line.
    let cmdline = b"console=ttyS0 quiet";
    let mut input = vec![if relocatable { 2 } else { 3 }, 2, cmdline.len() as u8];
    input.extend((0..128).map(|i| 0x80 | i as u8));
    input.extend_from_slice(cmdline);
    input.extend_from_slice(&image);
    input
}

/// A minimal multiboot kernel: an ELF64 (or, with `v2`, ELF32) file with
/// one PT_LOAD segment at 1 MiB (System V gABI) whose first bytes are a
/// Multiboot header (flags: page-align modules, memory info) or a
/// Multiboot2 header (information request for the command line, modules
/// and memory map; an entry address tag; an optional framebuffer tag).
fn multiboot_seed(v2: bool) -> Vec<u8> {
    const MIB: u32 = 1 << 20;
    const SEGMENT: usize = 0x80;
    let mut header = Vec::new();
    if v2 {
        let mut tags = Vec::new();
        let mut tag = |kind: u16, flags: u16, body: &[u8]| {
            tags.extend_from_slice(&kind.to_le_bytes());
            tags.extend_from_slice(&flags.to_le_bytes());
            tags.extend_from_slice(&le32(8 + body.len() as u32));
            tags.extend_from_slice(body);
            tags.resize(tags.len().next_multiple_of(8), 0);
        };
        tag(1, 0, &[1, 0, 0, 0, 3, 0, 0, 0, 6, 0, 0, 0]);
        tag(3, 0, &le32(MIB + 0x40));
        tag(5, 1, &[0; 12]);
        tag(0, 0, &[]);
        let (magic, length) = (0xe852_50d6u32, 16 + tags.len() as u32);
        for w in [
            magic,
            0,
            length,
            0u32.wrapping_sub(magic).wrapping_sub(length),
        ] {
            header.extend_from_slice(&le32(w));
        }
        header.extend_from_slice(&tags);
    } else {
        let (magic, flags) = (0x1bad_b002u32, 3u32);
        for w in [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags)] {
            header.extend_from_slice(&le32(w));
        }
    }
    let mut segment = header;
    segment.extend_from_slice(&[0xf4; 64]); // hlt
    let (filesz, memsz) = (segment.len() as u64, segment.len() as u64 + 0x1000);
    let mut elf = Vec::new();
    put(&mut elf, 0, b"\x7fELF");
    put(&mut elf, 5, &[1, 1]); // little-endian, version 1
    put(&mut elf, 16, &2u16.to_le_bytes()); // ET_EXEC
    if v2 {
        put(&mut elf, 4, &[1]);
        put(&mut elf, 18, &3u16.to_le_bytes()); // EM_386
        put(&mut elf, 24, &le32(MIB)); // entry
        put(&mut elf, 28, &le32(52)); // phoff
        put(&mut elf, 42, &32u16.to_le_bytes()); // phentsize
        put(&mut elf, 44, &1u16.to_le_bytes()); // phnum
        let ph = 52;
        for (i, w) in [1, SEGMENT as u32, MIB, MIB, filesz as u32, memsz as u32]
            .iter()
            .enumerate()
        {
            put(&mut elf, ph + 4 * i, &le32(*w));
        }
    } else {
        put(&mut elf, 4, &[2]);
        put(&mut elf, 18, &62u16.to_le_bytes()); // EM_X86_64
        put(&mut elf, 24, &u64::from(MIB).to_le_bytes());
        put(&mut elf, 32, &64u64.to_le_bytes()); // phoff
        put(&mut elf, 54, &56u16.to_le_bytes()); // phentsize
        put(&mut elf, 56, &1u16.to_le_bytes()); // phnum
        let ph = 64;
        put(&mut elf, ph, &le32(1)); // PT_LOAD
        let words = [SEGMENT as u64, MIB.into(), MIB.into(), filesz, memsz];
        for (i, w) in words.iter().enumerate() {
            put(&mut elf, ph + 8 + 8 * i, &w.to_le_bytes());
        }
    }
    put(&mut elf, SEGMENT, &segment);
    // Harness header: RAM 16 MiB (index 3), one or two modules of 64 and
    // 128 bytes, the command line.
    let cmdline = b"hello world";
    let mut input = if v2 {
        vec![3 | 2 << 3, 1, 2, cmdline.len() as u8]
    } else {
        vec![3 | 1 << 3, 1, cmdline.len() as u8]
    };
    input.extend_from_slice(cmdline);
    let modules = if v2 { 3 * 64 } else { 64 };
    input.extend((0..modules).map(|i| i as u8));
    input.extend_from_slice(&elf);
    input
}

/// An ACPI table: the 36-byte header (ACPI 6.5, 5.2.6) around `body`;
/// the harness fixes length and checksum.
fn acpi_table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = signature.to_vec();
    t.extend_from_slice(&le32(36 + body.len() as u32));
    t.extend_from_slice(&[revision, 0]);
    t.extend_from_slice(b"ATOLL SEEDTABLE\0");
    t.resize(36, 0);
    t.extend_from_slice(body);
    t
}

/// A two-CPU machine's tables as firmware lays them out: MADT (two local
/// APICs, an x2APIC, an I/O APIC), FADT and a DSDT with `\_S5`; with
/// `numa`, an ACPI 2.0 RSDP (XSDT) and an SRAT (two domains) and SLIT.
fn acpi_seed(numa: bool) -> Vec<u8> {
    let mut madt = le32(0xfee0_0000).to_vec();
    madt.extend_from_slice(&le32(1));
    madt.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]); // CPU 0
    madt.extend_from_slice(&[0, 8, 1, 1, 1, 0, 0, 0]); // CPU 1
    madt.extend_from_slice(&[1, 12, 2, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]); // I/O APIC
    madt.extend_from_slice(&[9, 16, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]); // x2APIC 256
    let mut fadt = vec![0u8; 244 - 36];
    fadt[48 - 36..52 - 36].copy_from_slice(&le32(0xb2)); // SMI_CMD
    fadt[52 - 36] = 0xf1; // ACPI_ENABLE
    fadt[64 - 36..68 - 36].copy_from_slice(&le32(0xb004)); // PM1a_CNT_BLK
    let mut aml = vec![0x10, 0x05, b'\\', b'_', b'S', b'B', b'_'];
    aml.extend_from_slice(&[0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04]);
    aml.extend_from_slice(&[0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00]);
    let mut tables = vec![
        acpi_table(b"APIC", 4, &madt),
        acpi_table(b"FACP", 6, &fadt),
        acpi_table(b"DSDT", 2, &aml),
    ];
    if numa {
        let mut srat = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for (apic, domain) in [(0u8, 0u8), (1, 1)] {
            srat.extend_from_slice(&[0, 16, domain, apic, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        for (base, len, domain) in [(0u64, 0x800_0000u64, 0u32), (0x800_0000, 0x800_0000, 1)] {
            srat.extend_from_slice(&[1, 40]);
            srat.extend_from_slice(&le32(domain));
            srat.extend_from_slice(&[0, 0]);
            srat.extend_from_slice(&base.to_le_bytes());
            srat.extend_from_slice(&len.to_le_bytes());
            srat.extend_from_slice(&[0; 4]);
            srat.extend_from_slice(&le32(1));
            srat.extend_from_slice(&[0; 8]);
        }
        tables.push(acpi_table(b"SRAT", 3, &srat));
        let mut slit = 2u64.to_le_bytes().to_vec();
        slit.extend_from_slice(&[10, 20, 20, 10]);
        tables.push(acpi_table(b"SLIT", 1, &slit));
    }
    // Harness header: XSDT or RSDT, fix lengths and checksums, link.
    let mut input = vec![u8::from(numa) | 2 | 4];
    for t in tables {
        input.extend_from_slice(&(t.len() as u16).to_le_bytes());
        input.extend_from_slice(&t);
    }
    input
}

/// A boot information block as GRUB passes it (Multiboot2 1.0, 3.6):
/// command line, boot loader name, two modules, a memory map and an ACPI
/// 2.0 RSDP copy.
fn multiboot2_seed() -> Vec<u8> {
    let mut tags = Vec::new();
    let mut tag = |kind: u32, body: &[u8]| {
        tags.extend_from_slice(&le32(kind));
        tags.extend_from_slice(&le32(8 + body.len() as u32));
        tags.extend_from_slice(body);
        tags.resize(tags.len().next_multiple_of(8), 0);
    };
    tag(1, b"console=com1 selftest\0");
    tag(2, b"GRUB 2.06\0");
    for (start, end, name) in [
        (0x60_0000u32, 0x60_1000u32, "cluster.toml"),
        (0x60_1000, 0x70_0000, "guest"),
    ] {
        let mut body = le32(start).to_vec();
        body.extend_from_slice(&le32(end));
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        tag(3, &body);
    }
    let mut mmap = le32(24).to_vec();
    mmap.extend_from_slice(&le32(0));
    for (base, len, kind) in [
        (0u64, 0x9fc00u64, 1u32),
        (0x9fc00, 0x60400, 2),
        (0x10_0000, 0x1ff0_0000, 1),
    ] {
        mmap.extend_from_slice(&base.to_le_bytes());
        mmap.extend_from_slice(&len.to_le_bytes());
        mmap.extend_from_slice(&le32(kind));
        mmap.extend_from_slice(&le32(0));
    }
    tag(6, &mmap);
    let mut rsdp = b"RSD PTR \0ATOLL \x02".to_vec();
    rsdp.extend_from_slice(&le32(0));
    rsdp.extend_from_slice(&le32(36));
    rsdp.extend_from_slice(&0xe0040u64.to_le_bytes());
    rsdp.extend_from_slice(&[0; 4]);
    tag(15, &rsdp);
    tag(0, &[]);
    let mut block = le32(8 + tags.len() as u32).to_vec();
    block.extend_from_slice(&le32(0));
    block.extend_from_slice(&tags);
    // Harness header: flags 0 (the block's own total_size is right).
    let mut input = vec![0];
    input.extend_from_slice(&block);
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed files are what this module builds: regenerate them
    /// with `cargo xtask fuzz --write-seeds` after changing it.
    #[test]
    fn committed_seeds_are_up_to_date() {
        for seed in all() {
            let path = seed.path();
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run cargo xtask fuzz --write-seeds",
                    path.display()
                )
            });
            assert!(
                committed == seed.bytes,
                "{} is stale; run cargo xtask fuzz --write-seeds",
                path.display()
            );
        }
    }
}
