//! Delays. The PIT is one device for the whole machine, so only part 1 (one
//! CPU running) may use it: it calibrates the TSC against the PIT once, and
//! every later delay, on any CPU of any node, counts TSC ticks instead.

use super::{cpu, pit};
use core::sync::atomic::{AtomicU64, Ordering};

/// TSC ticks per microsecond; 0 until calibrated. Written once in part 1,
/// read-only afterwards.
static TSC_PER_US: AtomicU64 = AtomicU64::new(0);

/// The calibration interval.
const CALIBRATION_US: u64 = 10_000;

/// Measures the TSC rate against the PIT. Part 1 only (the PIT is shared).
pub fn calibrate() -> u64 {
    let start = cpu::rdtsc();
    pit::wait_us(CALIBRATION_US);
    let per_us = (cpu::rdtsc().saturating_sub(start) / CALIBRATION_US).max(1);
    TSC_PER_US.store(per_us, Ordering::Relaxed);
    per_us
}

/// TSC ticks per microsecond (0 before calibration).
pub fn tsc_per_us() -> u64 {
    TSC_PER_US.load(Ordering::Relaxed)
}

/// Waits at least `us` microseconds: by the TSC once calibrated, else (in
/// part 1 before calibration) by the PIT.
pub fn delay_us(us: u64) {
    let per_us = tsc_per_us();
    if per_us == 0 {
        pit::wait_us(us);
        return;
    }
    let end = cpu::rdtsc().saturating_add(us.saturating_mul(per_us));
    while cpu::rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Waits about `us` microseconds with the CPU halted (woken by its local
/// APIC timer tick, which must be running): on an emulator, a halted
/// virtual CPU gives its host thread to the others instead of spinning.
/// Returns early, after at least one tick, if another interrupt arrives.
pub fn idle_us(us: u64) {
    let end = cpu::rdtsc().saturating_add(us.saturating_mul(tsc_per_us()));
    while cpu::rdtsc() < end {
        cpu::wait_for_interrupt();
    }
}
