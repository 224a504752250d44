//! Per-CPU identity through the GS base (thesis 4.5.3 step 5): each CPU's
//! IA32_GS_BASE points at its own [`PerCpu`] block in its node's memory,
//! whose first word points at itself, so `mov gs:[0]` finds it in one load
//! with no CPU-number lookup.

use super::hooks::Node;

const IA32_GS_BASE: u32 = 0xc000_0101;

/// One CPU's identity and its way to its node's state.
#[repr(C)]
pub struct PerCpu {
    /// Points at this block (read through GS).
    self_ptr: *const PerCpu,
    /// The CPU's number in MADT order.
    pub cpu: u32,
    pub apic_id: u32,
    /// The CPU's position within its node (0 = the node's first CPU); its
    /// slot in the node lock's queue.
    pub slot: usize,
    pub node: &'static Node,
}

const _: () = assert!(core::mem::offset_of!(PerCpu, self_ptr) == 0);

// SAFETY: a PerCpu is written once before installation and only read
// afterwards; `self_ptr` is never dereferenced mutably.
unsafe impl Sync for PerCpu {}

/// What GS points at before a CPU has its block: one zero word, so
/// [`current`] reads a null self pointer and returns `None`.
static NO_CPU_BLOCK: u64 = 0;

/// Points GS at the empty block: call on each CPU before anything that may
/// call [`current`] (the allocator does).
pub fn clear() {
    // SAFETY: IA32_GS_BASE is architectural on x86-64; the value is the
    // address of a static zero word, which `current` reads as "no block".
    unsafe { x86::msr::wrmsr(IA32_GS_BASE, (&raw const NO_CPU_BLOCK) as u64) };
}

/// Installs `block` as this CPU's per-CPU block.
pub fn install(block: &'static mut PerCpu) {
    block.self_ptr = block as *const PerCpu;
    // SAFETY: as in `clear`; the block is 'static and its first word points
    // at itself, as `current` expects.
    unsafe { x86::msr::wrmsr(IA32_GS_BASE, block.self_ptr as u64) };
}

/// Builds a block to be installed on a CPU (its self pointer is set by
/// [`install`]).
pub fn new_block(cpu: u32, apic_id: u32, slot: usize, node: &'static Node) -> PerCpu {
    PerCpu {
        self_ptr: core::ptr::null(),
        cpu,
        apic_id,
        slot,
        node,
    }
}

/// This CPU's block, or `None` before one is installed (boot part 1).
pub fn current() -> Option<&'static PerCpu> {
    let ptr: *const PerCpu;
    // SAFETY: GS always points at a readable word: the empty block (`clear`)
    // or an installed 'static PerCpu; reading gs:[0] has no side effects.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) ptr, options(nostack, readonly, preserves_flags));
    }
    // SAFETY: non-null values were stored by `install` from a 'static block.
    unsafe { ptr.as_ref() }
}
