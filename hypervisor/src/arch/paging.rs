//! Switching page tables and widening the boot identity map.

use atoll_platform::paging::PAGE_2M;
use core::sync::atomic::{AtomicU64, Ordering};

unsafe extern "C" {
    static boot_pdpt: u8;
}

/// The boot tables map `[0, 4 GiB)` (entry.rs); PDPT entries 4..512 can
/// each add one more GiB.
const BOOT_PDPT_ENTRIES: u64 = 512;
const GIB: u64 = 1 << 30;

/// The end of the boot identity map; grows with [`extend_boot_map`].
static BOOT_MAP_END: AtomicU64 = AtomicU64::new(4 * GIB);

/// The end of the boot identity map.
pub fn boot_map_end() -> u64 {
    BOOT_MAP_END.load(Ordering::Relaxed)
}

/// Extends the boot identity map up to `end` (capped at 512 GiB) with
/// 2 MiB pages, one page directory per GiB from `alloc_page`. Runs on the
/// boot CPU in part 1, before any other CPU starts, so nothing else walks
/// the tables while they change.
pub fn extend_boot_map(end: u64, mut alloc_page: impl FnMut() -> Option<u64>) -> u64 {
    let pdpt = (&raw const boot_pdpt) as u64;
    let mut gib = boot_map_end() / GIB;
    while gib * GIB < end && gib < BOOT_PDPT_ENTRIES {
        let Some(pd) = alloc_page() else { break };
        for i in 0..512u64 {
            let entry = (gib * GIB + i * PAGE_2M) | 0x83; // present | writable | 2 MiB
            // SAFETY: `pd` is a fresh, zeroed, identity-mapped page from the
            // boot heap; index i < 512 stays inside it.
            unsafe { core::ptr::write_volatile((pd as *mut u64).add(i as usize), entry) };
        }
        // SAFETY: PDPT entry `gib` (< 512) was empty: addresses above the
        // current map end were never mapped, so no TLB holds them; only
        // this CPU runs.
        unsafe { core::ptr::write_volatile((pdpt as *mut u64).add(gib as usize), pd | 0x3) };
        gib += 1;
    }
    BOOT_MAP_END.store(gib * GIB, Ordering::Relaxed);
    gib * GIB
}

/// Loads `root` into CR3.
///
/// # Safety
/// `root` must be a PML4 that maps the running code, the current stack, and
/// everything the caller touches afterwards, with the same physical
/// addresses (identity) as the tables it replaces.
pub unsafe fn activate(root: u64) {
    // SAFETY: the caller guarantees the new tables keep this code and stack
    // mapped identically; the CR3 write also flushes non-global TLB entries.
    unsafe { x86::controlregs::cr3_write(root) };
}

/// Runs `f(arg)` on the stack whose top is `stack_top`; never returns.
///
/// # Safety
/// `stack_top` must be the 16-byte aligned top of an unused, mapped stack
/// that stays mapped for as long as `f` runs.
pub unsafe fn run_on_stack(stack_top: u64, f: extern "C" fn(u64) -> !, arg: u64) -> ! {
    // SAFETY: the caller provides a valid stack; `f` never returns, so the
    // old stack is abandoned, not unwound.
    unsafe {
        core::arch::asm!(
            "mov rsp, {stack}",
            "xor ebp, ebp",
            "call {f}",
            "ud2",
            stack = in(reg) stack_top,
            f = in(reg) f,
            in("rdi") arg,
            options(noreturn)
        )
    }
}
