//! A node's kernel memory (the plan's `kernel_memory`): a bump allocator for
//! the things a node places once and keeps (its page tables, its `Node`
//! record, per-CPU blocks, IST stacks), the page-table frame supply, and the
//! layout of the CPUs' kernel stacks with their guard pages.
//!
//! ```text
//!  start                                                                end
//!  | bump: tables, Node, PerCpu, ... | heap | stacks of slots n-1..1 | G | arrival stack |
//!                                           each stack has a guard page G below it
//! ```
//! The node's first CPU arrives on the stack at the very top (set by part 1).
//! Guard pages are left out of the node's page tables, so running off the
//! bottom of a stack faults (and the double fault runs on its IST stack).

use atoll_platform::paging::TableMemory;

/// The first CPU's arrival stack at the top of a node's kernel memory.
/// Larger than the others: part 2 builds the `Node` record (which holds
/// the node lock's per-CPU queue slots, tens of KiB) on it before moving it
/// into kernel memory, and before the CPU has IST stacks.
pub const FIRST_STACK_BYTES: u64 = 256 * 1024;
/// Each CPU's kernel stack.
pub const STACK_BYTES: u64 = 64 * 1024;
/// Each IST stack (double fault, NMI): enough to report and halt.
pub const IST_STACK_BYTES: u64 = 16 * 1024;

/// A stack's guard page.
pub const GUARD_BYTES: u64 = 4096;

/// Where things go in a node's kernel memory. Computed without
/// allocating: part 2 needs it before the node has a heap.
pub struct KernelLayout {
    pub bump: (u64, u64),
    pub heap: (u64, u64),
    cpus: usize,
    end: u64,
}

impl KernelLayout {
    /// The layout for kernel memory `[start, end)` of a node with `cpus`
    /// CPUs, or `None` if the stacks do not fit.
    pub fn new(start: u64, end: u64, cpus: usize) -> Option<KernelLayout> {
        let stacks_bottom = Self::guard_at(end, cpus.checked_sub(1)?)?;
        let span = stacks_bottom.checked_sub(start)?;
        let mid = (start + span / 2) & !0xfff;
        (mid > start).then_some(KernelLayout {
            bump: (start, mid),
            heap: (mid, stacks_bottom),
            cpus,
            end,
        })
    }

    fn stack_bytes(slot: usize) -> u64 {
        if slot == 0 {
            FIRST_STACK_BYTES
        } else {
            STACK_BYTES
        }
    }

    fn stack_top_at(end: u64, slot: usize) -> Option<u64> {
        if slot == 0 {
            return Some(end);
        }
        let below_first = end.checked_sub(FIRST_STACK_BYTES + GUARD_BYTES)?;
        below_first.checked_sub((slot as u64 - 1) * (STACK_BYTES + GUARD_BYTES))
    }

    fn guard_at(end: u64, slot: usize) -> Option<u64> {
        Self::stack_top_at(end, slot)?.checked_sub(Self::stack_bytes(slot) + GUARD_BYTES)
    }

    /// The top of the kernel stack of the CPU in `slot`.
    pub fn stack_top(&self, slot: usize) -> Option<u64> {
        (slot < self.cpus)
            .then(|| Self::stack_top_at(self.end, slot))
            .flatten()
    }

    /// The guard pages, lowest address first.
    pub fn guards(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.cpus)
            .rev()
            .filter_map(|slot| Self::guard_at(self.end, slot))
    }
}

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
