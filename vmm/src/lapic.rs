//! A virtual local APIC (SDM Vol. 3A, chapter 11): the registers a guest
//! reaches through MSRs 0x800-0x8FF in x2APIC mode (11.12) or through the
//! 4 KiB page at IA32_APIC_BASE in xAPIC mode (11.4.1, Table 11-1), the
//! interrupt request/in-service/trigger-mode state, the timer (one-shot,
//! periodic and TSC-deadline) and IPIs as values. It is a register-level
//! state machine: time comes in as TSC readings, IPIs go out as [`Ipi`]
//! values the hypervisor delivers, interrupts go in through
//! [`Lapic::raise`] / [`Lapic::raise_level`].
//!
//! Both modes share one register file: xAPIC offset 0x10 * n is x2APIC MSR
//! 0x800 + n (Table 11-1 vs. Table 11-6). Where they differ:
//!
//! | register | xAPIC (MMIO) | x2APIC (MSR) |
//! |---|---|---|
//! | ID | ID in bits 31:24, writes ignored | 32-bit ID, read-only |
//! | LDR | writable, bits 31:24 | derived from the ID (11.12.10.2), read-only |
//! | DFR (0xE0) | flat 0xFFFFFFFF / cluster 0x0FFFFFFF | does not exist |
//! | ICR | low half (0x300) sends, high half (0x310) holds the destination in bits 31:24; delivery status reads 0 | one 64-bit write sends |
//! | SELF IPI | does not exist | 0x83F |
//! | bad values | reserved bits dropped, writes to read-only registers ignored | #GP |
//!
//! Linux 6.1 without interrupt remapping keeps xAPIC mode and the flat
//! logical model, so logical destinations ([`Destination::Logical`]) are
//! decoded in both modes and [`Recipient::accepts`] tells which APICs a
//! message reaches.
//!
//! Trigger mode: interrupts raised with [`Lapic::raise_level`] set their
//! TMR bit; the EOI that retires such a vector answers [`Write::Eoi`] so
//! the caller can forward it to the IOAPIC (SDM 11.8.5: EOIs of
//! level-triggered interrupts are broadcast to the I/O APICs). Edge
//! interrupts (every IPI, the timer, ISA IRQs) end silently.

/// IA32_APIC_BASE (SDM 11.4.4): base 0xFEE00000, BSP (8), x2APIC enable
/// (10), global enable (11).
pub const APIC_BASE_DEFAULT: u64 = 0xfee0_0000;
const BASE_BSP: u64 = 1 << 8;
const BASE_X2APIC: u64 = 1 << 10;
const BASE_ENABLE: u64 = 1 << 11;

/// x2APIC register MSRs (SDM Table 11-6); the xAPIC page has the same
/// register at offset `(msr - 0x800) * 0x10`.
pub mod reg {
    pub const ID: u32 = 0x802;
    pub const VERSION: u32 = 0x803;
    pub const TPR: u32 = 0x808;
    pub const PPR: u32 = 0x80a;
    pub const EOI: u32 = 0x80b;
    pub const LDR: u32 = 0x80d;
    /// xAPIC only (offset 0xE0): the destination format register.
    pub const DFR: u32 = 0x80e;
    pub const SVR: u32 = 0x80f;
    pub const ISR0: u32 = 0x810;
    pub const TMR0: u32 = 0x818;
    pub const IRR0: u32 = 0x820;
    pub const ESR: u32 = 0x828;
    pub const LVT_CMCI: u32 = 0x82f;
    pub const ICR: u32 = 0x830;
    /// xAPIC only (offset 0x310): the ICR's upper half.
    pub const ICR_HIGH: u32 = 0x831;
    pub const LVT_TIMER: u32 = 0x832;
    pub const LVT_ERROR: u32 = 0x837;
    pub const TIMER_INITIAL: u32 = 0x838;
    pub const TIMER_CURRENT: u32 = 0x839;
    pub const TIMER_DIVIDE: u32 = 0x83e;
    pub const SELF_IPI: u32 = 0x83f;
}

/// xAPIC register offsets in the MMIO page (SDM Table 11-1) that differ
/// from a plain `0x10 * n` reading of [`reg`] in name only.
pub mod offset {
    pub const ID: u32 = 0x20;
    pub const TPR: u32 = 0x80;
    pub const EOI: u32 = 0xb0;
    pub const LDR: u32 = 0xd0;
    pub const DFR: u32 = 0xe0;
    pub const SVR: u32 = 0xf0;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
}

/// IA32_TSC_DEADLINE (SDM 11.5.4.1).
pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// Version 0x14 (an integrated APIC), 6 LVT entries (CMCI to error); bit 24
/// clear: no EOI-broadcast suppression, so every level EOI reaches the
/// IOAPIC.
const VERSION: u32 = 0x0005_0014;
const LVT_MASKED: u32 = 1 << 16;
const LVT_COUNT: usize = 7;
/// Timer modes in LVT timer bits 18:17.
const TIMER_PERIODIC: u32 = 1;
const TIMER_TSC_DEADLINE: u32 = 2;
/// ESR bit 5: send illegal vector; bit 6: receive illegal vector.
const ESR_SEND_ILLEGAL: u32 = 1 << 5;
const ESR_RECEIVE_ILLEGAL: u32 = 1 << 6;
/// DFR after reset: the flat model (SDM 11.6.2.2, Figure 11-14); bits 27:0
/// are reserved and read as ones.
const DFR_FLAT: u32 = 0xffff_ffff;
const DFR_RESERVED: u32 = 0x0fff_ffff;
/// ICR bit 11: logical destination mode.
const ICR_LOGICAL: u64 = 1 << 11;
/// The xAPIC register page's size.
pub const XAPIC_PAGE: u32 = 0x1000;

/// Who an IPI or an interrupt message goes to: the ICR destination
/// shorthand (bits 19:18), or with no shorthand the destination field in
/// physical or logical mode (bit 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The APIC with this ID (physical destination mode); 0xFF (xAPIC) or
    /// 0xFFFFFFFF (x2APIC) is a broadcast.
    Apic(u32),
    /// The APICs whose logical ID matches (logical destination mode):
    /// x2APIC cluster << 16 | member bitmask (SDM 11.12.10.2); xAPIC an
    /// 8-bit MDA matched against LDR per the DFR model (11.6.2.2).
    Logical(u32),
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
    /// not in x2APIC mode. (MMIO writes never fault: the xAPIC ignores
    /// what it does not accept.)
    Fault,
    Send(Ipi),
    /// An EOI retired this level-triggered vector: the caller forwards it
    /// to the IOAPIC(s) (SDM 11.8.5), which clear their remote IRR.
    Eoi(u8),
}

/// Which interface the APIC answers on (IA32_APIC_BASE EN and EXTD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Globally disabled: it takes no interrupts and decodes nothing.
    Disabled,
    XApic,
    X2Apic,
}

/// How an APIC recognises messages addressed to it: its mode, ID and
/// logical ID. A small copyable value, so the owner of a vCPU can publish
/// it (as [`Recipient::to_bits`]) for the CPUs that route IPIs and IOAPIC
/// messages to that vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub mode: Mode,
    pub id: u32,
    /// xAPIC LDR bits 31:24 (the logical APIC ID).
    pub logical_id: u8,
    /// xAPIC DFR model: cluster (0x0) rather than flat (0xF).
    pub cluster: bool,
}

impl Recipient {
    /// Whether a message to `dest` reaches this APIC; `from_self` says the
    /// sender is this APIC (for the shorthands; an IOAPIC passes false).
    pub fn accepts(&self, dest: Destination, from_self: bool) -> bool {
        match (self.mode, dest) {
            (Mode::Disabled, _) => false,
            (_, Destination::SelfOnly) => from_self,
            (_, Destination::AllIncludingSelf) => true,
            (_, Destination::AllExcludingSelf) => !from_self,
            (Mode::X2Apic, Destination::Apic(d)) => d == self.id || d == u32::MAX,
            (Mode::XApic, Destination::Apic(d)) => d == 0xff || d == self.id,
            (Mode::X2Apic, Destination::Logical(d)) => {
                // SDM 11.12.10.2: cluster ID in 31:16, one bit per member
                // in 15:0; logical x2APIC ID = (ID >> 4) << 16 | 1 << (ID & 0xF).
                let member = 1u32 << (self.id & 0xf);
                d == u32::MAX || (d >> 16 == self.id >> 4 && d & 0xffff & member != 0)
            }
            (Mode::XApic, Destination::Logical(d)) => {
                let Ok(mda) = u8::try_from(d) else {
                    return false;
                };
                if self.cluster {
                    // SDM 11.6.2.2 cluster model: MDA 7:4 names the cluster
                    // (0xF: all clusters), 3:0 the members.
                    let same = mda >> 4 == 0xf || mda >> 4 == self.logical_id >> 4;
                    same && mda & self.logical_id & 0xf != 0
                } else {
                    // Flat model: any common bit of MDA and LDR.
                    mda & self.logical_id != 0
                }
            }
        }
    }

    /// Packs the recipient into 64 bits (ID 31:0, logical ID 39:32,
    /// cluster model 40, mode 42:41), e.g. for an atomic.
    pub fn to_bits(self) -> u64 {
        let mode = match self.mode {
            Mode::Disabled => 0u64,
            Mode::XApic => 1,
            Mode::X2Apic => 2,
        };
        u64::from(self.id)
            | u64::from(self.logical_id) << 32
            | u64::from(self.cluster) << 40
            | mode << 41
    }

    /// The inverse of [`Recipient::to_bits`]; 0 is a disabled APIC.
    pub fn from_bits(bits: u64) -> Self {
        Recipient {
            mode: match (bits >> 41) & 3 {
                1 => Mode::XApic,
                2 => Mode::X2Apic,
                _ => Mode::Disabled,
            },
            id: bits as u32,
            logical_id: (bits >> 32) as u8,
            cluster: bits & 1 << 40 != 0,
        }
    }
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
    /// xAPIC logical destination and destination format registers.
    ldr: u32,
    dfr: u32,
    irr: [u64; 4],
    isr: [u64; 4],
    /// Trigger mode of each requested/in-service vector: set = level.
    tmr: [u64; 4],
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
    /// enabled, software-disabled, every LVT masked, LDR 0, DFR flat.
    pub fn new(id: u32) -> Self {
        Lapic {
            id,
            base: APIC_BASE_DEFAULT | BASE_ENABLE | if id == 0 { BASE_BSP } else { 0 },
            tpr: 0,
            svr: 0xff,
            esr: 0,
            icr: 0,
            ldr: 0,
            dfr: DFR_FLAT,
            irr: [0; 4],
            isr: [0; 4],
            tmr: [0; 4],
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

    pub fn mode(&self) -> Mode {
        if self.base & BASE_ENABLE == 0 {
            Mode::Disabled
        } else if self.base & BASE_X2APIC != 0 {
            Mode::X2Apic
        } else {
            Mode::XApic
        }
    }

    /// How this APIC recognises message destinations, now.
    pub fn recipient(&self) -> Recipient {
        Recipient {
            mode: self.mode(),
            id: self.id,
            logical_id: (self.ldr >> 24) as u8,
            cluster: self.dfr >> 28 == 0,
        }
    }

    /// Whether a message to `dest` reaches this APIC (see
    /// [`Recipient::accepts`]).
    pub fn accepts(&self, dest: Destination, from_self: bool) -> bool {
        self.recipient().accepts(dest, from_self)
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
            reg::LDR => x2apic_ldr(self.id),
            reg::ICR => return Some(self.icr),
            _ => self.read_common(msr, now)?,
        };
        Some(u64::from(value))
    }

    /// The registers both modes read alike; `None`: none such.
    fn read_common(&self, msr: u32, now: u64) -> Option<u32> {
        let value = match msr {
            reg::VERSION => VERSION,
            reg::TPR => self.tpr,
            reg::PPR => self.ppr(),
            reg::SVR => self.svr,
            m if (reg::ISR0..reg::ISR0 + 8).contains(&m) => word(&self.isr, m - reg::ISR0),
            m if (reg::TMR0..reg::TMR0 + 8).contains(&m) => word(&self.tmr, m - reg::TMR0),
            m if (reg::IRR0..reg::IRR0 + 8).contains(&m) => word(&self.irr, m - reg::IRR0),
            reg::ESR => self.esr,
            m if (reg::LVT_CMCI..=reg::LVT_ERROR).contains(&m) => *self.lvt.get(lvt_index(m)?)?,
            reg::TIMER_INITIAL => self.timer_initial,
            reg::TIMER_CURRENT => self.current_count(now),
            reg::TIMER_DIVIDE => self.timer_divide,
            _ => return None,
        };
        Some(value)
    }

    /// Whether the xAPIC page decodes accesses: only while the APIC is
    /// globally enabled and in xAPIC mode (SDM 11.4.3; 11.12.1.2: in
    /// x2APIC mode the MMIO interface behaves like a globally disabled
    /// xAPIC).
    pub fn mmio_decoded(&self) -> bool {
        self.mode() == Mode::XApic
    }

    /// A 32-bit read at `offset` in the xAPIC page at TSC `now`. `None`:
    /// the page is not decoded (x2APIC mode or globally disabled), so the
    /// access goes nowhere and the caller reads all ones, as from an
    /// unclaimed bus. Registers sit on 16-byte boundaries (SDM 11.4.1);
    /// other offsets, reserved and write-only registers read 0.
    pub fn mmio_read(&self, offset: u32, now: u64) -> Option<u32> {
        if !self.mmio_decoded() {
            return None;
        }
        let Some(msr) = mmio_register(offset) else {
            return Some(0);
        };
        let value = match msr {
            reg::ID => (self.id & 0xff) << 24,
            reg::LDR => self.ldr,
            reg::DFR => self.dfr,
            // Delivery status (bit 12) reads 0: an IPI is sent at once.
            reg::ICR => self.icr as u32 & !(1 << 12),
            reg::ICR_HIGH => (self.icr >> 32) as u32,
            _ => self.read_common(msr, now).unwrap_or(0),
        };
        Some(value)
    }

    /// A 32-bit write at `offset` in the xAPIC page at TSC `now`. Never
    /// [`Write::Fault`]: the xAPIC ignores writes to read-only and
    /// reserved registers, drops reserved bits, and when the page is not
    /// decoded the write goes nowhere.
    pub fn mmio_write(&mut self, offset: u32, value: u32, now: u64) -> Write {
        if !self.mmio_decoded() {
            return Write::Done;
        }
        let Some(msr) = mmio_register(offset) else {
            return Write::Done;
        };
        match msr {
            // The xAPIC ID is writable on some processors; Atoll keeps the
            // ID its MADT gives (software must not rely on changing it,
            // SDM 11.4.6).
            reg::ID => Write::Done,
            reg::LDR => {
                self.ldr = value & 0xff00_0000;
                Write::Done
            }
            reg::DFR => {
                self.dfr = value | DFR_RESERVED;
                Write::Done
            }
            // Any value ends the highest in-service interrupt (11.8.5).
            reg::EOI => self.eoi(),
            reg::ICR => {
                self.icr = (self.icr & !0xffff_ffff) | u64::from(value);
                self.send(self.icr, false)
            }
            reg::ICR_HIGH => {
                self.icr = (self.icr & 0xffff_ffff) | u64::from(value & 0xff00_0000) << 32;
                Write::Done
            }
            // No self-IPI register in xAPIC mode (it is x2APIC only).
            reg::SELF_IPI => Write::Done,
            reg::TPR => self.write_common(msr, value & 0xff, now),
            reg::SVR => self.write_common(msr, value & 0x11ff, now),
            reg::ESR => self.write_common(msr, 0, now),
            reg::TIMER_DIVIDE => self.write_common(msr, value & 0xb, now),
            _ => match self.write_common(msr, value, now) {
                Write::Fault => Write::Done,
                w => w,
            },
        }
    }

    /// WRMSR of an x2APIC register at TSC `now`.
    pub fn write(&mut self, msr: u32, value: u64, now: u64) -> Write {
        if !self.x2apic() {
            return Write::Fault;
        }
        // Every register but the ICR is 32 bits; writing the upper half is
        // a reserved-bit violation.
        if msr == reg::ICR {
            return self.send(value, true);
        }
        if value >> 32 != 0 {
            return Write::Fault;
        }
        let v = value as u32;
        match msr {
            reg::TPR if v > 0xff => Write::Fault,
            reg::SVR if v & !0x11ff != 0 => Write::Fault,
            reg::ESR if v != 0 => Write::Fault,
            reg::EOI if v != 0 => Write::Fault,
            reg::TIMER_DIVIDE if v & !0xb != 0 => Write::Fault,
            reg::SELF_IPI if v <= 0xff => {
                self.raise(v as u8);
                Write::Done
            }
            reg::EOI => self.eoi(),
            _ => self.write_common(msr, v, now),
        }
    }

    /// The writes both modes share, with the value already checked or
    /// masked; `Fault` for registers that are not writable.
    fn write_common(&mut self, msr: u32, v: u32, now: u64) -> Write {
        match msr {
            reg::TPR => self.tpr = v,
            reg::SVR => self.svr = v,
            reg::ESR => self.esr = 0,
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
            reg::TIMER_DIVIDE => self.timer_divide = v,
            _ => return Write::Fault,
        }
        Write::Done
    }

    /// An ICR write that sends (SDM 11.6.1, 11.12.9): in x2APIC mode one
    /// 64-bit write with a 32-bit destination in bits 63:32; in xAPIC mode
    /// the low-half write, with the 8-bit destination in bits 63:56.
    fn send(&mut self, value: u64, x2apic: bool) -> Write {
        let vector = value as u8;
        let mode = (value >> 8) & 0x7;
        let shorthand = (value >> 18) & 0x3;
        // Reserved in x2APIC mode: delivery status (12), 13, 16-17, 20-31
        // (SDM Figure 11-28). The xAPIC ignores them.
        if x2apic {
            if value & 0xfff3_3000 != 0 {
                return Write::Fault;
            }
            self.icr = value;
        }
        let field = if x2apic {
            (value >> 32) as u32
        } else {
            (value >> 56) as u32
        };
        let destination = match shorthand {
            0 if value & ICR_LOGICAL != 0 => Destination::Logical(field),
            0 => Destination::Apic(field),
            1 => Destination::SelfOnly,
            2 => Destination::AllIncludingSelf,
            _ => Destination::AllExcludingSelf,
        };
        let delivery = match mode {
            // Lowest priority (xAPIC only; reserved for x2APIC IPIs here)
            // is delivered as fixed to every target: Atoll has no bus
            // arbitration, and Linux 6.1 no longer asks for it.
            0 | 1 if mode == 0 || !x2apic => {
                if vector < 16 {
                    self.esr |= ESR_SEND_ILLEGAL;
                    return Write::Done;
                }
                Delivery::Fixed(vector)
            }
            4 => Delivery::Nmi,
            5 if value & (1 << 14) == 0 => return Write::Done, // INIT de-assert
            5 => Delivery::Init,
            6 => Delivery::Startup(vector),
            // SMI and the reserved modes: x2APIC #GP, xAPIC nothing.
            _ if x2apic => return Write::Fault,
            _ => return Write::Done,
        };
        Write::Send(Ipi {
            destination,
            delivery,
        })
    }

    /// Requests edge-triggered interrupt `vector` (a fixed IPI, the timer,
    /// an edge IOAPIC pin). Vectors 0-15 are illegal (SDM 11.5.3):
    /// counted in the ESR, dropped.
    pub fn raise(&mut self, vector: u8) {
        self.request(vector, false);
    }

    /// Requests level-triggered interrupt `vector` (an IOAPIC pin in level
    /// mode): its TMR bit is set, so its EOI is reported as
    /// [`Write::Eoi`].
    pub fn raise_level(&mut self, vector: u8) {
        self.request(vector, true);
    }

    fn request(&mut self, vector: u8, level: bool) {
        if vector < 16 {
            self.esr |= ESR_RECEIVE_ILLEGAL;
            return;
        }
        set(&mut self.irr, vector);
        // SDM 11.8.4: TMR is set for level, cleared for edge on acceptance.
        if level {
            set(&mut self.tmr, vector);
        } else {
            clear(&mut self.tmr, vector);
        }
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

    /// Ends the highest in-service interrupt; a level-triggered one is
    /// reported for the IOAPIC's remote IRR (SDM 11.8.5).
    fn eoi(&mut self) -> Write {
        let Some(vector) = highest(&self.isr) else {
            return Write::Done;
        };
        clear(&mut self.isr, vector);
        if bit(&self.tmr, vector) {
            clear(&mut self.tmr, vector);
            return Write::Eoi(vector);
        }
        Write::Done
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

/// The x2APIC logical ID of `id` (SDM 11.12.10.2): cluster ID << 16 | a
/// bit for the member.
fn x2apic_ldr(id: u32) -> u32 {
    ((id >> 4) << 16) | (1 << (id & 0xf))
}

/// xAPIC page offset -> the register's x2APIC MSR number; `None` for
/// offsets that are not a register's first byte or lie outside the page.
fn mmio_register(offset: u32) -> Option<u32> {
    (offset.is_multiple_of(0x10) && offset < XAPIC_PAGE).then(|| 0x800 + offset / 0x10)
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

fn bit(bits: &[u64; 4], vector: u8) -> bool {
    bits.get(usize::from(vector >> 6))
        .is_some_and(|q| q & (1 << (vector & 63)) != 0)
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
        assert_eq!(
            send(&mut l, 0x0001_0004 << 32 | 1 << 11 | 0x40),
            Write::Send(Ipi {
                destination: Destination::Logical(0x0001_0004),
                delivery: Delivery::Fixed(0x40)
            }),
            "logical mode"
        );
        assert_eq!(send(&mut l, 1 << 8 | 0x40), Write::Fault, "lowest priority");
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

    /// An APIC in xAPIC mode, software-enabled through the page.
    fn xapic(id: u32) -> Lapic {
        let mut l = Lapic::new(id);
        assert_eq!(l.mmio_write(offset::SVR, 0x1ff, 0), Write::Done);
        l
    }

    #[test]
    fn xapic_page_registers() {
        let mut l = xapic(3);
        assert_eq!(l.mode(), Mode::XApic);
        assert_eq!(l.read(reg::ID, 0), None, "MSRs #GP in xAPIC mode");
        assert_eq!(l.mmio_read(offset::ID, 0), Some(3 << 24));
        assert_eq!(l.mmio_write(offset::ID, 7 << 24, 0), Write::Done);
        assert_eq!(l.mmio_read(offset::ID, 0), Some(3 << 24), "ID kept");
        assert_eq!(l.mmio_read(0x30, 0), Some(VERSION));
        assert_eq!(l.mmio_write(0x30, 0, 0), Write::Done, "read-only: ignored");
        assert_eq!(l.mmio_read(0x30, 0), Some(VERSION));
        assert_eq!(l.mmio_read(offset::SVR, 0), Some(0x1ff));
        // LDR: bits 31:24 only; DFR: flat after reset, reserved bits ones.
        assert_eq!(l.mmio_read(offset::LDR, 0), Some(0));
        l.mmio_write(offset::LDR, 0x08ff_ffff, 0);
        assert_eq!(l.mmio_read(offset::LDR, 0), Some(0x0800_0000));
        assert_eq!(l.mmio_read(offset::DFR, 0), Some(0xffff_ffff));
        l.mmio_write(offset::DFR, 0, 0);
        assert_eq!(l.mmio_read(offset::DFR, 0), Some(0x0fff_ffff));
        assert!(l.recipient().cluster);
        // TPR masks to 8 bits; PPR follows it.
        l.mmio_write(offset::TPR, 0x1234, 0);
        assert_eq!(l.mmio_read(offset::TPR, 0), Some(0x34));
        assert_eq!(l.mmio_read(0xa0, 0), Some(0x34));
        // Timer through the page: divide, LVT, initial and current count.
        l.set_timer_clock(1);
        l.mmio_write(0x3e0, 0xb, 0);
        assert_eq!(l.mmio_read(0x3e0, 0), Some(0xb));
        l.mmio_write(offset::LVT_TIMER, 0x30, 0);
        assert_eq!(l.mmio_read(offset::LVT_TIMER, 0), Some(0x30));
        l.mmio_write(0x380, 100, 0);
        assert_eq!(l.mmio_read(0x380, 0), Some(100));
        assert_eq!(l.mmio_read(0x390, 40), Some(60));
        l.tick(100);
        assert_eq!(l.mmio_read(0x200 + 0x10, 0), Some(1 << 16), "IRR: 0x30");
        // LVT LINT0 / error keep their defined bits.
        l.mmio_write(0x350, 0xffff_ffff, 0);
        assert_eq!(l.mmio_read(0x350, 0), Some(0x0001_17ff));
        // ESR: any write clears it.
        l.raise(3);
        assert_eq!(l.mmio_read(0x280, 0), Some(ESR_RECEIVE_ILLEGAL));
        l.mmio_write(0x280, 0x1234, 0);
        assert_eq!(l.mmio_read(0x280, 0), Some(0));
        // Write-only, reserved, unaligned and out-of-page offsets.
        assert_eq!(l.mmio_read(offset::EOI, 0), Some(0));
        assert_eq!(l.mmio_read(0x3f0, 0), Some(0), "no SELF IPI register");
        assert_eq!(l.mmio_write(0x3f0, 0x40, 0), Write::Done);
        assert_eq!(highest(&l.irr), Some(0x30), "SELF IPI write ignored");
        assert_eq!(l.mmio_read(0x3a0, 0), Some(0));
        assert_eq!(l.mmio_read(0x24, 0), Some(0));
        assert_eq!(l.mmio_read(0x1000, 0), Some(0));
        assert_eq!(l.mmio_write(0x84, 0xff, 0), Write::Done);
        assert_eq!(l.mmio_write(u32::MAX, 0xff, 0), Write::Done);
        assert_eq!(l.mmio_read(offset::TPR, 0), Some(0x34));
    }

    #[test]
    fn xapic_icr_sends_on_the_low_half() {
        let mut l = xapic(0);
        assert_eq!(l.mmio_write(offset::ICR_HIGH, 0x02ab_cdef, 0), Write::Done);
        assert_eq!(l.mmio_read(offset::ICR_HIGH, 0), Some(0x0200_0000));
        assert_eq!(
            l.mmio_write(offset::ICR_LOW, 0x4040, 0),
            Write::Send(Ipi {
                destination: Destination::Apic(2),
                delivery: Delivery::Fixed(0x40)
            })
        );
        assert_eq!(l.mmio_read(offset::ICR_LOW, 0), Some(0x4040));
        // Delivery status (bit 12) always reads idle.
        l.mmio_write(offset::ICR_LOW, 0x1000 | 0x41, 0);
        assert_eq!(l.mmio_read(offset::ICR_LOW, 0), Some(0x41));
        l.mmio_write(offset::ICR_HIGH, 0x0300_0000, 0);
        assert_eq!(
            l.mmio_write(offset::ICR_LOW, 1 << 11 | 0x42, 0),
            Write::Send(Ipi {
                destination: Destination::Logical(3),
                delivery: Delivery::Fixed(0x42)
            })
        );
        assert_eq!(
            l.mmio_write(offset::ICR_LOW, 0x4500, 0),
            Write::Send(Ipi {
                destination: Destination::Apic(3),
                delivery: Delivery::Init
            })
        );
        assert_eq!(l.mmio_write(offset::ICR_LOW, 0x8500, 0), Write::Done);
        assert_eq!(
            l.mmio_write(offset::ICR_LOW, 0x069a, 0),
            Write::Send(Ipi {
                destination: Destination::Apic(3),
                delivery: Delivery::Startup(0x9a)
            })
        );
        assert_eq!(
            l.mmio_write(offset::ICR_LOW, 3 << 18 | 0x43, 0),
            Write::Send(Ipi {
                destination: Destination::AllExcludingSelf,
                delivery: Delivery::Fixed(0x43)
            })
        );
        assert_eq!(
            l.mmio_write(offset::ICR_LOW, 1 << 18 | 4 << 8, 0),
            Write::Send(Ipi {
                destination: Destination::SelfOnly,
                delivery: Delivery::Nmi
            })
        );
        assert_eq!(
            l.mmio_write(offset::ICR_LOW, 2 << 18 | 1 << 8 | 0x44, 0),
            Write::Send(Ipi {
                destination: Destination::AllIncludingSelf,
                delivery: Delivery::Fixed(0x44)
            }),
            "lowest priority is delivered as fixed"
        );
        // Reserved bits are dropped, SMI and reserved modes send nothing.
        assert_eq!(
            l.mmio_write(offset::ICR_LOW, 0xfff3_2000 | 0x45, 0),
            Write::Send(Ipi {
                destination: Destination::Apic(3),
                delivery: Delivery::Fixed(0x45)
            })
        );
        assert_eq!(l.mmio_write(offset::ICR_LOW, 2 << 8, 0), Write::Done);
        assert_eq!(l.mmio_write(offset::ICR_LOW, 7 << 8, 0), Write::Done);
        assert_eq!(l.mmio_write(offset::ICR_LOW, 0x05, 0), Write::Done);
        assert_eq!(l.mmio_read(0x280, 0), Some(ESR_SEND_ILLEGAL));
    }

    #[test]
    fn mmio_is_not_decoded_in_x2apic_mode_or_when_disabled() {
        let mut l = x2(1);
        assert!(!l.mmio_decoded());
        assert_eq!(l.mmio_read(offset::ID, 0), None);
        assert_eq!(l.mmio_write(offset::TPR, 0x20, 0), Write::Done);
        assert_eq!(l.mmio_write(offset::ICR_LOW, 0x40, 0), Write::Done);
        assert_eq!(l.read(reg::TPR, 0), Some(0), "the write went nowhere");
        let mut off = Lapic::new(1);
        assert!(off.set_apic_base(APIC_BASE_DEFAULT));
        assert_eq!(off.mode(), Mode::Disabled);
        assert_eq!(off.mmio_read(offset::SVR, 0), None);
        assert_eq!(off.mmio_write(offset::SVR, 0x1ff, 0), Write::Done);
        assert!(off.set_apic_base(APIC_BASE_DEFAULT | BASE_ENABLE));
        assert_eq!(off.mmio_read(offset::SVR, 0), Some(0xff), "still reset");
        // xAPIC state the page wrote is gone after x2APIC and back.
        let mut l = xapic(1);
        l.mmio_write(offset::LDR, 0x0100_0000, 0);
        assert!(l.set_apic_base(APIC_BASE_DEFAULT | BASE_ENABLE | BASE_X2APIC));
        assert_eq!(l.read(reg::LDR, 0), Some(2), "x2APIC LDR is derived");
        assert_eq!(l.write(reg::DFR, 0, 0), Write::Fault, "no DFR MSR");
        assert_eq!(l.read(reg::ICR_HIGH, 0), None);
    }

    #[test]
    fn destinations_physical_logical_and_shorthand() {
        let mut flat = xapic(2);
        flat.mmio_write(offset::LDR, 0x0400_0000, 0);
        let d = Destination::Logical;
        assert!(flat.accepts(d(0x04), false));
        assert!(flat.accepts(d(0x0f), false));
        assert!(flat.accepts(d(0xff), false));
        assert!(!flat.accepts(d(0x0b), false));
        assert!(!flat.accepts(d(0x104), false), "8-bit MDA");
        assert!(flat.accepts(Destination::Apic(2), false));
        assert!(flat.accepts(Destination::Apic(0xff), false), "broadcast");
        assert!(!flat.accepts(Destination::Apic(3), false));
        assert!(!flat.accepts(Destination::Apic(0x102), false));
        // Cluster model: cluster 2, member bit 1.
        let mut cl = xapic(5);
        cl.mmio_write(offset::DFR, 0x0fff_ffff, 0);
        cl.mmio_write(offset::LDR, 0x2200_0000, 0);
        assert!(cl.accepts(d(0x22), false));
        assert!(cl.accepts(d(0x2f), false));
        assert!(cl.accepts(d(0xf2), false), "all clusters");
        assert!(!cl.accepts(d(0x12), false), "other cluster");
        assert!(!cl.accepts(d(0x21), false), "other member");
        // x2APIC: physical 32-bit IDs, logical cluster << 16 | bitmask.
        let x = x2(0x13);
        assert!(x.accepts(Destination::Apic(0x13), false));
        assert!(x.accepts(Destination::Apic(u32::MAX), false));
        assert!(!x.accepts(Destination::Apic(0xff), false));
        assert!(x.accepts(d(0x0001_0008), false));
        assert!(x.accepts(d(u32::MAX), false));
        assert!(!x.accepts(d(0x0001_0004), false));
        assert!(!x.accepts(d(0x0000_0008), false));
        // Shorthands need the sender.
        for l in [&flat, &cl, &x] {
            assert!(l.accepts(Destination::SelfOnly, true));
            assert!(!l.accepts(Destination::SelfOnly, false));
            assert!(l.accepts(Destination::AllIncludingSelf, true));
            assert!(!l.accepts(Destination::AllExcludingSelf, true));
            assert!(l.accepts(Destination::AllExcludingSelf, false));
            let r = l.recipient();
            assert_eq!(Recipient::from_bits(r.to_bits()), r);
        }
        let mut off = Lapic::new(1);
        assert!(off.set_apic_base(APIC_BASE_DEFAULT));
        assert!(!off.accepts(Destination::AllIncludingSelf, false));
        assert_eq!(Recipient::from_bits(0).mode, Mode::Disabled);
    }

    #[test]
    fn level_triggered_eoi_is_reported_for_the_ioapic() {
        let mut l = xapic(0);
        l.raise_level(0x30);
        l.raise(0x40);
        assert_eq!(l.mmio_read(0x180 + 0x10, 0), Some(1 << 16), "TMR 0x30");
        l.acknowledge(0x40);
        assert_eq!(l.mmio_write(offset::EOI, 0, 0), Write::Done, "edge");
        l.acknowledge(0x30);
        assert_eq!(l.mmio_write(offset::EOI, 0x1234, 0), Write::Eoi(0x30));
        assert_eq!(l.mmio_read(0x180 + 0x10, 0), Some(0), "TMR cleared");
        assert_eq!(l.mmio_write(offset::EOI, 0, 0), Write::Done, "nothing");
        let mut x = x2(0);
        x.raise_level(0x50);
        assert_eq!(x.read(reg::TMR0 + 2, 0), Some(1 << 16));
        x.acknowledge(0x50);
        assert_eq!(x.write(reg::EOI, 0, 0), Write::Eoi(0x50));
        // An edge request of the same vector makes it edge again.
        x.raise_level(0x51);
        x.raise(0x51);
        x.acknowledge(0x51);
        assert_eq!(x.write(reg::EOI, 0, 0), Write::Done);
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

        #[test]
        fn random_page_traffic_never_panics(
            ops in proptest::collection::vec((0u32..0x1100, proptest::prelude::any::<u32>(), proptest::prelude::any::<bool>(), 0u64..1 << 40), 0..200)
        ) {
            let mut l = xapic(1);
            for (offset, value, write, now) in ops {
                if write {
                    proptest::prop_assert_ne!(l.mmio_write(offset, value, now), Write::Fault);
                } else {
                    let _ = l.mmio_read(offset, now);
                }
                l.tick(now);
                if let Some(v) = l.pending() {
                    l.acknowledge(v);
                }
            }
        }
    }
}
