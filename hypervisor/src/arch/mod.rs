//! The arch layer: the only place in Atoll with `unsafe`, inline assembly
//! and raw hardware access. Everything above it sees safe functions and
//! plain values.

pub mod apic;
pub mod biglock;
pub mod cpu;
pub mod entry;
pub mod fpu;
pub mod gdt;
pub mod guestram;
pub mod heap;
pub mod hooks;
pub mod idt;
pub mod images;
pub mod kmem;
pub mod nodeboot;
pub mod paging;
pub mod percpu;
pub mod phys;
pub mod pic;
pub mod pit;
pub mod port;
pub mod power;
pub mod sections;
pub mod serial;
pub mod shared;
pub mod sharedmem;
pub mod status;
pub mod time;
pub mod trampoline;
pub mod vmcs;
pub mod vmx;

/// The multiboot2 boot information block, as a byte slice.
///
/// # Safety
/// `addr` must be the address GRUB passed in EBX, with the boot identity map
/// active, and nothing may write to the block afterwards.
pub unsafe fn boot_info_bytes(addr: u64) -> &'static [u8] {
    if addr == 0 || addr >= phys::IDENTITY_MAPPED_END - 8 {
        return &[];
    }
    // SAFETY: the address is mapped (checked above) and GRUB guarantees 8
    // readable bytes of header there; the caller rules out writers.
    let total = unsafe { core::ptr::read_volatile(addr as *const u32) };
    let len = u64::from(total.min(atoll_platform::multiboot2::MAX_TOTAL_SIZE));
    let len = len.min(phys::IDENTITY_MAPPED_END - addr);
    // SAFETY: the whole range lies in the identity map (clamped above); the
    // parser checks the contents, and the caller rules out writers.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }
}
