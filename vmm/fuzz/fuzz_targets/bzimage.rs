//! The Linux loader (`linux::load`) on arbitrary kernel images, command
//! lines and initrds, into guest RAM of several sizes (from 2 MiB to past
//! the device hole at 3 GiB). The RAM records writes instead of holding
//! bytes, so a run costs nothing per byte of RAM.
//!
//! The loader may not panic. It checks everything before it writes: a
//! refused image leaves RAM untouched, and a write never fails after the
//! checks passed. A loaded one has:
//! - the protected-mode kernel (the image after its setup sectors) at the
//!   entry point less 0x200, at or above 1 MiB;
//! - the command line, NUL-terminated, where the zero page says;
//! - the initrd page-aligned above the kernel's `init_size` area, inside
//!   RAM and below `initrd_addr_max`, as the zero page says;
//! - nothing written over anything else.
//!
//! Input: one flags byte (bits 0-2 the RAM size, bit 3 no initrd at all,
//! bit 4 no RSDP address), one byte giving the initrd's length in 64-byte
//! units, one the command line's, then the initrd, the command line and
//! the kernel image, each cut short if the input ends.
#![no_main]

use atoll_vmm::linux::{self, LinuxBoot, LinuxError};
use atoll_vmm_fuzz::Recorder;
use libfuzzer_sys::fuzz_target;

const MIB: u64 = 1 << 20;
const RAM_MIB: [u64; 8] = [2, 16, 32, 48, 64, 1024, 3072, 3074];

fn take(bytes: &[u8], len: usize) -> (&[u8], &[u8]) {
    bytes.split_at(len.min(bytes.len()))
}

fn u32_at(page: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(page[at..at + 4].try_into().unwrap()))
}

/// A 64-bit address split over a header field and its `ext_*` half.
fn split_at(page: &[u8], low: usize, high: usize) -> u64 {
    u32_at(page, low) | u32_at(page, high) << 32
}

fn check_loaded(mem: &Recorder, boot: &LinuxBoot<'_>, entry: &linux::LinuxEntry) {
    mem.assert_disjoint();
    let header = linux::parse_header(boot.image).expect("a loaded image's header parses");
    let kernel = &boot.image[header.setup_size()..];
    let load = entry.rip - linux::ENTRY_64_OFFSET;
    assert!(load >= linux::KERNEL_LOW, "kernel at {load:#x}");
    let written = mem.write_at(load).expect("the kernel is written");
    assert_eq!(written.len, kernel.len() as u64);
    if let Some(data) = &written.data {
        assert_eq!(data.as_slice(), kernel);
    }

    let page = mem
        .data_at(linux::ZERO_PAGE)
        .expect("the zero page is written");
    // boot_params: cmd_line_ptr 0x228 / ext 0x0c8, ramdisk_image 0x218 /
    // ext 0x0c0, ramdisk_size 0x21c / ext 0x0c4 (bootparam.h).
    let cmdline_at = split_at(page, 0x228, 0x0c8);
    let mut cmdline = boot.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    let line: Vec<u8> = mem
        .writes
        .iter()
        .filter(|w| w.at >= cmdline_at && w.at <= cmdline_at + cmdline.len() as u64)
        .flat_map(|w| w.data.clone().unwrap_or_default())
        .collect();
    assert_eq!(line, cmdline, "command line at {cmdline_at:#x}");

    let (initrd_at, initrd_len) = (split_at(page, 0x218, 0x0c0), split_at(page, 0x21c, 0x0c4));
    match boot.initrd.filter(|i| !i.is_empty()) {
        Some(initrd) => {
            assert_eq!(initrd_len, initrd.len() as u64);
            assert_eq!(initrd_at % 4096, 0);
            assert_eq!(mem.write_at(initrd_at).map(|w| w.len), Some(initrd_len));
            let end = initrd_at + initrd_len;
            assert!(
                end <= u64::from(header.initrd_addr_max) + 1,
                "initrd ends at {end:#x}"
            );
            // Above where the kernel decompresses to (boot.rst "init_size";
            // head_64.S rounds a relocatable kernel's address up to
            // kernel_alignment, never below pref_address).
            let run = if header.relocatable {
                let align = u64::from(header.kernel_alignment);
                load.next_multiple_of(align).max(header.pref_address)
            } else {
                header.pref_address
            };
            assert!(initrd_at >= load + kernel.len() as u64);
            assert!(
                initrd_at >= run + u64::from(header.init_size),
                "initrd at {initrd_at:#x}"
            );
        }
        None => assert_eq!((initrd_at, initrd_len), (0, 0)),
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, initrd_units, cmdline_len, rest @ ..] = data else {
        return;
    };
    let (initrd, rest) = take(rest, usize::from(*initrd_units) * 64);
    let (cmdline, image) = take(rest, usize::from(*cmdline_len));
    let boot = LinuxBoot {
        image,
        initrd: (flags & 8 == 0).then_some(initrd),
        cmdline: core::str::from_utf8(cmdline).unwrap_or("bad utf-8"),
        acpi_rsdp: (flags & 16 == 0).then_some(0xe0000),
    };
    let mut mem = Recorder::new(RAM_MIB[usize::from(flags & 7)] * MIB);
    match linux::load(&mut mem, &boot) {
        Ok(entry) => check_loaded(&mem, &boot, &entry),
        Err(LinuxError::Memory(e)) => panic!("a write failed after the checks: {e}"),
        Err(e) => {
            assert!(mem.writes.is_empty(), "{e}, after writing");
            assert!(!e.to_string().is_empty());
        }
    }
});
