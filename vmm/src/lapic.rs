//! A virtual local APIC in x2APIC mode (SDM Vol. 3A, chapter 11, x2APIC in
//! 11.12): the registers a guest reaches through MSRs 0x800-0x8FF, the
//! interrupt request/in-service state, the timer (one-shot, periodic and
//! TSC-deadline) and IPIs as values. It is a register-level state machine:
//! time comes in as TSC readings, IPIs go out as [`Ipi`] values the
//! hypervisor delivers, interrupts go in through [`Lapic::raise`].
//!
//! The xAPIC MMIO page is not emulated: a guest must switch its APIC to
//! x2APIC mode (IA32_APIC_BASE bit 10), as CPUID tells it it can.

/// IA32_APIC_BASE (SDM 11.4.4): base 0xFEE00000, BSP (8), x2APIC enable
/// (10), global enable (11).
pub const APIC_BASE_DEFAULT: u64 = 0xfee0_0000;
const BASE_BSP: u64 = 1 << 8;
const BASE_X2APIC: u64 = 1 << 10;
const BASE_ENABLE: u64 = 1 << 11;

/// x2APIC register MSRs (SDM Table 11-6).
pub mod reg {
    pub const ID: u32 = 0x802;
    pub const VERSION: u32 = 0x803;
    pub const TPR: u32 = 0x808;
    pub const PPR: u32 = 0x80a;
    pub const EOI: u32 = 0x80b;
    pub const LDR: u32 = 0x80d;
    pub const SVR: u32 = 0x80f;
    pub const ISR0: u32 = 0x810;
    pub const TMR0: u32 = 0x818;
    pub const IRR0: u32 = 0x820;
    pub const ESR: u32 = 0x828;
    pub const LVT_CMCI: u32 = 0x82f;
    pub const ICR: u32 = 0x830;
    pub const LVT_TIMER: u32 = 0x832;
    pub const LVT_ERROR: u32 = 0x837;
    pub const TIMER_INITIAL: u32 = 0x838;
    pub const TIMER_CURRENT: u32 = 0x839;
    pub const TIMER_DIVIDE: u32 = 0x83e;
    pub const SELF_IPI: u32 = 0x83f;
}

/// IA32_TSC_DEADLINE (SDM 11.5.4.1).
pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// Version 0x14 (an integrated APIC), 6 LVT entries (CMCI to error).
const VERSION: u32 = 0x0005_0014;
const LVT_MASKED: u32 = 1 << 16;
const LVT_COUNT: usize = 7;
/// Timer modes in LVT timer bits 18:17.
const TIMER_PERIODIC: u32 = 1;
const TIMER_TSC_DEADLINE: u32 = 2;
/// ESR bit 5: send illegal vector; bit 6: receive illegal vector.
const ESR_SEND_ILLEGAL: u32 = 1 << 5;
const ESR_RECEIVE_ILLEGAL: u32 = 1 << 6;

/// Who an IPI goes to (ICR destination shorthand, bits 19:18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The vCPU with this x2APIC ID (physical destination mode).
    Apic(u32),
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// What an IPI does (ICR delivery mode, bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Fixed(u8),
    Nmi,
    Init,
    Startup(u8),
}

/// An IPI the guest sent, for the hypervisor to deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    pub destination: Destination,
    pub delivery: Delivery,
}

/// The result of a register write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Done,
    /// #GP: a read-only or reserved register, reserved bits, or the APIC
    /// not in x2APIC mode.
    Fault,
    Send(Ipi),
}

/// One vCPU's local APIC.
#[derive(Clone, Debug)]
pub struct Lapic {
    id: u32,
    base: u64,
    tpr: u32,
    svr: u32,
    esr: u32,
    icr: u64,
    irr: [u64; 4],
    isr: [u64; 4],
    /// LVT CMCI, timer, thermal, performance, LINT0, LINT1, error.
    lvt: [u32; LVT_COUNT],
    timer_initial: u32,
    timer_divide: u32,
    /// TSC at which the armed timer fires next.
    timer_deadline: Option<u64>,
    /// TSC ticks per timer count at divide-by-1.
    tsc_per_count: u64,
}

impl Lapic {
    /// The APIC of vCPU `id` after reset (SDM 11.4.7.1): xAPIC mode,
    /// enabled, software-disabled, every LVT masked.
    pub fn new(id: u32) -> Self {
        Lapic {
            id,
            base: APIC_BASE_DEFAULT | BASE_ENABLE | if id == 0 { BASE_BSP } else { 0 },
            tpr: 0,
            svr: 0xff,
            esr: 0,
            icr: 0,
            irr: [0; 4],
            isr: [0; 4],
            lvt: [LVT_MASKED; LVT_COUNT],
            timer_initial: 0,
            timer_divide: 0,
            timer_deadline: None,
            tsc_per_count: 1,
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn x2apic(&self) -> bool {
        self.base & (BASE_ENABLE | BASE_X2APIC) == BASE_ENABLE | BASE_X2APIC
    }

    pub fn apic_base(&self) -> u64 {
        self.base
    }

    /// WRMSR IA32_APIC_BASE: only the enable bits may change, and only along
    /// the architectural transitions (SDM Figure 11-27: no x2APIC without
    /// the global enable; no x2APIC -> xAPIC without disabling first).
    pub fn set_apic_base(&mut self, value: u64) -> bool {
        let fixed = !(BASE_X2APIC | BASE_ENABLE);
        if value & fixed != self.base & fixed {
            return false;
        }
        let (enable, x2) = (value & BASE_ENABLE != 0, value & BASE_X2APIC != 0);
        if x2 && !enable || self.x2apic() && enable && !x2 {
            return false;
        }
        self.base = value;
        if !enable {
            *self = Lapic {
                base: value,
                ..Lapic::new(self.id)
            };
        }
        true
    }

    /// RDMSR of an x2APIC register; `None` is #GP.
    pub fn read(&self, msr: u32, now: u64) -> Option<u64> {
        if !self.x2apic() {
            return None;
        }
        let value = match msr {
            reg::ID => self.id,
            reg::VERSION => VERSION,
            reg::TPR => self.tpr,
            reg::PPR => self.ppr(),
            reg::LDR => ((self.id >> 4) << 16) | (1 << (self.id & 0xf)),
            reg::SVR => self.svr,
            m if (reg::ISR0..reg::ISR0 + 8).contains(&m) => word(&self.isr, m - reg::ISR0),
            m if (reg::TMR0..reg::TMR0 + 8).contains(&m) => 0,
            m if (reg::IRR0..reg::IRR0 + 8).contains(&m) => word(&self.irr, m - reg::IRR0),
            reg::ESR => self.esr,
            reg::ICR => return Some(self.icr),
            m if (reg::LVT_CMCI..=reg::LVT_ERROR).contains(&m) => *self.lvt.get(lvt_index(m)?)?,
            reg::TIMER_INITIAL => self.timer_initial,
            reg::TIMER_CURRENT => self.current_count(now),
            reg::TIMER_DIVIDE => self.timer_divide,
            _ => return None,
        };
        Some(u64::from(value))
    }

    /// WRMSR of an x2APIC register at TSC `now`.
    pub fn write(&mut self, msr: u32, value: u64, now: u64) -> Write {
        if !self.x2apic() {
            return Write::Fault;
        }
        // Every register but the ICR is 32 bits; writing the upper half is
        // a reserved-bit violation.
        if msr != reg::ICR && value >> 32 != 0 {
            return Write::Fault;
        }
        let v = value as u32;
        match msr {
            reg::TPR if v <= 0xff => self.tpr = v,
            reg::EOI if v == 0 => self.eoi(),
            reg::SVR if v & !0x11ff == 0 => self.svr = v,
            reg::ESR if v == 0 => self.esr = 0,
            reg::ICR => return self.icr(value),
            reg::LVT_TIMER => {
                self.lvt[1] = v & 0x0007_10ff;
                self.arm_timer(now);
            }
            m if (reg::LVT_CMCI..=reg::LVT_ERROR).contains(&m) => {
                match lvt_index(m).and_then(|i| self.lvt.get_mut(i)) {
                    Some(slot) => *slot = v & 0x0001_17ff,
                    None => return Write::Fault,
                }
            }
            reg::TIMER_INITIAL => {
                self.timer_initial = v;
                self.arm_timer(now);
            }
            reg::TIMER_DIVIDE if v & !0xb == 0 => self.timer_divide = v,
            reg::SELF_IPI if v <= 0xff => {
                self.raise(v as u8);
            }
            _ => return Write::Fault,
        }
        Write::Done
    }

    /// An ICR write (SDM 11.12.9): one 64-bit write sends the IPI.
    fn icr(&mut self, value: u64) -> Write {
        let vector = value as u8;
        let mode = (value >> 8) & 0x7;
        let shorthand = (value >> 18) & 0x3;
        // Logical destination mode (bit 11) is not offered: Atoll's MADT
        // gives every vCPU a physical x2APIC ID.
        // Reserved: delivery status (12), 13, 16-17, 20-31 (SDM Figure
        // 11-28); logical destination mode (11) is not offered either.
        if value & (0xfff3_3000 | 1 << 11) != 0 {
            return Write::Fault;
        }
        self.icr = value;
        let destination = match shorthand {
            0 => Destination::Apic((value >> 32) as u32),
            1 => Destination::SelfOnly,
            2 => Destination::AllIncludingSelf,
            _ => Destination::AllExcludingSelf,
        };
        let delivery = match mode {
            0 if vector >= 16 => Delivery::Fixed(vector),
            0 => {
                self.esr |= ESR_SEND_ILLEGAL;
                return Write::Done;
            }
            4 => Delivery::Nmi,
            5 if value & (1 << 14) == 0 => return Write::Done, // INIT de-assert
            5 => Delivery::Init,
            6 => Delivery::Startup(vector),
            _ => return Write::Fault,
        };
        Write::Send(Ipi {
            destination,
            delivery,
        })
    }

    /// Requests interrupt `vector` (a fixed IPI, the timer). Vectors 0-15
    /// are illegal (SDM 11.5.3): counted in the ESR, dropped.
    pub fn raise(&mut self, vector: u8) {
        if vector < 16 {
            self.esr |= ESR_RECEIVE_ILLEGAL;
            return;
        }
        set(&mut self.irr, vector);
    }

    /// The highest-priority requested vector that may be delivered now
    /// (its priority class above the processor priority, SDM 11.8.3.1),
    /// if the APIC is software-enabled.
    pub fn pending(&self) -> Option<u8> {
        if self.svr & 0x100 == 0 {
            return None;
        }
        let vector = highest(&self.irr)?;
        (u32::from(vector) >> 4 > self.ppr() >> 4).then_some(vector)
    }

    /// The guest took `vector` (it was injected): IRR -> ISR.
    pub fn acknowledge(&mut self, vector: u8) {
        clear(&mut self.irr, vector);
        set(&mut self.isr, vector);
    }

    fn eoi(&mut self) {
        if let Some(vector) = highest(&self.isr) {
            clear(&mut self.isr, vector);
        }
    }

    fn ppr(&self) -> u32 {
        let isr_class = highest(&self.isr).map_or(0, |v| u32::from(v) & 0xf0);
        if self.tpr & 0xf0 >= isr_class {
            self.tpr & 0xff
        } else {
            isr_class
        }
    }

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

    fn arm_timer(&mut self, now: u64) {
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

    fn current_count(&self, now: u64) -> u32 {
        match (self.timer_mode(), self.timer_deadline) {
            (TIMER_TSC_DEADLINE, _) | (_, None) => 0,
            (_, Some(deadline)) => {
                let left = deadline.saturating_sub(now) / self.ticks_per_count();
                left.min(u64::from(u32::MAX)) as u32
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
            self.raise(lvt as u8);
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

/// LVT register -> index in `lvt`: CMCI 0x82F, timer 0x832 .. error 0x837.
fn lvt_index(msr: u32) -> Option<usize> {
    match msr {
        reg::LVT_CMCI => Some(0),
        0x832..=0x837 => Some((msr - 0x831) as usize),
        _ => None,
    }
}

/// 32-bit word `n` (0..8) of a 256-bit vector set.
fn word(bits: &[u64; 4], n: u32) -> u32 {
    let q = bits.get((n / 2) as usize).copied().unwrap_or(0);
    (q >> (32 * (n % 2))) as u32
}

fn set(bits: &mut [u64; 4], vector: u8) {
    if let Some(q) = bits.get_mut(usize::from(vector >> 6)) {
        *q |= 1 << (vector & 63);
    }
}

fn clear(bits: &mut [u64; 4], vector: u8) {
    if let Some(q) = bits.get_mut(usize::from(vector >> 6)) {
        *q &= !(1 << (vector & 63));
    }
}

fn highest(bits: &[u64; 4]) -> Option<u8> {
    (0..4usize).rev().find_map(|i| {
        let q = *bits.get(i)?;
        (q != 0).then(|| (i as u8) * 64 + (63 - q.leading_zeros() as u8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x2(id: u32) -> Lapic {
        let mut l = Lapic::new(id);
        assert!(l.set_apic_base(
            APIC_BASE_DEFAULT | BASE_ENABLE | BASE_X2APIC | if id == 0 { BASE_BSP } else { 0 }
        ));
        assert_eq!(l.write(reg::SVR, 0x1ff, 0), Write::Done);
        l
    }

    #[test]
    fn registers_need_x2apic_mode_and_follow_their_access_rules() {
        let mut l = Lapic::new(3);
        assert_eq!(l.read(reg::ID, 0), None, "xAPIC mode: MSRs #GP");
        assert_eq!(l.write(reg::TPR, 0, 0), Write::Fault);
        assert!(
            !l.set_apic_base(APIC_BASE_DEFAULT | BASE_X2APIC),
            "x2APIC needs EN"
        );
        assert!(
            !l.set_apic_base(0x1234_0000 | BASE_ENABLE | BASE_X2APIC),
            "base is fixed"
        );
        let mut l = x2(3);
        assert_eq!(l.read(reg::ID, 0), Some(3));
        assert_eq!(l.read(reg::LDR, 0), Some(1 << 3));
        assert_eq!(l.write(reg::ID, 5, 0), Write::Fault, "read-only");
        assert_eq!(l.read(reg::EOI, 0), None, "write-only");
        assert_eq!(l.write(reg::TPR, 1 << 32, 0), Write::Fault);
        assert_eq!(l.write(reg::EOI, 1, 0), Write::Fault, "EOI takes 0 only");
        assert_eq!(l.read(0x8ff, 0), None);
        assert_eq!(l.read(0x831, 0), None, "reserved");
        assert_eq!(l.write(0x831, 0, 0), Write::Fault);
    }

    #[test]
    fn priorities_decide_delivery_and_eoi_retires_the_highest() {
        let mut l = x2(0);
        l.raise(0x31);
        l.raise(0x52);
        assert_eq!(l.pending(), Some(0x52));
        l.acknowledge(0x52);
        assert_eq!(l.pending(), None, "0x31 is below the in-service class");
        l.write(reg::EOI, 0, 0);
        assert_eq!(l.pending(), Some(0x31));
        l.write(reg::TPR, 0x40, 0);
        assert_eq!(l.pending(), None, "TPR masks class 3");
        l.raise(5);
        assert_eq!(l.read(reg::ESR, 0), Some(u64::from(ESR_RECEIVE_ILLEGAL)));
        let mut off = x2(0);
        off.write(reg::SVR, 0xff, 0);
        off.raise(0x40);
        assert_eq!(off.pending(), None, "software-disabled APIC");
    }

    #[test]
    fn icr_writes_become_ipis() {
        let mut l = x2(0);
        let send = |l: &mut Lapic, v: u64| l.write(reg::ICR, v, 0);
        assert_eq!(
            send(&mut l, 2 << 32 | 0x40),
            Write::Send(Ipi {
                destination: Destination::Apic(2),
                delivery: Delivery::Fixed(0x40)
            })
        );
        assert_eq!(
            send(&mut l, 1 << 32 | 5 << 8 | 1 << 14),
            Write::Send(Ipi {
                destination: Destination::Apic(1),
                delivery: Delivery::Init
            })
        );
        assert_eq!(
            send(&mut l, 1 << 32 | 5 << 8 | 1 << 15),
            Write::Done,
            "INIT de-assert"
        );
        assert_eq!(
            send(&mut l, 1 << 32 | 6 << 8 | 0x9a),
            Write::Send(Ipi {
                destination: Destination::Apic(1),
                delivery: Delivery::Startup(0x9a)
            })
        );
        assert_eq!(
            send(&mut l, 3 << 18 | 0x41),
            Write::Send(Ipi {
                destination: Destination::AllExcludingSelf,
                delivery: Delivery::Fixed(0x41)
            })
        );
        assert_eq!(send(&mut l, 1 << 11 | 0x40), Write::Fault, "logical mode");
        assert_eq!(send(&mut l, 1 << 16 | 0x40), Write::Fault, "reserved bit");
        assert_eq!(send(&mut l, 7 << 8), Write::Fault, "reserved delivery mode");
        assert_eq!(send(&mut l, 3), Write::Done, "illegal vector: ESR");
        assert_eq!(l.read(reg::ESR, 0), Some(u64::from(ESR_SEND_ILLEGAL)));
        assert_eq!(l.write(reg::SELF_IPI, 0x50, 0), Write::Done);
        assert_eq!(l.pending(), Some(0x50));
    }

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

    proptest::proptest! {
        #[test]
        fn random_register_traffic_never_panics(
            ops in proptest::collection::vec((0x800u32..0x840, proptest::prelude::any::<u64>(), proptest::prelude::any::<bool>(), 0u64..1 << 40), 0..200)
        ) {
            let mut l = x2(1);
            for (msr, value, write, now) in ops {
                if write {
                    let _ = l.write(msr, value, now);
                } else {
                    let _ = l.read(msr, now);
                }
                l.tick(now);
                if let Some(v) = l.pending() {
                    l.acknowledge(v);
                }
            }
        }
    }
}
