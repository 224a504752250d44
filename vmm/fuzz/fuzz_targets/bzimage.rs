//! `linux::load` on arbitrary input: must return, never panic.
//!
//! Input layout: byte 0 picks the initrd's length (in 64-byte units),
//! byte 1 the command line's; then come the initrd, the command line and
//! the kernel image, each cut short if the input ends.
#![no_main]

use atoll_vmm::VecMemory;
use atoll_vmm::linux::{self, LinuxBoot};
use libfuzzer_sys::fuzz_target;

/// Small enough to allocate per run, large enough for the default
/// pref_address (16 MiB) plus a small init_size.
const RAM: usize = 32 << 20;

fn take(bytes: &[u8], len: usize) -> (&[u8], &[u8]) {
    bytes.split_at(len.min(bytes.len()))
}

fuzz_target!(|data: &[u8]| {
    let (lengths, rest) = take(data, 2);
    let initrd_len = lengths.first().map_or(0, |b| usize::from(*b) * 64);
    let cmdline_len = lengths.get(1).map_or(0, |b| usize::from(*b));
    let (initrd, rest) = take(rest, initrd_len);
    let (cmdline, image) = take(rest, cmdline_len);
    let boot = LinuxBoot {
        image,
        initrd: Some(initrd),
        cmdline: core::str::from_utf8(cmdline).unwrap_or("bad utf-8"),
        acpi_rsdp: Some(0xe0000),
    };
    let mut mem = VecMemory::new(RAM);
    if let Ok(entry) = linux::load(&mut mem, &boot) {
        assert!(entry.rip >= linux::KERNEL_LOW);
    }
});
