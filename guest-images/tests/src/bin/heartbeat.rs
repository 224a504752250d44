//! The `heartbeat` test guest: a neighbour that proves it keeps running.
//! It prints `guest_heartbeat` events, `beats` of them (command line
//! `beats=N`, 40 by default), one every `interval` TSC ticks
//! (`interval=N`, 2,000,000 by default), then exits with status 0. Each
//! beat carries the TSC when it was printed, so a test can see gaps.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use atoll_guest_rt::{BootInfo, arg, println, rdtsc};

atoll_guest_rt::entry!(main);

fn main(info: &BootInfo) -> u32 {
    let beats = arg(info.cmdline(), "beats").unwrap_or(40);
    let interval = arg(info.cmdline(), "interval").unwrap_or(2_000_000);
    for count in 1..=beats {
        let start = rdtsc();
        while rdtsc().wrapping_sub(start) < interval {}
        let tsc = rdtsc();
        println!("@ev {{\"ev\":\"guest_heartbeat\",\"count\":{count},\"tsc\":{tsc}}}");
    }
    0
}
