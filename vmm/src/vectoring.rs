//! Events cut short by a VM exit. When an exit happens while the processor
//! is delivering an event through the guest's IDT (an interrupt Atoll
//! injected, an exception, an NMI), the event has not reached the guest:
//! the processor records it in the IDT-vectoring information field and it
//! is lost unless the next entry injects it again (SDM Vol. 3C,
//! "Information for VM Exits That Occur During Event Delivery" in the VMCS
//! chapter, and "Reflecting Exceptions to Guest Software" in the VMM
//! programming considerations: copy the field to the VM-entry
//! interruption-information field with its reserved bits 30:12 clear).
//!
//! An external interrupt found there was already acknowledged in the
//! virtual local APIC (moved from IRR to ISR) when it was first injected,
//! so it is injected again as it is, without touching the APIC.

// The IDT-vectoring information field has the layout of the VM-entry
// interruption-information field in bits 31 (valid), 11 (error code) and
// 10:8 (type); the shared bits are `atoll_platform`'s.
use atoll_platform::vmcs::interruption::{DELIVER_ERROR_CODE as ERROR_CODE, VALID};

/// Bits 10:8: the event type.
const TYPE_SHIFT: u32 = 8;
const TYPE_MASK: u32 = 0x7;

/// The event types (bits 10:8) that need the VM-entry
/// instruction length when injected (SDM 26.6.1.1: software interrupts,
/// privileged software exceptions and software exceptions).
const SOFTWARE_INTERRUPT: u32 = 4;
const PRIVILEGED_SOFTWARE_EXCEPTION: u32 = 5;
const SOFTWARE_EXCEPTION: u32 = 6;

/// What the next VM entry must inject to finish an interrupted delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reinjection {
    /// The VM-entry interruption-information field (SDM 26.6.1.1): vector,
    /// type and deliver-error-code copied, valid set, reserved bits clear.
    pub entry_info: u32,
    /// The VM-entry exception error code, when one is delivered.
    pub error_code: Option<u32>,
    /// The VM-entry instruction length, for software-generated events
    /// (so the guest returns past the INT n / INT3 / INTO / INT1).
    pub instruction_len: Option<u8>,
}

/// Decides from the IDT-vectoring information and error-code fields and
/// the VM-exit instruction length of one exit whether an event must be
/// injected again, and how.
pub fn reinjection(
    vectoring_info: u32,
    error_code: u32,
    instruction_len: u8,
) -> Option<Reinjection> {
    if vectoring_info & VALID == 0 {
        return None;
    }
    let kind = (vectoring_info >> TYPE_SHIFT) & TYPE_MASK;
    // Keep vector (7:0), type (10:8) and deliver-error-code (11); bit 12
    // ("NMI unblocking due to IRET") and bits 30:13 are reserved in the
    // entry field and must be zero there.
    let entry_info = (vectoring_info & 0xfff) | VALID;
    let software = matches!(
        kind,
        SOFTWARE_INTERRUPT | PRIVILEGED_SOFTWARE_EXCEPTION | SOFTWARE_EXCEPTION
    );
    Some(Reinjection {
        entry_info,
        error_code: (vectoring_info & ERROR_CODE != 0).then_some(error_code),
        instruction_len: software.then_some(instruction_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_do_when_the_field_is_not_valid() {
        assert_eq!(reinjection(0x0000_0030, 0, 0), None);
        assert_eq!(reinjection(0, 0, 0), None);
    }

    #[test]
    fn an_external_interrupt_is_injected_again_unchanged() {
        // Vector 0xf0, type 0 (external interrupt), valid.
        let again = reinjection(VALID | 0xf0, 0xdead, 3).unwrap();
        assert_eq!(again.entry_info, VALID | 0xf0);
        assert_eq!(again.error_code, None);
        assert_eq!(again.instruction_len, None);
    }

    #[test]
    fn a_page_fault_keeps_its_error_code() {
        // #PF (14), hardware exception (type 3), error code valid.
        let info = VALID | ERROR_CODE | (3 << TYPE_SHIFT) | 14;
        let again = reinjection(info, 0x2, 0).unwrap();
        assert_eq!(again.entry_info, info);
        assert_eq!(again.error_code, Some(0x2));
        assert_eq!(again.instruction_len, None);
    }

    #[test]
    fn software_events_carry_the_instruction_length() {
        for kind in [
            SOFTWARE_INTERRUPT,
            PRIVILEGED_SOFTWARE_EXCEPTION,
            SOFTWARE_EXCEPTION,
        ] {
            let info = VALID | (kind << TYPE_SHIFT) | 0x80;
            let again = reinjection(info, 0, 2).unwrap();
            assert_eq!(again.instruction_len, Some(2), "type {kind}");
        }
    }

    #[test]
    fn reserved_bits_never_reach_the_entry_field() {
        // An NMI (type 2) with bit 12 (NMI unblocking) and junk set.
        let info = VALID | (1 << 12) | (0x1234 << 13) | (2 << TYPE_SHIFT) | 2;
        let again = reinjection(info, 0, 0).unwrap();
        assert_eq!(again.entry_info, VALID | (2 << TYPE_SHIFT) | 2);
    }
}
