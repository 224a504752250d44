//! The `exitbench` test guest: the round-trip cost, in TSC ticks, of the
//! exits a guest causes most: CPUID, a hypercall (VMCALL), port I/O, MMIO
//! (with `mmio=1`: the testdev page, decoded and emulated), and an
//! interrupt that wakes a halted vCPU (self-IPI, then HLT), and a one-shot
//! APIC timer that wakes it. Each is
//! timed one operation at a time with RDTSC around it, `iterations` times
//! (command line `iterations=N`, 1000 by default), and reported as a
//! `guest_exitbench` event with the median, minimum and maximum. The
//! `rdtsc` row is the timing's own cost (no exit), the floor of the others.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use atoll_guest_rt::hypercall::{self, call};
use atoll_guest_rt::{BootInfo, arg, cpuid, idt, mem, port, println, rdtsc, x2apic};

atoll_guest_rt::entry!(main);

const MAX_ITERATIONS: usize = 4096;
const WAKE_VECTOR: u8 = 0x41;
const TESTDEV: u64 = 0xfeb0_0000;
const TIMER_VECTOR: u8 = 0x42;

fn main(info: &BootInfo) -> u32 {
    let n = arg(info.cmdline(), "iterations")
        .unwrap_or(1000)
        .clamp(1, MAX_ITERATIONS as u64) as usize;
    x2apic::enable();
    measure("rdtsc", n, || {});
    measure("cpuid", n, || {
        cpuid(0, 0);
    });
    measure("vmcall", n, || {
        call(hypercall::VERSION, 0, 0, 0, 0);
    });
    measure("pio_out", n, || port::outb(0x80, 0));
    measure("pio_in", n, || {
        port::inb(0x80);
    });
    if arg(info.cmdline(), "mmio") == Some(1) {
        // The testdev page (device "testdev" in the VM's config).
        measure("mmio_write", n, || mem::write_u64(TESTDEV, 1));
        measure("mmio_read", n, || {
            mem::read_u64(TESTDEV);
        });
    }
    measure("hlt_wakeup", n, || {
        idt::disable_interrupts();
        x2apic::self_ipi(WAKE_VECTOR);
        idt::wait_for_interrupt();
    });
    // A one-shot APIC timer of 1000 ticks while halted: how late the wake-up
    // comes (the timer's own 1000 ticks included).
    let timer_n = n.min(100);
    measure("timer_wakeup", timer_n, || {
        idt::disable_interrupts();
        x2apic::one_shot(TIMER_VECTOR, 1000);
        idt::wait_for_interrupt();
    });
    idt::disable_interrupts();
    let woken = idt::interrupts(WAKE_VECTOR) as usize;
    let timers = idt::interrupts(TIMER_VECTOR) as usize;
    if woken != n || timers != timer_n {
        println!(
            "exitbench: {woken} IPI wake-ups for {n} halts, {timers} timer wake-ups for {timer_n}"
        );
        return 1;
    }
    0
}

fn measure(op: &str, n: usize, mut f: impl FnMut()) {
    let mut samples = [0u64; MAX_ITERATIONS];
    for slot in samples.iter_mut().take(n) {
        let start = rdtsc();
        f();
        *slot = rdtsc().wrapping_sub(start);
    }
    let taken = &mut samples[..n];
    taken.sort_unstable();
    println!(
        "@ev {{\"ev\":\"guest_exitbench\",\"op\":\"{op}\",\"iterations\":{n},\"median_cycles\":{},\"min_cycles\":{},\"max_cycles\":{}}}",
        taken[n / 2],
        taken[0],
        taken[n - 1]
    );
}
