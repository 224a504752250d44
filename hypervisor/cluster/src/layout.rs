//! The layout of a node's kernel memory (the plan's `kernel_memory`), as
//! arithmetic the hypervisor's part 2 follows and this crate tests:
//!
//! ```text
//!  start                                                                end
//!  | bump: tables, Node, PerCpu, ... | heap | stacks of slots n-1..1 | G | arrival stack |
//!                                           each stack has a guard page G below it
//! ```
//!
//! The node's first CPU arrives on the stack at the very top (set by boot
//! part 1). Guard pages are left out of the node's page tables, so running
//! off the bottom of a stack faults (and the double fault runs on its IST
//! stack). Nothing here allocates: part 2 needs it before the node has a
//! heap.

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
    /// `[start, end)` for the boot bump allocator (page tables, the node
    /// structure): the lower half of what the stacks leave.
    pub bump: (u64, u64),
    /// `[start, end)` for the node's heap: the upper half, up to the lowest
    /// stack guard page.
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
        let mid = start.checked_add(span / 2)? & !0xfff;
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
        let below = u64::try_from(slot - 1)
            .ok()?
            .checked_mul(STACK_BYTES + GUARD_BYTES)?;
        below_first.checked_sub(below)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const MIB: u64 = 1 << 20;

    #[test]
    fn eight_mib_for_two_cpus() {
        let (start, end) = (6 * MIB, 14 * MIB);
        let l = KernelLayout::new(start, end, 2).unwrap();
        assert_eq!(l.stack_top(0), Some(end));
        let first_guard = end - FIRST_STACK_BYTES - GUARD_BYTES;
        assert_eq!(l.stack_top(1), Some(first_guard));
        let guards: Vec<u64> = l.guards().collect();
        assert_eq!(
            guards,
            [first_guard - STACK_BYTES - GUARD_BYTES, first_guard]
        );
        assert_eq!(l.heap.1, guards[0]);
        assert_eq!(l.bump, (start, l.heap.0));
        assert_eq!(l.stack_top(2), None);
    }

    #[test]
    fn too_small_or_no_cpus_is_none() {
        assert!(KernelLayout::new(0, FIRST_STACK_BYTES, 1).is_none());
        assert!(KernelLayout::new(0, 8 * MIB, 0).is_none());
        assert!(KernelLayout::new(0, 2 * MIB, 64).is_none());
    }

    proptest::proptest! {
        /// Bump area, heap, guards and stacks tile kernel memory without
        /// overlap, every stack sits right above its guard page, and all of
        /// it is page aligned and inside `[start, end)`.
        #[test]
        fn parts_are_disjoint_and_inside(
            start_pages in 0u64..1 << 20,
            len_mib in 2u64..64,
            cpus in 1usize..=256,
        ) {
            let start = start_pages * 4096;
            let end = start + len_mib * MIB;
            let Some(l) = KernelLayout::new(start, end, cpus) else {
                return Ok(());
            };
            let mut parts = std::vec![l.bump, l.heap];
            for slot in 0..cpus {
                let top = l.stack_top(slot).unwrap();
                let bytes = if slot == 0 { FIRST_STACK_BYTES } else { STACK_BYTES };
                parts.push((top - bytes, top));
            }
            let guards: Vec<u64> = l.guards().collect();
            proptest::prop_assert_eq!(guards.len(), cpus);
            parts.extend(guards.iter().map(|&g| (g, g + GUARD_BYTES)));
            parts.sort_unstable();
            proptest::prop_assert_eq!(parts.first().unwrap().0, start);
            proptest::prop_assert_eq!(parts.last().unwrap().1, end);
            for pair in parts.windows(2) {
                // Adjacent, no gaps, no overlap: the parts tile the range.
                proptest::prop_assert_eq!(pair[0].1, pair[1].0);
            }
            for (a, b) in parts {
                proptest::prop_assert!(a % 4096 == 0 && b % 4096 == 0 && a < b);
            }
            for slot in 0..cpus {
                let bytes = if slot == 0 { FIRST_STACK_BYTES } else { STACK_BYTES };
                let bottom = l.stack_top(slot).unwrap() - bytes;
                proptest::prop_assert!(guards.contains(&(bottom - GUARD_BYTES)));
            }
        }
    }
}
