//! The `signal` test guest: inter-node signalling between two VMs through
//! their IPI capabilities (handle 0 each). `role=ping` signals notification
//! 0 and waits for the answer, `rounds` times (command line `rounds=N`,
//! 100 by default), and reports the round-trip TSC ticks as a
//! `guest_signal` event; `role=pong` waits and answers as often.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use atoll_guest_rt::hypercall::{self, call};
use atoll_guest_rt::{BootInfo, arg, println, rdtsc, word};

atoll_guest_rt::entry!(main);

const MAX_ROUNDS: usize = 1024;

fn main(info: &BootInfo) -> u32 {
    let rounds = arg(info.cmdline(), "rounds")
        .unwrap_or(100)
        .clamp(1, MAX_ROUNDS as u64) as usize;
    match word(info.cmdline(), "role") {
        Some("ping") => ping(rounds),
        Some("pong") => pong(rounds),
        _ => {
            println!("signal: role=ping or role=pong");
            2
        }
    }
}

/// Signal, then wait for the answer; retries while the other side's node
/// is not up yet.
fn ping(rounds: usize) -> u32 {
    let mut samples = [0u64; MAX_ROUNDS];
    for sample in samples.iter_mut().take(rounds) {
        let start = rdtsc();
        while hypercall::status(call(hypercall::SIGNAL, 0, 0, 0, 0).0) != 0 {}
        let (rax, pending, ..) = call(hypercall::WAIT, u64::MAX, 0, 0, 0);
        if rax != 0 || pending & 1 == 0 {
            println!("signal: wait returned {rax:#x}, notifications {pending:#x}");
            return 1;
        }
        *sample = rdtsc().wrapping_sub(start);
    }
    let taken = &mut samples[..rounds];
    taken.sort_unstable();
    println!(
        "@ev {{\"ev\":\"guest_signal\",\"rounds\":{rounds},\"median_cycles\":{},\"min_cycles\":{},\"max_cycles\":{}}}",
        taken[rounds / 2],
        taken[0],
        taken[rounds - 1]
    );
    0
}

fn pong(rounds: usize) -> u32 {
    for _ in 0..rounds {
        let (rax, pending, ..) = call(hypercall::WAIT, u64::MAX, 0, 0, 0);
        if rax != 0 || pending & 1 == 0 {
            println!("signal: wait returned {rax:#x}, notifications {pending:#x}");
            return 1;
        }
        while hypercall::status(call(hypercall::SIGNAL, 0, 0, 0, 0).0) != 0 {}
    }
    0
}
