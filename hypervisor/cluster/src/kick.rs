//! Kicks within a node: a CPU that posts a request for a vCPU another CPU
//! runs (an IPI into its mailbox, a VM ending, a notification) sends that
//! CPU a kick interrupt, so it leaves its guest or its idle wait and looks
//! at its mailboxes (thesis 6.4: only the owning CPU changes a vCPU). Each
//! target CPU has one "kick pending" flag, so at most one kick is ever on
//! its way to a CPU however fast its neighbours post:
//!
//! ```text
//!  sender                                   target CPU
//!  post the request (mailbox, Release)      kick interrupt: take() (flag := 0)
//!  if request() (flag was 0): send kick     ... then look at every mailbox
//!  else: coalesced (a kick is on its way)
//! ```
//!
//! Nothing is lost. A sender whose `request` finds the flag set did not
//! send a kick; in the flag's modification order its swap comes after the
//! swap that set it (whose sender sent a kick) and before the target's
//! `take` that clears it (else it would have found 0). That `take` reads
//! the value written by the sender's swap or by a later read-modify-write
//! of the same flag, so the sender's Release swap synchronises with the
//! target's Acquire `take`: the request posted before the swap is visible
//! to the mailbox reads the target makes after its `take`. The target must
//! therefore clear the flag *before* it looks at the mailboxes; clearing
//! after would let a request posted between the look and the clear wait
//! for some unrelated later kick.
//!
//! A spurious look (the target looked at its mailboxes anyway, then the
//! kick arrives) costs one pass over empty mailboxes, nothing more.

use core::sync::atomic::{AtomicBool, Ordering};

/// The atomic flag the protocol needs, so one protocol runs on `core`'s
/// atomics in the hypervisor and on loom's in the model checker.
pub trait KickWord: Sync {
    /// Stores `value` and returns the previous one, atomically.
    fn swap(&self, value: bool, order: Ordering) -> bool;
}

impl KickWord for AtomicBool {
    fn swap(&self, value: bool, order: Ordering) -> bool {
        AtomicBool::swap(self, value, order)
    }
}

/// Sender: marks a kick pending for the target. Returns whether the
/// caller must send the kick interrupt (no kick was pending). Call it
/// after posting the request.
pub fn request(flag: &impl KickWord) -> bool {
    // Release: the request posted before is visible to the target's
    // Acquire `take` (module doc).
    !flag.swap(true, Ordering::AcqRel)
}

/// Target: the kick interrupt arrived; clears the flag. Call it before
/// looking at the mailboxes (and not before the interrupt is taken: a
/// flag cleared while the kick is still in flight lets a second one go).
/// Returns whether a kick was pending.
pub fn take(flag: &impl KickWord) -> bool {
    flag.swap(false, Ordering::AcqRel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_sends_one_kick_per_take() {
        let flag = AtomicBool::new(false);
        let sent = (0..1000).filter(|_| request(&flag)).count();
        assert_eq!(sent, 1);
        assert!(take(&flag));
        assert!(!take(&flag), "taken once");
        assert!(request(&flag), "the next request kicks again");
    }
}

/// Every interleaving (and weak-memory outcome) of senders and a target.
#[cfg(test)]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicBool as LoomBool, AtomicUsize};
    use std::vec::Vec;

    impl KickWord for LoomBool {
        fn swap(&self, value: bool, order: Ordering) -> bool {
            LoomBool::swap(self, value, order)
        }
    }

    struct Shared {
        flag: LoomBool,
        /// One mailbox word per sender (the request, 1 = posted).
        mailbox: [AtomicUsize; 2],
        kicks: AtomicUsize,
    }

    /// `senders` senders each post once and kick if asked; the target
    /// handles one kick: clears the flag, then takes the mailboxes. Any
    /// request the target did not see must have a kick still pending.
    fn model(senders: usize) {
        loom::model(move || {
            let shared = Arc::new(Shared {
                flag: LoomBool::new(false),
                mailbox: [AtomicUsize::new(0), AtomicUsize::new(0)],
                kicks: AtomicUsize::new(0),
            });
            let threads: Vec<_> = (0..senders)
                .map(|i| {
                    let s = Arc::clone(&shared);
                    loom::thread::spawn(move || {
                        if let Some(word) = s.mailbox.get(i) {
                            word.store(1, Ordering::Relaxed);
                        }
                        if request(&s.flag) {
                            s.kicks.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            let took = take(&shared.flag);
            let seen: Vec<usize> = shared
                .mailbox
                .iter()
                .map(|w| w.swap(0, Ordering::Relaxed))
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let pending = shared.flag.swap(false, Ordering::Relaxed);
            for (i, word) in shared.mailbox.iter().enumerate().take(senders) {
                let missed = seen[i] == 0 && word.load(Ordering::Relaxed) == 1;
                assert!(!missed || pending, "sender {i}'s request has no kick");
            }
            // At most one kick in flight: one before the take, one after.
            let kicks = shared.kicks.load(Ordering::Relaxed);
            assert!(kicks <= usize::from(took) + usize::from(pending));
        });
    }

    #[test]
    fn loom_one_sender() {
        model(1);
    }

    #[test]
    fn loom_two_senders() {
        model(2);
    }
}
