//! A node's kernel memory (the plan's `kernel_memory`): a bump allocator for
//! the things a node places once and keeps (its page tables, its `Node`
//! record, per-CPU blocks, IST stacks) and the page-table frame supply. The
//! layout (bump area, heap, stacks and guard pages) is
//! `atoll_cluster::layout::KernelLayout`, host-tested there.

use atoll_platform::paging::TableMemory;

pub use atoll_cluster::layout::{IST_STACK_BYTES, KernelLayout};

/// Bump allocation over `[next, end)` of identity-mapped node memory.
pub struct KernelMemory {
    next: u64,
    end: u64,
}

impl KernelMemory {
    /// # Safety
    /// `[start, end)` must be memory of the calling CPU's node that nothing
    /// else uses, mapped read-write at its physical address in the active
    /// page tables, for as long as anything allocated from it lives.
    pub unsafe fn new(start: u64, end: u64) -> Self {
        KernelMemory { next: start, end }
    }

    /// An allocator with nothing to give (a placeholder until the real one
    /// is moved in).
    pub const fn empty() -> Self {
        KernelMemory { next: 0, end: 0 }
    }

    /// `bytes` zeroed bytes aligned to `align` (a power of two), or `None`.
    pub fn alloc_zeroed(&mut self, bytes: u64, align: u64) -> Option<u64> {
        let start = self.next.checked_next_multiple_of(align)?;
        let end = start.checked_add(bytes)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        // SAFETY: `[start, end)` lies in the range `new` was given, which is
        // mapped, writable and unused; the bump pointer hands it out once.
        unsafe { core::ptr::write_bytes(start as *mut u8, 0, bytes as usize) };
        Some(start)
    }

    /// Moves `value` into kernel memory for the node's lifetime.
    pub fn place<T>(&mut self, value: T) -> Option<&'static mut T> {
        let size = core::mem::size_of::<T>() as u64;
        let align = core::mem::align_of::<T>() as u64;
        let addr = self.alloc_zeroed(size.max(1), align)?;
        let ptr = addr as *mut T;
        // SAFETY: `addr` is fresh, aligned for T, large enough and lives as
        // long as the node (never reused), so a 'static reference is sound.
        unsafe {
            ptr.write(value);
            Some(&mut *ptr)
        }
    }

    /// A stack of `bytes` (without a guard page); returns its top (16-byte
    /// aligned).
    pub fn stack(&mut self, bytes: u64) -> Option<u64> {
        let bottom = self.alloc_zeroed(bytes, 16)?;
        Some(bottom + bytes)
    }
}

impl TableMemory for KernelMemory {
    fn alloc_frame(&mut self) -> Option<u64> {
        self.alloc_zeroed(4096, 4096)
    }

    fn read_entry(&self, table: u64, index: usize) -> u64 {
        // SAFETY: `table` came from `alloc_frame` (a mapped 4 KiB frame of
        // this allocator) and the builder passes index < 512.
        unsafe { core::ptr::read_volatile((table as *const u64).add(index % 512)) }
    }

    fn write_entry(&mut self, table: u64, index: usize, entry: u64) {
        // SAFETY: as in `read_entry`; the tables are not active while the
        // builder writes them (activation comes after).
        unsafe { core::ptr::write_volatile((table as *mut u64).add(index % 512), entry) }
    }
}

/// Page-table frames from a node's kernel memory behind its lock: for
/// tables that grow after boot (a VM's EPT when a channel is mapped).
pub struct SharedFrames(pub &'static spin::Mutex<KernelMemory>);

impl TableMemory for SharedFrames {
    fn alloc_frame(&mut self) -> Option<u64> {
        self.0.lock().alloc_frame()
    }

    fn read_entry(&self, table: u64, index: usize) -> u64 {
        // SAFETY: as for KernelMemory: `table` came from `alloc_frame`.
        unsafe { core::ptr::read_volatile((table as *const u64).add(index % 512)) }
    }

    fn write_entry(&mut self, table: u64, index: usize, entry: u64) {
        // SAFETY: as for KernelMemory; an EPT entry written while the VM
        // runs only adds a mapping (absent -> present), which needs no
        // invalidation, and removals are followed by INVEPT on every CPU
        // of the VM (vm.rs).
        unsafe { core::ptr::write_volatile((table as *mut u64).add(index % 512), entry) }
    }
}
