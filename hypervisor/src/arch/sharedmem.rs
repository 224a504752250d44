//! Memory two or more nodes map (channels and doorbells), seen as atomic
//! words: the only way nodes exchange data, so every access is an atomic
//! operation with an explicit ordering.

use atoll_cluster::plan::{Plan, SignalPlan};
use core::sync::atomic::AtomicU64;

/// The first `len` bytes of channel `channel` as words, if node `node`
/// holds it (and so maps it: read-only channels fault on a store, as they
/// should).
pub fn channel_words(
    plan: &Plan,
    node: usize,
    channel: usize,
    len: u64,
) -> Option<&'static [AtomicU64]> {
    let held = plan
        .nodes
        .get(node)?
        .channels
        .iter()
        .any(|&(c, _)| c == channel);
    let range = plan.channels.get(channel)?.range;
    if !held || len > range.len {
        return None;
    }
    // SAFETY: node page tables map every channel the node holds, for the
    // node's lifetime (nodeboot.rs `build_tables`); plan ranges are 4 KiB
    // aligned.
    Some(unsafe { words(range.start.0, len) })
}

/// The doorbell word of `signal`, if node `node` sends or receives it (and
/// so maps its page).
pub fn doorbell_word(node: usize, signal: &SignalPlan) -> Option<&'static AtomicU64> {
    let mine = usize::from(signal.from.0) == node || usize::from(signal.to.0) == node;
    // SAFETY: node page tables map the doorbell of every signal the node
    // sends or receives (nodeboot.rs `build_tables`); pages are aligned.
    mine.then(|| unsafe { words(signal.doorbell.start.0, 8) })
        .and_then(|w| w.first())
}

/// Writes into another node's memory, which this node's page tables do not
/// map, so the write must fault: the isolation self-test's probe. Refuses
/// (returns `false`) unless `addr` is in another node's memory and outside
/// that node's kernel memory, so that even broken isolation could not
/// corrupt anything the other node uses yet.
pub fn write_into_other_node(plan: &Plan, me: usize, addr: u64) -> bool {
    let owner = plan
        .nodes
        .iter()
        .enumerate()
        .find(|(_, n)| n.memory.iter().any(|r| r.start.0 <= addr && addr < r.end()));
    let Some((owner, node)) = owner else {
        return false;
    };
    let kernel = node.kernel_memory;
    if owner == me || (kernel.start.0 <= addr && addr < kernel.end()) || !addr.is_multiple_of(8) {
        return false;
    }
    // SAFETY: `addr` is another node's memory, which the plan keeps out of
    // this node's page tables: the store faults before it writes. Were
    // isolation broken, it would hit an aligned word the owner does not use.
    unsafe { core::ptr::write_volatile(addr as *mut u64, 0xdead_beef) };
    true
}

/// The 64-bit words of `[start, start + len)`.
///
/// # Safety
/// The range must be 8-byte aligned and mapped in the calling CPU's page
/// tables for as long as the slice is used (a channel or doorbell of the
/// CPU's node, mapped for the node's lifetime). Writes through a read-only
/// mapping fault, as they should.
unsafe fn words(start: u64, len: u64) -> &'static [AtomicU64] {
    let count = (len / 8) as usize;
    // SAFETY: per the contract the memory is mapped, aligned and lives for
    // the node's lifetime; AtomicU64 has the layout of u64 and all bit
    // patterns are valid, and other nodes touch it only atomically too.
    unsafe { core::slice::from_raw_parts(start as *const AtomicU64, count) }
}

/// Zeroes a channel or doorbell before any node maps it, so nodes start
/// from a known state (firmware and the boot loader leave RAM as it was).
///
/// # Safety
/// Part 1 only (no node runs yet), with the boot identity map covering the
/// range, and the range must be planned shared memory that nothing else
/// uses.
pub unsafe fn zero(start: u64, len: u64) {
    // SAFETY: per the contract, nothing else uses the range and it is
    // mapped writable by the boot tables.
    unsafe { core::ptr::write_bytes(start as *mut u8, 0, len as usize) }
}
