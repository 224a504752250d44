//! The local APIC (SDM Vol. 3A, chapter 11): inter-processor interrupts
//! (INIT, start-up, fixed vectors, NMI), end-of-interrupt, the timer tick.
//!
//! Two register interfaces, chosen once for the machine in part 1:
//! - x2APIC (MSRs 0x800-0x8ff, SDM 11.12) when CPUID offers it, as Bochs'
//!   Skylake model does: 32-bit APIC IDs and one-MSR-write IPIs;
//! - xAPIC (memory-mapped registers) otherwise, as on QEMU TCG, which has no
//!   x2APIC; it addresses APIC IDs up to 254, which the boot checks. Every
//!   CPU sees its own local APIC at the same physical page, so the page is
//!   per CPU, not shared node data.
//!
//! Each CPU switches its own APIC to the chosen mode in [`init_local`]; a
//! CPU still in xAPIC mode (just started) and one in x2APIC mode exchange
//! IPIs normally, as IPIs are routed by APIC ID.

use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;

const IA32_APIC_BASE: u32 = 0x1b;
/// IA32_APIC_BASE bit 11: the APIC is globally enabled.
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;
/// IA32_APIC_BASE bit 10: x2APIC mode (SDM 11.12.1).
const X2APIC_ENABLE: u64 = 1 << 10;
/// x2APIC register MSRs: 0x800 + xAPIC offset / 16 (SDM Table 11-6).
const X2APIC_MSR_BASE: u32 = 0x800;
/// The x2APIC ICR: one 64-bit MSR, destination in bits 63:32.
const X2APIC_ICR: u32 = 0x830;

/// The register interface in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    XApic,
    X2Apic,
}

/// Chosen in part 1 by [`choose_mode`]; read-only afterwards.
static MODE: Once<Mode> = Once::new();

/// Picks the register interface for the whole machine (part 1, once).
pub fn choose_mode(x2apic_available: bool) -> Mode {
    *MODE.call_once(|| {
        if x2apic_available {
            Mode::X2Apic
        } else {
            Mode::XApic
        }
    })
}

fn mode() -> Mode {
    MODE.get().copied().unwrap_or(Mode::XApic)
}

/// Register offsets (SDM Vol. 3A, Table 11-1).
mod reg {
    pub const TPR: u64 = 0x80;
    pub const EOI: u64 = 0xb0;
    pub const SPURIOUS: u64 = 0xf0;
    pub const ESR: u64 = 0x280;
    pub const LVT_TIMER: u64 = 0x320;
    pub const TIMER_INITIAL: u64 = 0x380;
    pub const TIMER_CURRENT: u64 = 0x390;
    pub const TIMER_DIVIDE: u64 = 0x3e0;
    pub const ICR_LOW: u64 = 0x300;
    pub const ICR_HIGH: u64 = 0x310;
}

/// ICR fields (SDM Vol. 3A, 11.6.1, Figure 11-12).
mod icr {
    pub const FIXED: u32 = 0b000 << 8;
    pub const NMI: u32 = 0b100 << 8;
    pub const INIT: u32 = 0b101 << 8;
    pub const STARTUP: u32 = 0b110 << 8;
    pub const DELIVERY_PENDING: u32 = 1 << 12;
    pub const ASSERT: u32 = 1 << 14;
    pub const LEVEL_TRIGGERED: u32 = 1 << 15;
}

/// The spurious-interrupt vector; SVR bit 8 enables the APIC.
pub const SPURIOUS_VECTOR: u8 = 0xff;
const SVR_ENABLE: u32 = 1 << 8;
/// Polls of the ICR delivery-status bit before an IPI counts as lost.
const ICR_POLLS: u32 = 1_000_000;

/// The xAPIC page, read once on the boot CPU (firmware puts every CPU's
/// APIC at the same address).
static BASE: Once<u64> = Once::new();

/// The physical page of the local APIC registers; nodes map it uncached.
pub fn base() -> u64 {
    *BASE.call_once(|| {
        // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU (CPUID.1:EDX.APIC
        // is architectural there); reading it has no side effects.
        let msr = unsafe { x86::msr::rdmsr(IA32_APIC_BASE) };
        msr & 0x000f_ffff_ffff_f000
    })
}

fn read(offset: u64) -> u32 {
    if mode() == Mode::X2Apic {
        // SAFETY: this CPU's APIC is in x2APIC mode (`init_local` ran before
        // any register use), where these MSRs exist; reads are side-effect
        // free for the registers Atoll reads (the xAPIC ICR poll only).
        return unsafe { x86::msr::rdmsr(x2apic_msr(offset)) as u32 };
    }
    // SAFETY: `base()` is the APIC page, which the boot identity map and
    // every node's page tables map uncached; APIC registers are 32-bit,
    // 16-byte aligned, and reads have no side effects on memory.
    unsafe { core::ptr::read_volatile((base() + offset) as *const u32) }
}

fn write(offset: u64, value: u32) {
    if mode() == Mode::X2Apic {
        // SAFETY: as in `read`; register writes affect only this CPU's APIC
        // and the IPIs the caller asks for, never memory.
        unsafe { x86::msr::wrmsr(x2apic_msr(offset), u64::from(value)) };
        return;
    }
    // SAFETY: as in `read`; APIC register writes affect only this CPU's
    // APIC and the IPIs the caller asks for, never memory.
    unsafe { core::ptr::write_volatile((base() + offset) as *mut u32, value) }
}

/// The x2APIC MSR of an xAPIC register offset.
fn x2apic_msr(offset: u64) -> u32 {
    X2APIC_MSR_BASE + (offset >> 4) as u32
}

/// Enables this CPU's APIC (never disabling it: Bochs 2.7 ignores
/// re-enabling) and accepts all interrupt priorities.
pub fn init_local() {
    // SAFETY: as in `base`; setting the global-enable bit (already set by
    // firmware on every machine we know), then the x2APIC bit when the
    // machine's mode is x2APIC (CPUID offered it), only changes how this
    // CPU's APIC is addressed. EN before EXTD: the xAPIC -> x2APIC
    // transition the SDM allows (11.12.5, Figure 11-28).
    unsafe {
        let msr = x86::msr::rdmsr(IA32_APIC_BASE);
        let enabled = msr | APIC_GLOBAL_ENABLE;
        if enabled != msr {
            x86::msr::wrmsr(IA32_APIC_BASE, enabled);
        }
        if mode() == Mode::X2Apic && enabled & X2APIC_ENABLE == 0 {
            x86::msr::wrmsr(IA32_APIC_BASE, enabled | X2APIC_ENABLE);
        }
    }
    write(reg::TPR, 0);
    write(reg::SPURIOUS, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
    write(reg::ESR, 0);
}

/// Signals the end of the interrupt being serviced.
pub fn eoi() {
    write(reg::EOI, 0);
}

/// Why an IPI could not be sent.
#[derive(Debug, Clone, Copy)]
pub struct IpiStuck;

fn send(destination: u32, command: u32) -> Result<(), IpiStuck> {
    if mode() == Mode::X2Apic {
        // One write sends it; x2APIC has no delivery-status bit to poll
        // (SDM 11.12.9).
        let icr = (u64::from(destination) << 32) | u64::from(command);
        // SAFETY: as in `write`: x2APIC mode, the ICR MSR exists; sending an
        // IPI changes no memory.
        unsafe { x86::msr::wrmsr(X2APIC_ICR, icr) };
        return Ok(());
    }
    write(reg::ICR_HIGH, destination << 24);
    write(reg::ICR_LOW, command);
    for _ in 0..ICR_POLLS {
        if read(reg::ICR_LOW) & icr::DELIVERY_PENDING == 0 {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err(IpiStuck)
}

/// Sends a fixed-vector interrupt to the CPU with `apic_id`.
pub fn send_fixed(apic_id: u32, vector: u8) -> Result<(), IpiStuck> {
    send(apic_id, icr::FIXED | icr::ASSERT | u32::from(vector))
}

/// Sends an NMI to every other CPU that runs Atoll (the panic path's stop
/// signal); CPUs never started are left alone.
pub fn nmi_other_running_cpus(self_apic_id: u32) {
    for apic_id in super::shared::running().filter(|&id| id != self_apic_id) {
        // Best effort: there is nothing more to do on a panic if it is stuck.
        let _ = send(apic_id, icr::NMI | icr::ASSERT);
    }
}

/// Puts the CPU with `apic_id` into wait-for-SIPI: INIT, then the 10 ms the
/// universal start-up algorithm asks for (SDM Vol. 3A, 10.4.4.1).
pub fn send_init(apic_id: u32) -> Result<(), IpiStuck> {
    send(apic_id, icr::INIT | icr::LEVEL_TRIGGERED | icr::ASSERT)?;
    super::time::delay_us(10_000);
    // De-assert, as the MP specification's sequence has it (B.4.1); modern
    // CPUs ignore it, older local APICs and some emulators want it. x2APIC
    // has no INIT level de-assert (SDM 11.12.9).
    if mode() == Mode::XApic {
        send(apic_id, icr::INIT | icr::LEVEL_TRIGGERED)?;
    }
    Ok(())
}

/// Sends a start-up IPI: a CPU waiting for SIPI starts in real mode at
/// `page << 12`; a CPU that is running ignores it (SDM Vol. 3A, 10.4.4),
/// so sending another one is always safe.
pub fn send_startup(apic_id: u32, page: u8) -> Result<(), IpiStuck> {
    send(apic_id, icr::STARTUP | u32::from(page))?;
    super::time::delay_us(200);
    Ok(())
}

/// LVT timer mode bit 17: periodic (SDM Vol. 3A, 11.5.4).
const TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration 0b1011: divide by 1.
const DIVIDE_BY_1: u32 = 0b1011;

/// The tick: the APIC timer's period in APIC clock ticks. Its job is to
/// wake halted CPUs so that waits end.
pub const TICK_CYCLES: u32 = 1_000_000;

/// Starts this CPU's periodic tick on `vector`.
pub fn start_periodic_timer(vector: u8) {
    write(reg::TIMER_DIVIDE, DIVIDE_BY_1);
    write(reg::LVT_TIMER, TIMER_PERIODIC | u32::from(vector));
    write(reg::TIMER_INITIAL, TICK_CYCLES);
}

/// APIC timer ticks per TSC tick, times 2^32; 0 until calibrated. Written
/// once in part 1, read-only afterwards.
static TIMER_PER_TSC_Q32: AtomicU64 = AtomicU64::new(0);

/// Part 1, on the boot CPU with the TSC calibrated: measures the APIC
/// timer's rate against the TSC (one-shot from the largest count for 1 ms).
pub fn calibrate_timer() {
    write(reg::TIMER_DIVIDE, DIVIDE_BY_1);
    write(reg::LVT_TIMER, LVT_MASKED);
    let start = super::cpu::rdtsc();
    write(reg::TIMER_INITIAL, u32::MAX);
    super::time::delay_us(1000);
    let counted = u64::from(u32::MAX - read(reg::TIMER_CURRENT));
    let elapsed = super::cpu::rdtsc().saturating_sub(start).max(1);
    write(reg::TIMER_INITIAL, 0);
    TIMER_PER_TSC_Q32.store((counted << 32) / elapsed, Ordering::Relaxed);
}

/// Makes the next tick come no later than TSC `deadline` (a vCPU's timer):
/// the periodic count is shortened until [`restore_tick`].
pub fn tick_by(deadline: u64) {
    let ratio = TIMER_PER_TSC_Q32.load(Ordering::Relaxed);
    if ratio == 0 {
        return;
    }
    let left = deadline.saturating_sub(super::cpu::rdtsc());
    let cycles = (u128::from(left) * u128::from(ratio)) >> 32;
    if cycles < u128::from(TICK_CYCLES) {
        write(reg::TIMER_INITIAL, (cycles as u32).max(1));
    }
}

/// Back to the normal tick period (after a tick, which may have been a
/// shortened one).
pub fn restore_tick() {
    write(reg::TIMER_INITIAL, TICK_CYCLES);
}

/// LVT mask bit (SDM Figure 11-8).
const LVT_MASKED: u32 = 1 << 16;
