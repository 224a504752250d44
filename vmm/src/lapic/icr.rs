//! IPIs and message destinations (SDM 11.6, 11.12.9-10): an ICR write
//! becomes an [`Ipi`] value for the hypervisor to deliver, and a
//! [`Recipient`] says which APICs a destination reaches.
#![deny(missing_docs)]

use super::{Lapic, Mode, Write};
use crate::bits::{low_u8, low_u32};

/// ICR bit 11: logical destination mode.
const ICR_LOGICAL: u64 = 1 << 11;
/// ESR bit 5: send illegal vector.
const ESR_SEND_ILLEGAL: u32 = 1 << 5;

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
    /// Shorthand 01: the sender only.
    SelfOnly,
    /// Shorthand 10: every APIC, the sender too.
    AllIncludingSelf,
    /// Shorthand 11: every APIC but the sender.
    AllExcludingSelf,
}

/// What an IPI does (ICR delivery mode, bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Fixed (and lowest priority, delivered as fixed): this vector.
    Fixed(u8),
    /// An NMI.
    Nmi,
    /// INIT (the level-assert form; de-assert sends nothing).
    Init,
    /// Start-up: the vector is the start page (vector << 12).
    Startup(u8),
}

/// An IPI the guest sent, for the hypervisor to deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// Who it goes to.
    pub destination: Destination,
    /// What it does there.
    pub delivery: Delivery,
}

/// How an APIC recognises messages addressed to it: its mode, ID and
/// logical ID. A small copyable value, so the owner of a vCPU can publish
/// it (as [`Recipient::to_bits`]) for the CPUs that route IPIs and IOAPIC
/// messages to that vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// Which interface the APIC answers on (disabled: no message).
    pub mode: Mode,
    /// The APIC ID.
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
            id: low_u32(bits),
            logical_id: low_u8(bits >> 32),
            cluster: bits & 1 << 40 != 0,
        }
    }
}

impl Lapic {
    /// An ICR write that sends (SDM 11.6.1, 11.12.9): in x2APIC mode one
    /// 64-bit write with a 32-bit destination in bits 63:32; in xAPIC mode
    /// the low-half write, with the 8-bit destination in bits 63:56.
    pub(super) fn send(&mut self, value: u64, x2apic: bool) -> Write {
        let vector = low_u8(value);
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
}

#[cfg(test)]
mod tests {
    use super::super::test_apics::{x2, xapic};
    use super::super::*;
    use super::*;

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
}
