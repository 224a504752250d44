//! The global allocator: a boot heap in the image for part 1, then each
//! node's own heap in its kernel memory (the node heap of thesis 5.4.2).
//!
//! Allocation goes to the heap of the calling CPU's node (found through the
//! per-CPU block), or to the boot heap before the CPU has one. Part 1's
//! allocations (the plan: the global boot state) stay in the boot heap,
//! which every node maps read-only; freeing one from a node just leaks it,
//! since writing the boot heap's free list would fault, by design.

use super::percpu;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};
use linked_list_allocator::Heap;
use spin::Mutex;

/// Enough for the config text, its model, the topology and the plan of a
/// large machine.
const BOOT_HEAP_BYTES: usize = 2 << 20;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; BOOT_HEAP_BYTES]>);

// SAFETY: the arena is only ever handed to `BOOT_HEAP` (once, in `init`),
// which serialises all access to it.
unsafe impl Sync for Arena {}

static BOOT_ARENA: Arena = Arena(UnsafeCell::new([0; BOOT_HEAP_BYTES]));
static BOOT_HEAP: Mutex<Heap> = Mutex::new(Heap::empty());
/// Set when part 1 ends: the boot heap is read-only from then on.
static BOOT_HEAP_SEALED: AtomicBool = AtomicBool::new(false);

/// A node's heap, in its kernel memory.
pub struct NodeHeap(Mutex<Heap>);

impl NodeHeap {
    /// # Safety
    /// `[start, start + bytes)` must be node memory that nothing else uses,
    /// mapped read-write for as long as the heap lives.
    pub unsafe fn new(start: u64, bytes: u64) -> NodeHeap {
        // SAFETY: the caller hands over the range for the heap's lifetime.
        NodeHeap(Mutex::new(unsafe {
            Heap::new(start as *mut u8, bytes as usize)
        }))
    }

    /// Bytes in use and free.
    pub fn usage(&self) -> (usize, usize) {
        let heap = self.0.lock();
        (heap.used(), heap.free())
    }
}

/// Gives the boot heap its arena. Called once on the boot CPU, first thing.
pub fn init() {
    let mut heap = BOOT_HEAP.lock();
    if heap.size() == 0 {
        // SAFETY: the arena is a static used by nothing else; this runs once
        // (size 0 means not yet initialised) under the heap lock.
        unsafe { heap.init(BOOT_ARENA.0.get().cast::<u8>(), BOOT_HEAP_BYTES) };
    }
}

/// A zeroed, page-aligned 4 KiB page from the boot heap, kept for good
/// (part 1's page tables for RAM above 4 GiB).
pub fn boot_page() -> Option<u64> {
    let layout = Layout::from_size_align(4096, 4096).ok()?;
    // SAFETY: the layout has a non-zero size; the page is never freed.
    let page = unsafe { alloc::alloc::alloc_zeroed(layout) };
    (!page.is_null()).then_some(page as u64)
}

/// Ends part 1: from now on nothing writes the boot heap.
pub fn seal_boot_heap() {
    BOOT_HEAP_SEALED.store(true, Ordering::SeqCst);
}

/// The boot heap's address range (part of the image).
pub fn boot_heap_range() -> (u64, u64) {
    let start = BOOT_ARENA.0.get() as u64;
    (start, start + BOOT_HEAP_BYTES as u64)
}

fn in_boot_heap(ptr: *mut u8) -> bool {
    let (start, end) = boot_heap_range();
    (start..end).contains(&(ptr as u64))
}

struct Allocator;

// SAFETY: each heap is behind its own lock; blocks are returned to the heap
// that produced them (boot heap by address range, else the node heap of the
// calling CPU, which is the only heap its node's code allocates from).
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let block = match percpu::current() {
            Some(cpu) => cpu.node.heap.0.lock().allocate_first_fit(layout),
            None if !BOOT_HEAP_SEALED.load(Ordering::Relaxed) => {
                BOOT_HEAP.lock().allocate_first_fit(layout)
            }
            None => Err(()),
        };
        block.map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(block) = NonNull::new(ptr) else {
            return;
        };
        if in_boot_heap(ptr) {
            if !BOOT_HEAP_SEALED.load(Ordering::Relaxed) {
                // SAFETY: the block came from the boot heap (address range)
                // with this layout, per GlobalAlloc's contract.
                unsafe { BOOT_HEAP.lock().deallocate(block, layout) };
            }
            return;
        }
        if let Some(cpu) = percpu::current() {
            // SAFETY: not a boot-heap block, so it came from this node's
            // heap: node code never holds another node's allocations.
            unsafe { cpu.node.heap.0.lock().deallocate(block, layout) };
        }
    }
}

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;
