//! The local APIC in x2APIC mode (SDM Vol. 3A, 11.12): MSR access to the
//! guest's virtual APIC.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

const APIC_BASE: u32 = 0x1b;
const EOI: u32 = 0x80b;
const SVR: u32 = 0x80f;
const ICR: u32 = 0x830;
const SELF_IPI: u32 = 0x83f;
const LVT_TIMER: u32 = 0x832;
const TIMER_INITIAL: u32 = 0x838;
const TIMER_DIVIDE: u32 = 0x83e;
pub const ID: u32 = 0x802;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// The APIC stays in xAPIC mode: EOI through its MMIO page.
static XAPIC_EOI: AtomicBool = AtomicBool::new(false);
/// The xAPIC EOI register (SDM Table 11-1).
const XAPIC_EOI_ADDR: u64 = 0xfee0_00b0;

pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR of an MSR the guest's (virtual) CPU has; an unknown one
    // raises #GP, which the IDT reports.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: as for `rdmsr`; a refused write raises #GP.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack))
    }
}

/// Switches this CPU's APIC to x2APIC mode and software-enables it with
/// spurious vector 0xFF.
pub fn enable() {
    wrmsr(APIC_BASE, rdmsr(APIC_BASE) | (1 << 10) | (1 << 11));
    wrmsr(SVR, 0x1ff);
    ENABLED.store(true, Ordering::SeqCst);
}

/// End of interrupt (only once x2APIC mode is on, or the guest said it
/// uses the xAPIC page: [`use_xapic_eoi`]).
pub fn eoi() {
    if ENABLED.load(Ordering::SeqCst) {
        wrmsr(EOI, 0);
    } else if XAPIC_EOI.load(Ordering::SeqCst) {
        crate::mem::write_u32(XAPIC_EOI_ADDR, 0);
    }
}

/// Interrupts are ended through the xAPIC page (a guest that keeps the
/// APIC in xAPIC mode).
pub fn use_xapic_eoi() {
    XAPIC_EOI.store(true, Ordering::SeqCst);
}

/// Sends `vector` to this CPU.
pub fn self_ipi(vector: u8) {
    wrmsr(SELF_IPI, u64::from(vector));
}

/// Sends an IPI: ICR delivery mode `mode` (0 fixed, 5 INIT, 6 SIPI) with
/// `vector` to x2APIC ID `dest`.
pub fn send_ipi(dest: u32, mode: u64, vector: u8) {
    let level = if mode == 5 { 1 << 14 } else { 0 };
    wrmsr(
        ICR,
        (u64::from(dest) << 32) | (mode << 8) | level | u64::from(vector),
    );
}

/// One-shot timer: `vector` after `count` ticks at divide-by-1.
pub fn one_shot(vector: u8, count: u32) {
    wrmsr(TIMER_DIVIDE, 0xb);
    wrmsr(LVT_TIMER, u64::from(vector));
    wrmsr(TIMER_INITIAL, u64::from(count));
}
