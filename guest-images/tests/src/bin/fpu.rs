//! The `fpu` test guest: keeps a pattern (command line `seed=N`) in all
//! sixteen XMM registers while it spins for `rounds` slices (`rounds=N`,
//! 40 by default), checking after each that the pattern survived. Two of
//! these on one CPU are switched by the preemption timer, so each sees the
//! other's registers unless Atoll saves and restores extended state when it
//! switches vCPUs. Reports `guest_case` (case `fpu`), exits 0 when intact.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use atoll_guest_rt::{BootInfo, arg, println, rdtsc, sse};

atoll_guest_rt::entry!(main);

fn main(info: &BootInfo) -> u32 {
    let seed = arg(info.cmdline(), "seed").unwrap_or(1);
    let rounds = arg(info.cmdline(), "rounds").unwrap_or(40);
    sse::enable();
    sse::fill(seed);
    let mut broken = 0;
    for _ in 0..rounds {
        let start = rdtsc();
        while rdtsc().wrapping_sub(start) < 100_000 {}
        if !sse::check(seed) {
            broken += 1;
            sse::fill(seed);
        }
    }
    let ok = broken == 0;
    println!(
        "@ev {{\"ev\":\"guest_case\",\"case\":\"fpu\",\"ok\":{ok},\"detail\":\"{broken} of {rounds} checks found other registers\"}}"
    );
    u32::from(!ok)
}
