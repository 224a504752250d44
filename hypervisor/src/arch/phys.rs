//! Reading physical memory through the boot identity map.

use atoll_platform::HostPhysAddr;
use atoll_platform::acpi::PhysMemory;

/// The boot page tables (entry.rs) identity-map physical addresses below
/// this bound.
pub const IDENTITY_MAPPED_END: u64 = 4 << 30;

/// Physical memory below [`IDENTITY_MAPPED_END`], read-only: firmware tables,
/// the boot information and boot modules.
pub struct BootMemory(());

impl BootMemory {
    /// # Safety
    /// The boot identity map must be active, and no code may write to the
    /// firmware tables, boot information block or boot modules while the
    /// returned handle (and slices from it) live: they are read as shared,
    /// immutable bytes.
    pub unsafe fn new() -> Self {
        BootMemory(())
    }
}

impl PhysMemory for BootMemory {
    fn bytes(&self, addr: HostPhysAddr, len: usize) -> Option<&[u8]> {
        let end = addr.0.checked_add(u64::try_from(len).ok()?)?;
        if addr.0 == 0 || end > IDENTITY_MAPPED_END {
            return None;
        }
        // SAFETY: the range is non-null and inside the identity map, so every
        // byte is mapped (as RAM, firmware ROM or unbacked bus, which reads as
        // ones); `BootMemory::new`'s contract rules out concurrent writes, and
        // u8 has no invalid values or alignment needs.
        Some(unsafe { core::slice::from_raw_parts(addr.0 as *const u8, len) })
    }
}
