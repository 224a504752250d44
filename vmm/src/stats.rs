//! Exit statistics: per VM and exit reason, how many exits and how many
//! TSC ticks the hypervisor spent handling them (root mode), plus the
//! ticks spent in the guest, so the time outside the VM is a fraction
//! users can compare between configurations.
//!
//! The counters are plain numbers here; the hypervisor keeps them in
//! atomics (several CPUs run a VM's vCPUs) and takes a [`Snapshot`].

use crate::exit::ExitReason;

/// The reasons counted separately, in table order; everything else is
/// counted as "other".
pub const REASONS: [ExitReason; 21] = [
    ExitReason::ExceptionOrNmi,
    ExitReason::ExternalInterrupt,
    ExitReason::TripleFault,
    ExitReason::Init,
    ExitReason::Sipi,
    ExitReason::InterruptWindow,
    ExitReason::Cpuid,
    ExitReason::Hlt,
    ExitReason::Vmcall,
    ExitReason::CrAccess,
    ExitReason::Io,
    ExitReason::Rdmsr,
    ExitReason::Wrmsr,
    ExitReason::InvalidGuestState,
    ExitReason::MsrLoading,
    ExitReason::MachineCheck,
    ExitReason::EptViolation,
    ExitReason::EptMisconfig,
    ExitReason::PreemptionTimer,
    ExitReason::Xsetbv,
    ExitReason::Other(0),
];

/// The table row of `reason`.
pub fn row(reason: ExitReason) -> usize {
    match reason {
        ExitReason::Other(_) => REASONS.len() - 1,
        r => REASONS
            .iter()
            .position(|&x| x == r)
            .unwrap_or(REASONS.len() - 1),
    }
}

/// One VM's counters at a moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Exits per reason, in [`REASONS`] order.
    pub counts: [u64; REASONS.len()],
    /// Root-mode ticks per reason: from the exit to the next entry.
    pub root_ticks: [u64; REASONS.len()],
    /// Ticks from each entry to its exit (the guest's share, including the
    /// hardware's transition costs).
    pub guest_ticks: u64,
}

impl Snapshot {
    /// All exits, whatever their reason (saturating).
    pub fn exits(&self) -> u64 {
        self.counts.iter().fold(0, |a, b| a.saturating_add(*b))
    }

    /// Root-mode ticks over all reasons (saturating).
    pub fn root_total(&self) -> u64 {
        self.root_ticks.iter().fold(0, |a, b| a.saturating_add(*b))
    }

    /// Time outside the VM in parts per million of all its time.
    pub fn outside_ppm(&self) -> u64 {
        let root = u128::from(self.root_total());
        let all = root + u128::from(self.guest_ticks);
        if all == 0 {
            return 0;
        }
        // root <= all, so the ratio is at most 1_000_000 and fits.
        u64::try_from(root * 1_000_000 / all).unwrap_or(1_000_000)
    }

    /// The rows with at least one exit: (name, count, root ticks).
    pub fn rows(&self) -> impl Iterator<Item = (&'static str, u64, u64)> + '_ {
        REASONS
            .iter()
            .zip(self.counts.iter().zip(&self.root_ticks))
            .filter(|(_, (count, _))| **count > 0)
            .map(|(reason, (count, ticks))| (reason.name(), *count, *ticks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn every_reason_has_its_own_row_and_unknown_ones_share_the_last() {
        for (i, r) in REASONS.iter().enumerate() {
            assert_eq!(row(*r), i);
        }
        assert_eq!(row(ExitReason::Other(77)), REASONS.len() - 1);
    }

    #[test]
    fn outside_fraction_and_rows() {
        let mut s = Snapshot::default();
        assert_eq!(s.outside_ppm(), 0);
        s.counts[row(ExitReason::Io)] = 10;
        s.root_ticks[row(ExitReason::Io)] = 250;
        s.counts[row(ExitReason::Cpuid)] = 2;
        s.root_ticks[row(ExitReason::Cpuid)] = 50;
        s.guest_ticks = 700;
        assert_eq!(s.exits(), 12);
        assert_eq!(s.outside_ppm(), 300_000);
        let rows: Vec<_> = s.rows().collect();
        assert_eq!(rows, [("cpuid", 2, 50), ("io", 10, 250)]);
        s.guest_ticks = u64::MAX;
        s.root_ticks[0] = u64::MAX;
        assert!(s.outside_ppm() <= 1_000_000);
    }
}
