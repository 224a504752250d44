//! The APIC timer (SDM 11.5.4): one-shot, periodic and TSC-deadline
//! modes, on the caller's TSC readings.
#![deny(missing_docs)]

use super::Lapic;
use super::registers::LVT_MASKED;
use crate::bits::low_u8;

/// IA32_TSC_DEADLINE (SDM 11.5.4.1).
pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// Timer modes in LVT timer bits 18:17.
const TIMER_PERIODIC: u32 = 1;
const TIMER_TSC_DEADLINE: u32 = 2;

impl Lapic {
    /// Sets the TSC ticks per timer count at divide-by-1: the virtual APIC
    /// timer's clock (advertised in CPUID 0x40000010).
    pub fn set_timer_clock(&mut self, tsc_per_count: u64) {
        self.tsc_per_count = tsc_per_count.max(1);
    }

    fn timer_mode(&self) -> u32 {
        (self.lvt[1] >> 17) & 0x3
    }

    /// Divide configuration (SDM Figure 11-10): bits 3, 1:0 -> 2^(n+1), 7 -> 1.
    fn divisor(&self) -> u64 {
        let n = ((self.timer_divide >> 1) & 0x4) | (self.timer_divide & 0x3);
        if n == 7 { 1 } else { 2 << n }
    }

    fn ticks_per_count(&self) -> u64 {
        self.tsc_per_count.saturating_mul(self.divisor())
    }

    pub(super) fn arm_timer(&mut self, now: u64) {
        self.timer_deadline = match self.timer_mode() {
            TIMER_TSC_DEADLINE => self.timer_deadline.filter(|_| false),
            _ if self.timer_initial == 0 => None,
            _ => Some(now.saturating_add(u64::from(self.timer_initial) * self.ticks_per_count())),
        };
    }

    /// WRMSR IA32_TSC_DEADLINE: arms (or, with 0, disarms) the timer in
    /// TSC-deadline mode; ignored in the other modes (SDM 11.5.4.1).
    pub fn set_tsc_deadline(&mut self, deadline: u64) {
        if self.timer_mode() == TIMER_TSC_DEADLINE {
            self.timer_deadline = (deadline != 0).then_some(deadline);
        }
    }

    /// RDMSR IA32_TSC_DEADLINE.
    pub fn tsc_deadline(&self) -> u64 {
        match self.timer_mode() {
            TIMER_TSC_DEADLINE => self.timer_deadline.unwrap_or(0),
            _ => 0,
        }
    }

    pub(super) fn current_count(&self, now: u64) -> u32 {
        match (self.timer_mode(), self.timer_deadline) {
            (TIMER_TSC_DEADLINE, _) | (_, None) => 0,
            (_, Some(deadline)) => {
                let left = deadline.saturating_sub(now) / self.ticks_per_count();
                u32::try_from(left).unwrap_or(u32::MAX)
            }
        }
    }

    /// When the timer fires next (TSC), if armed.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timer_deadline
    }

    /// Advances the timer to TSC `now`: a due timer raises its vector
    /// (unless masked) and re-arms if periodic.
    pub fn tick(&mut self, now: u64) {
        let Some(deadline) = self.timer_deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        let lvt = self.lvt[1];
        if lvt & LVT_MASKED == 0 {
            self.raise(low_u8(lvt.into()));
        }
        self.timer_deadline = match self.timer_mode() {
            TIMER_PERIODIC if self.timer_initial != 0 => {
                let period = u64::from(self.timer_initial) * self.ticks_per_count();
                // Skip whole missed periods rather than firing a burst.
                let missed = (now - deadline) / period.max(1);
                Some(deadline.saturating_add(period.saturating_mul(missed + 1)))
            }
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_apics::x2;
    use super::super::*;
    use super::*;

    #[test]
    fn one_shot_periodic_and_deadline_timers() {
        let mut l = x2(0);
        l.set_timer_clock(10);
        l.write(reg::TIMER_DIVIDE, 0xb, 0); // divide by 1
        l.write(reg::LVT_TIMER, 0x60, 0);
        l.write(reg::TIMER_INITIAL, 100, 1000);
        assert_eq!(l.next_deadline(), Some(2000));
        assert_eq!(l.read(reg::TIMER_CURRENT, 1500), Some(50));
        l.tick(1999);
        assert_eq!(l.pending(), None);
        l.tick(2000);
        assert_eq!(l.pending(), Some(0x60));
        assert_eq!(l.next_deadline(), None, "one-shot");
        // Periodic, divide by 2: period 2000 ticks; a late tick skips
        // missed periods.
        l.write(reg::TIMER_DIVIDE, 0, 0);
        l.write(reg::LVT_TIMER, 1 << 17 | 0x61, 0);
        l.write(reg::TIMER_INITIAL, 100, 0);
        l.tick(7000);
        assert_eq!(l.next_deadline(), Some(8000));
        // TSC-deadline mode ignores the initial count.
        l.write(reg::LVT_TIMER, 2 << 17 | 0x62, 0);
        assert_eq!(l.next_deadline(), None);
        l.set_tsc_deadline(9000);
        assert_eq!(l.tsc_deadline(), 9000);
        l.tick(9000);
        assert!(
            l.read(reg::IRR0 + 3, 0).unwrap() & (1 << 2) != 0,
            "vector 0x62 requested"
        );
        // A masked timer fires silently.
        let mut m = x2(0);
        m.write(reg::LVT_TIMER, LVT_MASKED as u64 | 0x63, 0);
        m.write(reg::TIMER_INITIAL, 1, 0);
        m.tick(u64::MAX);
        assert_eq!(m.pending(), None);
    }
}
