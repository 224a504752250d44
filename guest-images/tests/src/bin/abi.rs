//! The `abi` test guest: every hypercall of vmm/HYPERCALLS.md used as
//! documented, between two VMs on two nodes sharing a channel.
//!
//! `role=writer` (capabilities: channel 0 and a signal to the reader):
//! checks `version`, reports `ids` (`guest_ids`), prints a line with
//! `console_write`, maps the channel at 2 GiB and fills it with a pattern
//! (mapping it twice must be `busy`), signals the reader, asks for its
//! `stats`, and ends with `power_off(7)`.
//!
//! `role=reader` (capability: channel 0): waits for the signal, maps the
//! channel and checks the pattern, reports `guest_case` (case `channel`).
//!
//! `role=scribbler`: maps a channel its node may only read, and writes to
//! it (which must stop the VM).
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use atoll_guest_rt::hypercall::{self, call};
use atoll_guest_rt::{BootInfo, mem, println, word};

atoll_guest_rt::entry!(main);

/// Where the channel goes: above RAM, below the 4 GiB the guest maps.
const WINDOW: u64 = 0x8000_0000;
const PATTERN: u64 = 0xa5a5_0000_0000_0000;

fn main(info: &BootInfo) -> u32 {
    match word(info.cmdline(), "role") {
        Some("writer") => writer(),
        Some("reader") => reader(),
        Some("scribbler") => scribbler(),
        _ => 2,
    }
}

fn writer() -> u32 {
    let (rax, version, ..) = call(hypercall::VERSION, 0, 0, 0, 0);
    if rax != 0 || version != 1 {
        println!("abi: version returned {rax:#x}, {version}");
        return 1;
    }
    let (_, vm, vcpu, node) = call(hypercall::IDS, 0, 0, 0, 0);
    println!("@ev {{\"ev\":\"guest_ids\",\"vm_index\":{vm},\"vcpu\":{vcpu},\"node\":{node}}}");
    let line = b"written through a hypercall\n";
    let at = line.as_ptr() as u64;
    call(hypercall::CONSOLE_WRITE, at, line.len() as u64, 0, 0);
    let (rax, size, ..) = call(hypercall::MAP_CHANNEL, 0, WINDOW, 0, 0);
    if rax != 0 {
        println!("abi: map_channel returned {}", rax as i64);
        return 1;
    }
    for offset in (0..size).step_by(8) {
        mem::write_u64(WINDOW + offset, PATTERN | offset);
    }
    let (again, ..) = call(hypercall::MAP_CHANNEL, 0, WINDOW + size, 0, 0);
    if hypercall::status(again) != -6 {
        println!("abi: mapping twice returned {}", again as i64);
        return 1;
    }
    while hypercall::status(call(hypercall::SIGNAL, 0, 0, 0, 0).0) != 0 {}
    call(hypercall::REPORT_STATS, 0, 0, 0, 0);
    call(hypercall::POWER_OFF, 7, 0, 0, 0);
    println!("abi: power_off returned");
    1
}

fn reader() -> u32 {
    let (rax, pending, ..) = call(hypercall::WAIT, u64::MAX, 0, 0, 0);
    if rax != 0 || pending & 1 == 0 {
        return 1;
    }
    let (rax, size, ..) = call(hypercall::MAP_CHANNEL, 0, WINDOW, 0, 0);
    let intact = rax == 0
        && size > 0
        && (0..size)
            .step_by(8)
            .all(|offset| mem::read_u64(WINDOW + offset) == PATTERN | offset);
    println!(
        "@ev {{\"ev\":\"guest_case\",\"case\":\"channel\",\"ok\":{intact},\"detail\":\"{size} bytes read back\"}}"
    );
    u32::from(!intact)
}

fn scribbler() -> u32 {
    let (rax, ..) = call(hypercall::MAP_CHANNEL, 0, WINDOW, 0, 0);
    if rax != 0 {
        return 1;
    }
    mem::write_u64(WINDOW, 0);
    println!("abi: wrote into a read-only channel");
    1
}
