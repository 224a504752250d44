//! A VM's RAM: a contiguous range of its node's memory, reached through
//! the node's identity map and handed to the VMM as
//! [`atoll_vmm::GuestMemory`], so every guest-physical access the VMM makes
//! is bounds-checked there before a byte moves.
//!
//! Other vCPUs of the VM may write the same bytes concurrently, so every
//! copy is volatile: the VMM reads a value once into its own memory and
//! decides on that copy (no double fetch).

use atoll_cluster::plan::NodePlan;
use atoll_cluster::topology::PhysRange;
use atoll_vmm::memory::check_range;
use atoll_vmm::{GuestMemory, GuestPhysAddr, MemoryError};

/// Guest-physical `[0, size)` backed by host-physical `[host, host + size)`.
#[derive(Clone, Copy, Debug)]
pub struct GuestRam {
    host: u64,
    size: u64,
}

/// The RAM of a VM at `range`, if the range is guest memory of the node
/// `plan` describes: inside the node's memory and outside its kernel
/// memory. The planner gives each VM its own range (its property tests
/// check VM ranges are disjoint), so the VM owns it alone.
pub fn for_vm(plan: &NodePlan, range: PhysRange) -> Option<GuestRam> {
    let inside = plan
        .memory
        .iter()
        .any(|m| m.start.0 <= range.start.0 && range.end() <= m.end());
    if range.len == 0 || !inside || range.overlaps(&plan.kernel_memory) {
        return None;
    }
    // SAFETY: the range is this node's memory (checked), which the node's
    // tables map read-write, outside its kernel memory, and given to one VM.
    Some(unsafe { GuestRam::new(range.start.0, range.len) })
}

impl GuestRam {
    /// # Safety
    /// `[host, host + size)` must be memory of the calling node, mapped
    /// read-write at its physical address in every CPU of the node, and
    /// owned by this VM alone (the planner keeps VM memory disjoint from
    /// kernel memory and from other VMs).
    pub unsafe fn new(host: u64, size: u64) -> Self {
        GuestRam { host, size }
    }

    /// Sets every byte to 0, so a VM never finds what its memory held
    /// before it (an earlier incarnation, or whatever the machine left
    /// there). Called only while no vCPU of the VM runs: before its first
    /// start and between generations, when every CPU has parked its vCPUs.
    pub fn zero(&mut self) {
        let Ok(len) = usize::try_from(self.size) else {
            return;
        };
        // SAFETY: `[host, host + size)` is the VM's memory, mapped
        // read-write (`new`'s contract); no vCPU runs, so nothing else
        // accesses it while it is cleared.
        unsafe { core::ptr::write_bytes(self.host as *mut u8, 0, len) };
    }
}

impl GuestMemory for GuestRam {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), MemoryError> {
        let offset = check_range(self.size, gpa, buf.len() as u64)?;
        let src = (self.host + offset) as *const u8;
        for (i, byte) in buf.iter_mut().enumerate() {
            // SAFETY: `[offset, offset + len)` is inside the VM's RAM
            // (checked above), which `new`'s caller guarantees is mapped.
            *byte = unsafe { core::ptr::read_volatile(src.add(i)) };
        }
        Ok(())
    }

    fn write(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result<(), MemoryError> {
        let offset = check_range(self.size, gpa, data.len() as u64)?;
        let dst = (self.host + offset) as *mut u8;
        for (i, byte) in data.iter().enumerate() {
            // SAFETY: as in `read`; the VM's RAM is writable and its own.
            unsafe { core::ptr::write_volatile(dst.add(i), *byte) };
        }
        Ok(())
    }
}
