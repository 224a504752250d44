//! The multiboot loader (`loader::load`, Multiboot 0.6.96 and Multiboot2)
//! on arbitrary kernel files, modules and command lines, into guest RAM of
//! several sizes (1 MiB to 8 GiB) that records writes instead of holding
//! bytes.
//!
//! The loader may not panic, and every write it makes must have passed
//! its own placement check (a write failing after it is a placement bug).
//! A loaded kernel has:
//! - nothing written over anything else;
//! - EAX the boot loader magic of its protocol, EBX the information block,
//!   written whole below 4 GiB;
//! - for Multiboot2, an information block the hypervisor's own multiboot2
//!   parser accepts, with the command line and the modules (each where it
//!   was written, with its bytes' length and its name) as given;
//! - for Multiboot, the same facts in the v1 block (cmdline, mods_count,
//!   mods_addr), and the entry point inside a loaded segment.
//!
//! Input: one flags byte (bits 0-2 the RAM size, bits 3-4 the number of
//! modules), one byte per module giving its length in 64-byte units, one
//! giving the command line's length, then the command line, the modules
//! and the kernel file, each cut short if the input ends.
#![no_main]

use atoll_platform::multiboot2::BootInfo;
use atoll_vmm::loader::{self, EntryState, LoadError, Module};
use atoll_vmm_fuzz::Recorder;
use libfuzzer_sys::fuzz_target;

const MIB: u64 = 1 << 20;
const RAM_MIB: [u64; 8] = [1, 2, 4, 16, 64, 1024, 4096, 8192];
const NAMES: [&str; 3] = ["initrd", "config a=b", ""];

fn take(bytes: &[u8], len: usize) -> (&[u8], &[u8]) {
    bytes.split_at(len.min(bytes.len()))
}

fn u32_at(block: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(block[at..at + 4].try_into().unwrap())
}

/// The NUL-terminated string at guest address `addr` inside the block.
fn c_str(block: &[u8], block_at: u64, addr: u32) -> &[u8] {
    let from = (u64::from(addr) - block_at) as usize;
    let s = &block[from..];
    &s[..s.iter().position(|&b| b == 0).expect("NUL-terminated")]
}

fn check_loaded(mem: &Recorder, entry: &EntryState, modules: &[Module<'_>], cmdline: &str) {
    mem.assert_disjoint();
    let info_at = u64::from(entry.ebx);
    let info = mem
        .data_at(info_at)
        .expect("the information block is written");
    assert!(info_at + info.len() as u64 <= 1 << 32);
    // Where each module went: (start, end).
    let placed: Vec<(u64, u64)> = match entry.eax {
        loader::MULTIBOOT2_BOOTLOADER_MAGIC => {
            let boot = BootInfo::parse(entry.eax, info).expect("the block parses");
            assert_eq!(boot.cmdline(), cmdline);
            let got: Vec<_> = boot.modules().collect();
            assert_eq!(got.len(), modules.len());
            for (m, want) in got.iter().zip(modules) {
                assert_eq!(m.name, want.cmdline);
            }
            got.iter().map(|m| (m.start.0, m.end.0)).collect()
        }
        loader::MULTIBOOT_BOOTLOADER_MAGIC => {
            // Spec 3.3: cmdline at 16, mods_count at 20, mods_addr at 24;
            // each module: mod_start, mod_end, string, reserved.
            assert_eq!(c_str(info, info_at, u32_at(info, 16)), cmdline.as_bytes());
            assert_eq!(u32_at(info, 20) as usize, modules.len());
            let mods = (u64::from(u32_at(info, 24)) - info_at) as usize;
            let inside_segment = mem
                .writes
                .iter()
                .any(|w| w.at != info_at && (w.at..w.end()).contains(&u64::from(entry.entry)));
            assert!(
                inside_segment,
                "entry {:#x} outside the kernel",
                entry.entry
            );
            (0..modules.len())
                .map(|i| {
                    let m = mods + 16 * i;
                    let name = c_str(info, info_at, u32_at(info, m + 8));
                    assert_eq!(name, modules[i].cmdline.as_bytes());
                    (u64::from(u32_at(info, m)), u64::from(u32_at(info, m + 4)))
                })
                .collect()
        }
        other => panic!("EAX {other:#x} is no boot loader magic"),
    };
    for ((start, end), m) in placed.iter().zip(modules) {
        assert_eq!(end - start, m.bytes.len() as u64);
        if !m.bytes.is_empty() {
            assert_eq!(mem.data_at(*start), Some(m.bytes));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(flags >> 3 & 3).min(NAMES.len());
    let (lengths, rest) = take(rest, count + 1);
    let Some((&cmdline_len, module_units)) = lengths.split_last() else {
        return;
    };
    let (cmdline, mut rest) = take(rest, usize::from(cmdline_len));
    let mut modules = Vec::new();
    for (&units, name) in module_units.iter().zip(NAMES) {
        let (bytes, tail) = take(rest, usize::from(units) * 64);
        modules.push(Module {
            bytes,
            cmdline: name,
        });
        rest = tail;
    }
    let cmdline = core::str::from_utf8(cmdline).unwrap_or("bad utf-8");
    let mut mem = Recorder::new(RAM_MIB[usize::from(flags & 7)] * MIB);
    match loader::load(&mut mem, rest, &modules, cmdline) {
        Ok(entry) => check_loaded(&mem, &entry, &modules, cmdline),
        Err(LoadError::DoesNotFit {
            what: "image",
            at,
            len,
        }) => {
            panic!("a write of {len:#x} bytes at {at:#x} failed after its placement check")
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
