//! Memory two or more nodes map (channels and doorbells), seen as atomic
//! words: the only way nodes exchange data, so every access is an atomic
//! operation with an explicit ordering.

use core::sync::atomic::AtomicU64;

/// The 64-bit words of `[start, start + len)`.
///
/// # Safety
/// The range must be 8-byte aligned and mapped in the calling CPU's page
/// tables for as long as the slice is used (a channel or doorbell of the
/// CPU's node, mapped for the node's lifetime). Writes through a read-only
/// mapping fault, as they should.
pub unsafe fn words(start: u64, len: u64) -> &'static [AtomicU64] {
    let count = (len / 8) as usize;
    // SAFETY: per the contract the memory is mapped, aligned and lives for
    // the node's lifetime; AtomicU64 has the layout of u64 and all bit
    // patterns are valid, and other nodes touch it only atomically too.
    unsafe { core::slice::from_raw_parts(start as *const AtomicU64, count) }
}

/// Writes one word with a plain store, on purpose without any check: the
/// isolation self-test uses it to write into another node's memory, which
/// the page tables must stop with a page fault.
///
/// # Safety
/// Only for the isolation self-test: if isolation were broken, the write
/// would corrupt that word of the other node's memory (the test picks a word
/// the other node does not use).
pub unsafe fn stray_write(addr: u64, value: u64) {
    // SAFETY: see the function's contract; an unmapped address faults
    // before anything is written.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
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
