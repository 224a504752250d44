//! A VM's life as a state machine: the decisions about running, ending,
//! restarting and staying down, made here so they are host-tested; the
//! hypervisor stores nothing of this itself and only carries out what the
//! methods answer (reloading images, printing events, kicking CPUs).
//!
//! ```text
//!  Running --request_end (first one wins)--> Ending
//!  Ending: each CPU with a vCPU of the VM parks it and checks out
//!          (VcpuLife::park_if_ending); the last one out finishes:
//!     decide() = Restart(cause) --restart()--> Running (generation + 1;
//!                                              each CPU resets its vCPUs)
//!     decide() = Stay            --end()------> Ended (for good)
//! ```
//!
//! The state sits in atomics because every CPU running a vCPU of the VM
//! reads it at each exit; only the vCPU-owning CPUs change their own
//! vCPUs (thesis 6.4), the shared record just tells them what to do.

use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use crate::dispatch::StopReason;
use crate::exit::Registers;

/// Restarts a crashing VM gets before it stays stopped: a guest that
/// crashes at once would otherwise restart forever.
pub const MAX_RESTARTS: u32 = 3;

/// Where a VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RunState {
    /// Its vCPUs run.
    Running = 0,
    /// Something asked it to end; its CPUs are parking its vCPUs.
    Ending = 1,
    /// Every vCPU checked out and it did not restart: it is over.
    Ended = 2,
}

impl RunState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => RunState::Running,
            1 => RunState::Ending,
            _ => RunState::Ended,
        }
    }
}

/// How a VM ended.
#[derive(Clone, Copy, Debug)]
pub enum End {
    /// It asked to (isa-debug-exit or the power-off hypercall).
    Exited {
        /// The status it gave.
        status: u32,
        /// The vCPU that asked.
        vcpu: u16,
    },
    /// It reset its machine: it starts again.
    Rebooted,
    /// It was stopped, with the registers of the vCPU that caused it.
    Stopped {
        /// Why it was stopped.
        reason: StopReason,
        /// The vCPU whose exit stopped it.
        vcpu: u16,
        /// That vCPU's registers at the exit.
        regs: Registers,
    },
}

impl End {
    /// A stop the guest caused by misbehaving (not a setup failure or
    /// every vCPU halted for good): what `on_crash = "restart"` restarts.
    pub fn is_crash(&self) -> bool {
        matches!(self, End::Stopped { reason, .. } if reason.is_crash())
    }

    /// Anything but a clean exit with status 0 counts as a failed VM.
    pub fn is_failure(&self) -> bool {
        !matches!(self, End::Exited { status: 0, .. })
    }
}

/// Why a VM starts again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// It crashed and `on_crash = "restart"` lets it start again.
    Crash,
    /// It reset its machine.
    Reboot,
}

impl Cause {
    /// As the `vm_restarted` event writes it.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Crash => "crash",
            Cause::Reboot => "reboot",
        }
    }
}

/// What the last vCPU out does with the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Reload its images and start it again ([`Lifecycle::restart`]); if
    /// the images no longer load, it stays down after all.
    Restart(Cause),
    /// It stays down ([`Lifecycle::end`]).
    Stay {
        /// It crashed with `on_crash = "restart"` but used up
        /// [`MAX_RESTARTS`].
        restarts_exhausted: bool,
    },
}

/// What happens to a VM whose vCPUs all checked out after `end` (none if
/// the reason was lost), given its crash policy and the crash restarts
/// so far. A reboot always restarts; a crash restarts only under
/// `restart_on_crash` and below [`MAX_RESTARTS`].
pub fn decide(end: Option<&End>, restart_on_crash: bool, restarts: u32) -> Finish {
    match end {
        Some(End::Rebooted) => Finish::Restart(Cause::Reboot),
        Some(end) if end.is_crash() && restart_on_crash => {
            if restarts < MAX_RESTARTS {
                Finish::Restart(Cause::Crash)
            } else {
                Finish::Stay {
                    restarts_exhausted: true,
                }
            }
        }
        _ => Finish::Stay {
            restarts_exhausted: false,
        },
    }
}

/// The shared part of a VM's life: its state, the vCPUs still checked in
/// for the current generation, the blocked vCPUs and the restart count.
#[derive(Debug)]
pub struct Lifecycle {
    state: AtomicU8,
    /// vCPUs not yet checked out of the current generation.
    active: AtomicU32,
    /// vCPUs that cannot run until something wakes them (halted with
    /// interrupts off, or waiting for a start-up IPI).
    blocked: AtomicU32,
    /// Bumped by every restart; a CPU resets its vCPUs when it changes.
    generation: AtomicU32,
    /// Restarts after a crash (reboots are free).
    restarts: AtomicU32,
    vcpus: u32,
}

impl Lifecycle {
    /// A VM of `vcpus` vCPUs, running, every vCPU checked in.
    pub fn new(vcpus: u16) -> Self {
        Lifecycle {
            state: AtomicU8::new(RunState::Running as u8),
            active: AtomicU32::new(u32::from(vcpus)),
            blocked: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            restarts: AtomicU32::new(0),
            vcpus: u32::from(vcpus),
        }
    }

    /// The VM's run state, as last published.
    pub fn state(&self) -> RunState {
        RunState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether its vCPUs run.
    pub fn is_running(&self) -> bool {
        self.state() == RunState::Running
    }

    /// Whether it is over.
    pub fn has_ended(&self) -> bool {
        self.state() == RunState::Ended
    }

    /// The current generation (0 at the first start).
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Crash restarts so far.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Running -> Ending. True for the one request that made the change
    /// (it records why and kicks the CPUs); later ones are ignored.
    pub fn request_end(&self) -> bool {
        self.state
            .compare_exchange(
                RunState::Running as u8,
                RunState::Ending as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// One vCPU leaves the ending generation. True for the last one out:
    /// it finishes the VM ([`decide`], then restart or end).
    pub fn check_out(&self) -> bool {
        let before = self.active.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "more check-outs than vCPUs");
        before == 1
    }

    /// [`decide`] for this VM's restart count.
    pub fn decide(&self, end: Option<&End>, restart_on_crash: bool) -> Finish {
        decide(end, restart_on_crash, self.restarts())
    }

    /// Ending -> Running as a new generation: every vCPU checked in and
    /// unblocked again, a crash counted. Returns the crash restarts so
    /// far (what `vm_restarted` reports). The caller reloads the VM first:
    /// a CPU that sees the new generation runs the new images.
    pub fn restart(&self, cause: Cause) -> u32 {
        debug_assert_eq!(self.state(), RunState::Ending);
        let restarts = match cause {
            Cause::Crash => self.restarts.fetch_add(1, Ordering::Relaxed) + 1,
            Cause::Reboot => self.restarts(),
        };
        self.blocked.store(0, Ordering::Relaxed);
        self.active.store(self.vcpus, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Release);
        self.state.store(RunState::Running as u8, Ordering::Release);
        restarts
    }

    /// Ending -> Ended: the VM stays down.
    pub fn end(&self) {
        debug_assert_eq!(self.state(), RunState::Ending);
        self.state.store(RunState::Ended as u8, Ordering::Release);
    }

    /// A vCPU blocks (nothing but INIT or SIPI wakes it). True when every
    /// vCPU of the VM is now blocked: it can never run again, and the
    /// caller stops it.
    pub fn block(&self) -> bool {
        let blocked = self.blocked.fetch_add(1, Ordering::AcqRel) + 1;
        blocked >= self.vcpus
    }

    /// A blocked vCPU woke (a start-up IPI).
    pub fn unblock(&self) {
        self.blocked.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One vCPU's view of its VM's life, kept by the CPU that runs it: the
/// generation it was reset for and whether it checked out.
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuLife {
    generation: u32,
    parked: bool,
}

/// What [`VcpuLife::park_if_ending`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parking {
    /// Nothing: the VM runs, or this vCPU is parked already.
    No,
    /// The VM is ending: the caller parks the vCPU.
    Parked,
    /// As `Parked`, and it was the last vCPU out: the caller finishes the
    /// VM too.
    ParkedLast,
}

impl VcpuLife {
    /// Whether the vCPU checked out of the current generation.
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// True when the VM runs a generation this vCPU was not reset for:
    /// the caller resets the vCPU, which is then checked in again.
    pub fn take_new_generation(&mut self, life: &Lifecycle) -> bool {
        let generation = life.generation();
        if generation == self.generation || !life.is_running() {
            return false;
        }
        self.generation = generation;
        self.parked = false;
        true
    }

    /// An ending VM: this vCPU checks out (once per generation).
    pub fn park_if_ending(&mut self, life: &Lifecycle) -> Parking {
        if self.parked || life.state() != RunState::Ending {
            return Parking::No;
        }
        self.parked = true;
        if life.check_out() {
            Parking::ParkedLast
        } else {
            Parking::Parked
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash() -> End {
        End::Stopped {
            reason: StopReason::TripleFault,
            vcpu: 0,
            regs: Registers::default(),
        }
    }

    fn halted_forever() -> End {
        End::Stopped {
            reason: StopReason::HaltedForever,
            vcpu: 1,
            regs: Registers::default(),
        }
    }

    const STAY: Finish = Finish::Stay {
        restarts_exhausted: false,
    };

    #[test]
    fn a_new_vm_runs_with_every_vcpu_checked_in() {
        let life = Lifecycle::new(2);
        assert_eq!(life.state(), RunState::Running);
        assert!(life.is_running() && !life.has_ended());
        assert_eq!((life.generation(), life.restarts()), (0, 0));
    }

    #[test]
    fn only_the_first_end_request_wins() {
        let life = Lifecycle::new(1);
        assert!(life.request_end());
        assert_eq!(life.state(), RunState::Ending);
        assert!(!life.request_end());
        assert!(!life.is_running() && !life.has_ended());
    }

    #[test]
    fn the_last_vcpu_out_finishes() {
        let life = Lifecycle::new(3);
        assert!(life.request_end());
        assert!(!life.check_out());
        assert!(!life.check_out());
        assert!(life.check_out());
    }

    #[test]
    fn ending_then_end_is_ended_for_good() {
        let life = Lifecycle::new(1);
        life.request_end();
        life.check_out();
        life.end();
        assert_eq!(life.state(), RunState::Ended);
        assert!(life.has_ended());
        assert!(!life.request_end());
    }

    #[test]
    fn restart_is_a_new_running_generation() {
        let life = Lifecycle::new(2);
        life.request_end();
        life.check_out();
        assert!(life.check_out());
        assert_eq!(life.restart(Cause::Crash), 1);
        assert_eq!(life.state(), RunState::Running);
        assert_eq!(life.generation(), 1);
        // Both vCPUs are checked in again: two check-outs end it.
        life.request_end();
        assert!(!life.check_out());
        assert!(life.check_out());
    }

    #[test]
    fn only_crashes_count_as_restarts() {
        let life = Lifecycle::new(1);
        for (cause, expected) in [(Cause::Reboot, 0), (Cause::Crash, 1), (Cause::Reboot, 1)] {
            life.request_end();
            life.check_out();
            assert_eq!(life.restart(cause), expected);
        }
        assert_eq!(life.restarts(), 1);
        assert_eq!(life.generation(), 3);
    }

    #[test]
    fn a_reboot_restarts_whatever_the_policy() {
        for restart_on_crash in [false, true] {
            assert_eq!(
                decide(Some(&End::Rebooted), restart_on_crash, MAX_RESTARTS),
                Finish::Restart(Cause::Reboot)
            );
        }
    }

    #[test]
    fn a_crash_restarts_only_under_the_restart_policy() {
        assert_eq!(
            decide(Some(&crash()), true, 0),
            Finish::Restart(Cause::Crash)
        );
        assert_eq!(decide(Some(&crash()), false, 0), STAY);
    }

    #[test]
    fn a_stop_that_is_no_crash_never_restarts() {
        assert_eq!(decide(Some(&halted_forever()), true, 0), STAY);
        let exit = End::Exited { status: 0, vcpu: 0 };
        assert_eq!(decide(Some(&exit), true, 0), STAY);
        assert_eq!(decide(None, true, 0), STAY);
    }

    #[test]
    fn the_restart_limit_holds() {
        let life = Lifecycle::new(1);
        let mut restarts = 0;
        loop {
            life.request_end();
            assert!(life.check_out());
            match life.decide(Some(&crash()), true) {
                Finish::Restart(cause) => {
                    assert_eq!(cause, Cause::Crash);
                    life.restart(cause);
                    restarts += 1;
                }
                Finish::Stay { restarts_exhausted } => {
                    assert!(restarts_exhausted);
                    life.end();
                    break;
                }
            }
            assert!(restarts <= MAX_RESTARTS, "restarted past the limit");
        }
        assert_eq!(restarts, MAX_RESTARTS);
        assert!(life.has_ended());
    }

    #[test]
    fn failures_are_everything_but_a_clean_exit() {
        assert!(!End::Exited { status: 0, vcpu: 0 }.is_failure());
        assert!(End::Exited { status: 1, vcpu: 0 }.is_failure());
        assert!(End::Rebooted.is_failure());
        assert!(crash().is_failure());
        assert!(crash().is_crash() && !halted_forever().is_crash());
    }

    #[test]
    fn the_vm_is_stuck_when_every_vcpu_blocks() {
        let life = Lifecycle::new(2);
        assert!(!life.block());
        life.unblock();
        assert!(!life.block());
        assert!(life.block());
    }

    #[test]
    fn a_restart_unblocks_every_vcpu() {
        let life = Lifecycle::new(2);
        life.block();
        life.request_end();
        life.restart(Cause::Reboot);
        assert!(!life.block());
    }

    #[test]
    fn each_vcpu_checks_out_once_per_generation() {
        let life = Lifecycle::new(2);
        let (mut a, mut b) = (VcpuLife::default(), VcpuLife::default());
        assert_eq!(a.park_if_ending(&life), Parking::No);
        life.request_end();
        assert_eq!(a.park_if_ending(&life), Parking::Parked);
        assert_eq!(a.park_if_ending(&life), Parking::No);
        assert!(a.is_parked());
        assert_eq!(b.park_if_ending(&life), Parking::ParkedLast);
        // Finished and ended: nobody checks out again.
        life.end();
        assert_eq!(b.park_if_ending(&life), Parking::No);
    }

    #[test]
    fn a_vcpu_resets_once_for_a_new_generation() {
        let life = Lifecycle::new(1);
        let mut vcpu = VcpuLife::default();
        assert!(!vcpu.take_new_generation(&life));
        life.request_end();
        assert_eq!(vcpu.park_if_ending(&life), Parking::ParkedLast);
        // Not before the restart is complete (the state is Running).
        assert!(!vcpu.take_new_generation(&life));
        life.restart(Cause::Reboot);
        assert!(vcpu.take_new_generation(&life));
        assert!(!vcpu.is_parked());
        assert!(!vcpu.take_new_generation(&life));
    }
}
