//! The multiboot2 boot information parser (Multiboot2 Specification 1.0,
//! 3.6) on arbitrary blocks, as GRUB hands them to the hypervisor.
//!
//! It may not panic. A block it accepts must be no longer than the bytes
//! given and than `MAX_TOTAL_SIZE`, and its accessors must agree with a
//! block rebuilt from what they return (round trip): the command line, the
//! boot loader's name, every module (start, end, name; end not before
//! start), the memory map and the RSDP copy.
//!
//! Input: one flags byte, then the block. Flags bit 0: set the block's
//! `total_size` to the input's length, so that the fuzzer gets past it;
//! bit 1: pass a wrong magic (must be refused).
#![no_main]

use atoll_platform::multiboot2::builder::Builder;
use atoll_platform::multiboot2::{
    BOOTLOADER_MAGIC, BootInfo, Error, MAX_TOTAL_SIZE, MemoryKind, MemoryRegion, Module, RsdpCopy,
};
use libfuzzer_sys::fuzz_target;

/// Everything the accessors say about a block.
#[derive(Debug, PartialEq)]
struct Facts<'a> {
    cmdline: &'a str,
    bootloader_name: Option<&'a str>,
    modules: Vec<Module<'a>>,
    memory_map: Vec<MemoryRegion>,
    rsdp: Option<RsdpCopy<'a>>,
}

impl<'a> Facts<'a> {
    fn of(info: &BootInfo<'a>) -> Self {
        Facts {
            cmdline: info.cmdline(),
            bootloader_name: info.bootloader_name(),
            modules: info.modules().collect(),
            memory_map: info.memory_map().collect(),
            rsdp: info.rsdp(),
        }
    }

    /// A block with the same facts, written as GRUB would.
    fn rebuild(&self) -> Vec<u8> {
        let mut b = Builder::default().cmdline(self.cmdline);
        if let Some(name) = self.bootloader_name {
            b = b.string(2, name);
        }
        for m in &self.modules {
            b = b.module(m.start.0 as u32, m.end.0 as u32, m.name);
        }
        if !self.memory_map.is_empty() {
            let entries: Vec<(u64, u64, u32)> = self
                .memory_map
                .iter()
                .map(|r| (r.base.0, r.len, kind_code(r.kind)))
                .collect();
            b = b.memory_map(&entries);
        }
        match self.rsdp {
            Some(RsdpCopy::V2(bytes)) => b = b.rsdp(15, bytes),
            Some(RsdpCopy::V1(bytes)) => b = b.rsdp(14, bytes),
            None => {}
        }
        b.build()
    }
}

fn kind_code(kind: MemoryKind) -> u32 {
    match kind {
        MemoryKind::Available => 1,
        MemoryKind::AcpiReclaimable => 3,
        MemoryKind::AcpiNvs => 4,
        MemoryKind::Bad => 5,
        MemoryKind::Reserved(code) => code,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, block)) = data.split_first() else {
        return;
    };
    let mut block = block.to_vec();
    if flags & 1 != 0 && block.len() >= 4 {
        let len = block.len() as u32;
        block[..4].copy_from_slice(&len.to_le_bytes());
    }
    if flags & 2 != 0 {
        let magic = BOOTLOADER_MAGIC ^ 1;
        assert_eq!(
            BootInfo::parse(magic, &block).err(),
            Some(Error::BadMagic(magic))
        );
        return;
    }
    let info = match BootInfo::parse(BOOTLOADER_MAGIC, &block) {
        Ok(info) => info,
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    assert!(info.total_size() <= block.len() && info.total_size() <= MAX_TOTAL_SIZE as usize);
    let facts = Facts::of(&info);
    for m in &facts.modules {
        assert!(m.start <= m.end && m.len() == m.end.0 - m.start.0, "{m:?}");
        assert_eq!(info.module(m.name).map(|first| first.name), Some(m.name));
    }
    let rebuilt = facts.rebuild();
    let again = BootInfo::parse(BOOTLOADER_MAGIC, &rebuilt).expect("a rebuilt block parses");
    assert_eq!(Facts::of(&again), facts);
});
