//! Interrupt routing inside a VM: which vCPUs an IPI (a local APIC's ICR)
//! or an IOAPIC message reaches, decided from the destinations the vCPUs'
//! local APICs published ([`crate::mailbox::Mailbox::recipient`]), so a
//! sender never reads another CPU's APIC.
//!
//! A physical destination below the vCPU count is that vCPU (APIC ID =
//! vCPU number); other physical IDs (the 0xFF / 0xFFFFFFFF broadcast),
//! logical destinations (flat, cluster, x2APIC cluster: SDM 11.6.2.2,
//! 11.12.10.2) and the shorthands (11.6.1) are matched against each
//! vCPU's recipient. An empty result is an interrupt no APIC takes: the
//! caller counts and drops it, as a real APIC bus drops it.

use alloc::vec::Vec;

use crate::ioapic;
use crate::lapic::{Delivery, Destination, Ipi, Recipient};

/// Where a message goes and what it does there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The receiving vCPUs, lowest first.
    pub targets: Vec<u16>,
    /// How each receiver takes the interrupt (fixed vector, NMI, INIT, ...).
    pub delivery: Delivery,
    /// Level-triggered: the receivers set their TMR bit, so the EOI that
    /// ends it comes back to the IOAPIC (SDM 11.8.5).
    pub level: bool,
}

/// The vCPUs (of `vcpus`) that `destination` names, sent by vCPU `from`;
/// `recipient(t)` is what vCPU `t`'s local APIC last published.
pub fn targets(
    destination: Destination,
    from: u16,
    vcpus: u16,
    recipient: impl Fn(u16) -> Option<Recipient>,
) -> Vec<u16> {
    match destination {
        Destination::Apic(id) if let Some(id) = u16::try_from(id).ok().filter(|&id| id < vcpus) => {
            alloc::vec![id]
        }
        Destination::SelfOnly => alloc::vec![from],
        Destination::AllIncludingSelf => (0..vcpus).collect(),
        Destination::AllExcludingSelf => (0..vcpus).filter(|&t| t != from).collect(),
        dest @ (Destination::Apic(_) | Destination::Logical(_)) => (0..vcpus)
            .filter(|&t| recipient(t).is_some_and(|r| r.accepts(dest, t == from)))
            .collect(),
    }
}

/// An IPI from vCPU `from`: to every vCPU its destination names.
pub fn ipi(ipi: Ipi, from: u16, vcpus: u16, recipient: impl Fn(u16) -> Option<Recipient>) -> Route {
    Route {
        targets: targets(ipi.destination, from, vcpus, recipient),
        delivery: ipi.delivery,
        level: false,
    }
}

/// An IOAPIC message, raised while vCPU `from` ran: fixed ones to every
/// local APIC the destination names, lowest-priority ones to the first of
/// them (Atoll does not arbitrate priorities, SDM 11.6.2.4 leaves the
/// choice to the platform), NMIs as NMIs.
pub fn interrupt(
    message: &ioapic::Message,
    from: u16,
    vcpus: u16,
    recipient: impl Fn(u16) -> Option<Recipient>,
) -> Route {
    let mut targets = targets(message.destination(), from, vcpus, recipient);
    let delivery = match message.delivery {
        ioapic::Delivery::Fixed => Delivery::Fixed(message.vector),
        ioapic::Delivery::LowestPriority => {
            targets.truncate(1);
            Delivery::Fixed(message.vector)
        }
        ioapic::Delivery::Nmi => Delivery::Nmi,
    };
    Route {
        targets,
        delivery,
        level: message.level,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lapic::Mode;

    const VCPUS: u16 = 4;

    fn xapic(id: u32, logical_id: u8, cluster: bool) -> Recipient {
        Recipient {
            mode: Mode::XApic,
            id,
            logical_id,
            cluster,
        }
    }

    /// Four xAPICs in flat mode, vCPU t with logical ID 1 << t.
    fn flat(t: u16) -> Option<Recipient> {
        Some(xapic(u32::from(t), 1 << t, false))
    }

    /// Four xAPICs in cluster mode: vCPUs 0, 1 in cluster 1, vCPUs 2, 3 in
    /// cluster 2, member bits 1 and 2.
    fn clustered(t: u16) -> Option<Recipient> {
        let cluster = if t < 2 { 0x10 } else { 0x20 };
        Some(xapic(u32::from(t), cluster | (1 << (t % 2)), true))
    }

    fn x2apic(t: u16) -> Option<Recipient> {
        Some(Recipient {
            mode: Mode::X2Apic,
            id: u32::from(t),
            logical_id: 0,
            cluster: false,
        })
    }

    fn to(dest: Destination, from: u16, recipients: fn(u16) -> Option<Recipient>) -> Vec<u16> {
        targets(dest, from, VCPUS, recipients)
    }

    #[test]
    fn physical_names_one_vcpu_by_apic_id() {
        assert_eq!(to(Destination::Apic(2), 0, flat), [2]);
        // No such vCPU: nobody (the caller counts it lost).
        assert_eq!(to(Destination::Apic(7), 0, flat), [] as [u16; 0]);
    }

    #[test]
    fn physical_broadcast_reaches_everyone() {
        assert_eq!(to(Destination::Apic(0xff), 1, flat), [0, 1, 2, 3]);
        assert_eq!(to(Destination::Apic(u32::MAX), 1, x2apic), [0, 1, 2, 3]);
    }

    #[test]
    fn logical_flat_matches_any_common_bit() {
        assert_eq!(to(Destination::Logical(0b0101), 0, flat), [0, 2]);
        assert_eq!(to(Destination::Logical(0xff), 0, flat), [0, 1, 2, 3]);
        assert_eq!(to(Destination::Logical(0), 0, flat), [] as [u16; 0]);
    }

    #[test]
    fn logical_cluster_matches_cluster_and_members() {
        assert_eq!(to(Destination::Logical(0x13), 0, clustered), [0, 1]);
        assert_eq!(to(Destination::Logical(0x22), 0, clustered), [3]);
        // Cluster 0xF: the members of every cluster.
        assert_eq!(to(Destination::Logical(0xf1), 0, clustered), [0, 2]);
    }

    #[test]
    fn logical_x2apic_cluster() {
        // Cluster 0, members 1 and 3.
        assert_eq!(to(Destination::Logical(0b1010), 0, x2apic), [1, 3]);
        assert_eq!(
            to(Destination::Logical(1 << 16 | 1), 0, x2apic),
            [] as [u16; 0]
        );
    }

    #[test]
    fn a_disabled_apic_takes_nothing_but_its_number() {
        let disabled = |t: u16| Some(Recipient::from_bits(u64::from(t)));
        assert_eq!(to(Destination::Logical(0xff), 0, disabled), [] as [u16; 0]);
        assert_eq!(to(Destination::Apic(0xff), 0, disabled), [] as [u16; 0]);
    }

    #[test]
    fn shorthands() {
        assert_eq!(to(Destination::SelfOnly, 2, flat), [2]);
        assert_eq!(to(Destination::AllIncludingSelf, 2, flat), [0, 1, 2, 3]);
        assert_eq!(to(Destination::AllExcludingSelf, 2, flat), [0, 1, 3]);
    }

    #[test]
    fn an_ipi_keeps_its_delivery() {
        let sipi = Ipi {
            destination: Destination::AllExcludingSelf,
            delivery: Delivery::Startup(0x9f),
        };
        let route = ipi(sipi, 0, VCPUS, flat);
        assert_eq!(route.targets, [1, 2, 3]);
        assert_eq!(route.delivery, Delivery::Startup(0x9f));
        assert!(!route.level);
    }

    fn message(delivery: ioapic::Delivery, destination: u8, logical: bool) -> ioapic::Message {
        ioapic::Message {
            pin: 4,
            vector: 0x34,
            delivery,
            destination,
            logical,
            level: true,
        }
    }

    #[test]
    fn fixed_interrupts_go_to_every_named_vcpu() {
        let m = message(ioapic::Delivery::Fixed, 0b0110, true);
        let route = interrupt(&m, 0, VCPUS, flat);
        assert_eq!(route.targets, [1, 2]);
        assert_eq!(route.delivery, Delivery::Fixed(0x34));
        assert!(route.level);
    }

    #[test]
    fn lowest_priority_goes_to_the_first_named_vcpu() {
        let m = message(ioapic::Delivery::LowestPriority, 0b0110, true);
        assert_eq!(interrupt(&m, 0, VCPUS, flat).targets, [1]);
        let m = message(ioapic::Delivery::LowestPriority, 0xff, false);
        let route = interrupt(&m, 3, VCPUS, flat);
        assert_eq!(route.targets, [0]);
        assert_eq!(route.delivery, Delivery::Fixed(0x34));
    }

    #[test]
    fn an_ioapic_broadcast_includes_the_running_vcpu() {
        let m = message(ioapic::Delivery::Fixed, 0xff, false);
        assert_eq!(interrupt(&m, 1, VCPUS, flat).targets, [0, 1, 2, 3]);
    }

    #[test]
    fn an_ioapic_nmi_stays_an_nmi() {
        let m = message(ioapic::Delivery::Nmi, 0, false);
        let route = interrupt(&m, 1, VCPUS, flat);
        assert_eq!(route.targets, [0]);
        assert_eq!(route.delivery, Delivery::Nmi);
    }
}
