//! What goes into a VMCS, as data: the execution controls Atoll needs
//! (checked against the capability MSRs) and the initial guest state of a
//! vCPU, as `(field, value)` pairs the arch layer writes with VMWRITE. The
//! arch layer does no deciding; everything here is tested on the host.

use alloc::vec::Vec;
use x86::vmx::vmcs::control::{
    EntryControls, ExitControls, PinbasedControls, PrimaryControls, SecondaryControls,
};
use x86::vmx::vmcs::{control, guest};

use crate::vmx::VmxCaps;

/// The five control words of a VMCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    /// Pin-based VM-execution controls (SDM 25.6.1).
    pub pin: u32,
    /// Primary processor-based VM-execution controls (SDM 25.6.2).
    pub primary: u32,
    /// Secondary processor-based VM-execution controls (SDM 25.6.2).
    pub secondary: u32,
    /// VM-exit controls (SDM 25.7.1).
    pub exit: u32,
    /// VM-entry controls (SDM 25.8.1).
    pub entry: u32,
}

impl Controls {
    /// Whether the guest may use RDTSCP (secondary control "enable
    /// RDTSCP", SDM 25.6.2).
    pub fn rdtscp(&self) -> bool {
        self.secondary & SecondaryControls::ENABLE_RDTSCP.bits() != 0
    }

    /// Whether the guest may use INVPCID (secondary control "enable
    /// INVPCID").
    pub fn invpcid(&self) -> bool {
        self.secondary & SecondaryControls::ENABLE_INVPCID.bits() != 0
    }
}

/// The primary control "interrupt-window exiting" (SDM 25.6.2).
pub const INTERRUPT_WINDOW_EXITING: u32 = PrimaryControls::INTERRUPT_WINDOW_EXITING.bits();

/// VM-entry interruption information (SDM 25.8.3, Table 25-17).
pub mod interruption {
    /// Bit 31: the field holds an event to inject.
    pub const VALID: u32 = 1 << 31;
    /// Bit 11: deliver an error code.
    pub const DELIVER_ERROR_CODE: u32 = 1 << 11;
    /// Bits 10:8, type 3: hardware exception (type 0 is an external interrupt).
    const HARDWARE_EXCEPTION: u32 = 3 << 8;

    /// An external interrupt with `vector` (SDM 26.6.1.1).
    pub fn external_interrupt(vector: u8) -> u32 {
        u32::from(vector) | VALID
    }

    /// A hardware exception with `vector`, with an error code or not.
    pub fn hardware_exception(vector: u8, error_code: bool) -> u32 {
        let code = if error_code { DELIVER_ERROR_CODE } else { 0 };
        u32::from(vector) | HARDWARE_EXCEPTION | code | VALID
    }
}

/// Interruptibility state bits 1:0, blocking by STI and by MOV SS
/// (SDM 25.4.2, Table 25-3).
pub const BLOCKING_STI_MOV_SS: u64 = 0x3;

/// RFLAGS.IF (SDM Vol. 1, 3.4.3).
pub const RFLAGS_IF: u64 = 1 << 9;

/// EFER.LME and EFER.LMA (SDM Vol. 3A, 2.2.1).
// The constants carry the SDM's own bit names.
#[allow(missing_docs)]
pub mod efer {
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
}

/// A control Atoll needs that the processor cannot enable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingControl {
    /// Which control word (`"pin-based"`, `"VM-exit"`, ...).
    pub word: &'static str,
    /// The wanted bits the capability MSR does not allow to be 1.
    pub bits: u32,
}

impl core::fmt::Display for MissingControl {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "the processor cannot enable {} VM-execution control bits {:#x}",
            self.word, self.bits
        )
    }
}

/// Sets `wanted` plus the bits the processor requires, within what it
/// allows (SDM Vol. 3D, A.3: allowed-0 settings in bits 31:0 of the
/// capability MSR, allowed-1 in bits 63:32).
fn adjust(word: &'static str, cap: u64, wanted: u32) -> Result<u32, MissingControl> {
    let (must, may) = (cap as u32, (cap >> 32) as u32);
    let value = (wanted | must) & may;
    match wanted & !value {
        0 => Ok(value),
        bits => Err(MissingControl { word, bits }),
    }
}

/// The controls every Atoll vCPU runs with:
/// - pin-based: external interrupts and NMIs exit (the host owns the
///   physical interrupt flow: a node's IPIs and its stop NMI), and the
///   preemption timer slices time between vCPUs sharing a CPU;
/// - primary: HLT exits (deschedule), all port I/O exits (the port bus),
///   secondary controls on; MSR accesses all exit (no bitmap: the policy
///   sees every access);
/// - secondary: EPT, VPID, unrestricted guest (vCPUs start in real or
///   unpaged protected mode), and RDTSCP/INVPCID when the processor has
///   them (otherwise those instructions raise #UD in the guest, matching a
///   CPUID that hides them);
/// - exit: 64-bit host; EFER and PAT saved for the guest and loaded for
///   the host;
/// - entry: EFER and PAT loaded for the guest. "IA-32e mode guest" is
///   per vCPU state ([`entry_controls`]).
pub fn controls(caps: &VmxCaps) -> Result<Controls, MissingControl> {
    let pin = PinbasedControls::EXTERNAL_INTERRUPT_EXITING
        | PinbasedControls::NMI_EXITING
        | PinbasedControls::VMX_PREEMPTION_TIMER;
    let primary = PrimaryControls::HLT_EXITING
        | PrimaryControls::UNCOND_IO_EXITING
        | PrimaryControls::SECONDARY_CONTROLS;
    let secondary = SecondaryControls::ENABLE_EPT
        | SecondaryControls::ENABLE_VPID
        | SecondaryControls::UNRESTRICTED_GUEST;
    let optional = SecondaryControls::ENABLE_RDTSCP | SecondaryControls::ENABLE_INVPCID;
    let optional = optional.bits() & (caps.procbased2 >> 32) as u32;
    let exit = ExitControls::HOST_ADDRESS_SPACE_SIZE
        | ExitControls::SAVE_IA32_PAT
        | ExitControls::LOAD_IA32_PAT
        | ExitControls::SAVE_IA32_EFER
        | ExitControls::LOAD_IA32_EFER;
    let entry = EntryControls::LOAD_IA32_PAT | EntryControls::LOAD_IA32_EFER;
    Ok(Controls {
        pin: adjust("pin-based", caps.pinbased, pin.bits())?,
        primary: adjust("primary processor-based", caps.procbased, primary.bits())?,
        secondary: adjust(
            "secondary processor-based",
            caps.procbased2,
            secondary.bits() | optional,
        )?,
        exit: adjust("VM-exit", caps.exit, exit.bits())?,
        entry: adjust("VM-entry", caps.entry, entry.bits())?,
    })
}

/// The VM-entry controls for a guest whose EFER.LMA is `long_mode`
/// (SDM 26.3.1.1: "IA-32e mode guest" must equal EFER.LMA).
pub fn entry_controls(base: u32, long_mode: bool) -> u32 {
    let bit = EntryControls::IA32E_MODE_GUEST.bits();
    if long_mode { base | bit } else { base & !bit }
}

/// CR0 bits (SDM Vol. 3A, 2.5).
// The constants carry the SDM's own bit names.
#[allow(missing_docs)]
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const PG: u64 = 1 << 31;
}

/// CR4.VMXE (SDM Vol. 3A, 2.5): must stay set in VMX operation, in the
/// guest's CR4 too; the guest sees it clear through the read shadow.
pub const CR4_VMXE: u64 = 1 << 13;

/// CR4.OSXSAVE (SDM Vol. 3A, 2.5): the OS enabled XSAVE.
pub const CR4_OSXSAVE: u64 = 1 << 18;

/// The fixed-bit rules for guest control registers (SDM Vol. 3D, A.7-A.8),
/// with PE and PG exempt under unrestricted guest (SDM 26.3.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedBits {
    /// IA32_VMX_CR0_FIXED0: CR0 bits that must be 1.
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1: CR0 bits that may be 1.
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0: CR4 bits that must be 1.
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1: CR4 bits that may be 1.
    pub cr4_fixed1: u64,
}

impl FixedBits {
    /// CR0 as the hardware must hold it when the guest asks for `wanted`.
    pub fn guest_cr0(&self, wanted: u64) -> u64 {
        let must = self.cr0_fixed0 & !(cr0::PE | cr0::PG);
        (wanted | must) & self.cr0_fixed1
    }

    /// CR4 as the hardware must hold it when the guest asks for `wanted`.
    pub fn guest_cr4(&self, wanted: u64) -> u64 {
        (wanted | self.cr4_fixed0) & self.cr4_fixed1
    }

    /// CR0 bits the guest cannot change itself: those the hardware forces.
    /// A guest write that differs from the read shadow in these bits exits.
    pub fn cr0_mask(&self) -> u64 {
        (self.cr0_fixed0 & !(cr0::PE | cr0::PG)) | !self.cr0_fixed1 & 0xffff_ffff
    }

    /// CR4 bits the guest cannot change itself (VMXE among them).
    pub fn cr4_mask(&self) -> u64 {
        self.cr4_fixed0 | !self.cr4_fixed1 & 0xffff_ffff
    }
}

/// How a vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// 32-bit protected mode, flat 4 GiB segments, paging off: the
    /// multiboot machine state (Multiboot 1 spec 3.2, Multiboot2 3.3).
    Protected32 {
        /// The entry point.
        eip: u32,
    },
    /// Real mode at `vector << 12`, as after INIT-SIPI (SDM Vol. 3A,
    /// 10.4.4.1): CS selector `vector << 8`, IP 0.
    RealMode {
        /// The SIPI vector: the start page number below 1 MiB.
        vector: u8,
    },
    /// 64-bit mode with paging on, as the Linux boot protocol's 64-bit
    /// entry wants it (Documentation/arch/x86/boot.rst, "64-bit Boot
    /// Protocol"): CS a 64-bit code segment and the data segments flat, both
    /// described by the GDT at `gdt_base`; CR3 the guest's identity page
    /// tables; CR4.PAE and EFER.LME/LMA set; interrupts off.
    Long64 {
        /// The entry point.
        rip: u64,
        /// Guest-physical address of the PML4.
        cr3: u64,
        /// Guest-physical address of the GDT.
        gdt_base: u64,
        /// The GDT's limit (size in bytes minus 1).
        gdt_limit: u16,
        /// CS: the 64-bit code segment's selector.
        code_selector: u16,
        /// DS, ES, SS, FS, GS: the flat data segment's selector.
        data_selector: u16,
    },
}

impl StartMode {
    /// Whether the vCPU starts with EFER.LMA set: VM entry then needs the
    /// "IA-32e mode guest" control ([`entry_controls`]).
    pub fn long_mode(&self) -> bool {
        matches!(self, StartMode::Long64 { .. })
    }
}

/// Segment access rights (SDM 25.4.1, Table 25-2): type, S, DPL, P, D/B, G;
/// bit 16 = unusable.
mod ar {
    pub const CODE32: u64 = 0xc09b;
    /// L set, D/B clear (SDM 26.3.1.2: a 64-bit CS has D/B = 0).
    pub const CODE64: u64 = 0xa09b;
    pub const DATA32: u64 = 0xc093;
    pub const CODE16: u64 = 0x009b;
    pub const DATA16: u64 = 0x0093;
    /// A busy 32-bit TSS: required even though the guest has none yet
    /// (SDM 26.3.1.2).
    pub const TSS_BUSY: u64 = 0x008b;
    pub const UNUSABLE: u64 = 1 << 16;
}

/// The initial guest-state fields of a vCPU: everything SDM 26.3.1
/// checks, so VM entry accepts it. `fixed` shapes CR0/CR4; the caller
/// writes the CR read shadows and masks.
pub fn initial_guest_state(mode: StartMode, fixed: &FixedBits) -> Vec<(u32, u64)> {
    let s = start_segments(mode);
    let mut fields = Vec::with_capacity(48);
    fields.extend([
        (guest::CR0, fixed.guest_cr0(s.cr0)),
        (guest::CR3, s.cr3),
        (guest::CR4, fixed.guest_cr4(s.cr4)),
        (guest::DR7, 0x400),
        (guest::RSP, 0),
        (guest::RIP, s.rip),
        (guest::RFLAGS, 0x2),
        (guest::CS_SELECTOR, s.cs_selector),
        (guest::CS_BASE, s.cs_base),
        (guest::CS_LIMIT, s.limit),
        (guest::CS_ACCESS_RIGHTS, s.code),
    ]);
    for (selector, base, lim, rights) in [
        (
            guest::SS_SELECTOR,
            guest::SS_BASE,
            guest::SS_LIMIT,
            guest::SS_ACCESS_RIGHTS,
        ),
        (
            guest::DS_SELECTOR,
            guest::DS_BASE,
            guest::DS_LIMIT,
            guest::DS_ACCESS_RIGHTS,
        ),
        (
            guest::ES_SELECTOR,
            guest::ES_BASE,
            guest::ES_LIMIT,
            guest::ES_ACCESS_RIGHTS,
        ),
        (
            guest::FS_SELECTOR,
            guest::FS_BASE,
            guest::FS_LIMIT,
            guest::FS_ACCESS_RIGHTS,
        ),
        (
            guest::GS_SELECTOR,
            guest::GS_BASE,
            guest::GS_LIMIT,
            guest::GS_ACCESS_RIGHTS,
        ),
    ] {
        fields.extend([
            (selector, s.data_selector),
            (base, 0),
            (lim, s.limit),
            (rights, s.data),
        ]);
    }
    fields.extend([
        (guest::TR_SELECTOR, 0),
        (guest::TR_BASE, 0),
        (guest::TR_LIMIT, 0xffff),
        (guest::TR_ACCESS_RIGHTS, ar::TSS_BUSY),
        (guest::LDTR_SELECTOR, 0),
        (guest::LDTR_BASE, 0),
        (guest::LDTR_LIMIT, 0),
        (guest::LDTR_ACCESS_RIGHTS, ar::UNUSABLE),
        (guest::GDTR_BASE, s.gdt_base),
        (guest::GDTR_LIMIT, s.gdt_limit),
        (guest::IDTR_BASE, 0),
        (guest::IDTR_LIMIT, 0xffff),
        (guest::IA32_EFER_FULL, s.efer),
        // The power-on PAT (SDM Vol. 3A, 11.12.4).
        (guest::IA32_PAT_FULL, 0x0007_0406_0007_0406),
        (guest::IA32_DEBUGCTL_FULL, 0),
        (guest::IA32_SYSENTER_CS, 0),
        (guest::IA32_SYSENTER_ESP, 0),
        (guest::IA32_SYSENTER_EIP, 0),
        (guest::ACTIVITY_STATE, 0),
        (guest::INTERRUPTIBILITY_STATE, 0),
        (guest::PENDING_DBG_EXCEPTIONS, 0),
        // No VMCS shadowing: the link pointer must be all ones (26.3.1.5).
        (guest::LINK_PTR_FULL, u64::MAX),
        (control::CR0_READ_SHADOW, s.cr0),
        (control::CR4_READ_SHADOW, s.cr4),
        (control::CR0_GUEST_HOST_MASK, fixed.cr0_mask()),
        (control::CR4_GUEST_HOST_MASK, fixed.cr4_mask()),
    ]);
    fields
}

/// The registers that differ between start modes.
struct StartSegments {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    rip: u64,
    code: u64,
    data: u64,
    cs_selector: u64,
    cs_base: u64,
    data_selector: u64,
    limit: u64,
    gdt_base: u64,
    gdt_limit: u64,
}

/// CR4.PAE and EFER.LME/LMA together (SDM Vol. 3A, 2.5 and 2.2.1).
const CR4_PAE: u64 = 1 << 5;
const EFER_LME_LMA: u64 = efer::LME | efer::LMA;

fn start_segments(mode: StartMode) -> StartSegments {
    let flat = StartSegments {
        cr0: cr0::PE | cr0::ET | cr0::NE,
        cr3: 0,
        cr4: 0,
        efer: 0,
        rip: 0,
        code: ar::CODE32,
        data: ar::DATA32,
        cs_selector: 0x08,
        cs_base: 0,
        data_selector: 0x10,
        limit: 0xffff_ffff,
        gdt_base: 0,
        gdt_limit: 0xffff,
    };
    match mode {
        StartMode::Protected32 { eip } => StartSegments {
            rip: u64::from(eip),
            ..flat
        },
        StartMode::RealMode { vector } => {
            let selector = u64::from(vector) << 8;
            StartSegments {
                cr0: cr0::ET | cr0::NE,
                code: ar::CODE16,
                data: ar::DATA16,
                cs_selector: selector,
                cs_base: selector << 4,
                data_selector: 0,
                limit: 0xffff,
                ..flat
            }
        }
        StartMode::Long64 {
            rip,
            cr3,
            gdt_base,
            gdt_limit,
            code_selector,
            data_selector,
        } => StartSegments {
            cr0: cr0::PE | cr0::ET | cr0::NE | cr0::PG,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LME_LMA,
            rip,
            code: ar::CODE64,
            cs_selector: u64::from(code_selector),
            data_selector: u64::from(data_selector),
            gdt_base,
            gdt_limit: u64::from(gdt_limit),
            ..flat
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bochs 2.7 corei7_skylake_x capability values.
    fn skylake() -> VmxCaps {
        VmxCaps {
            basic: 0x00d8_1000_0000_002b,
            pinbased: 0x0000_007f_0000_0016,
            procbased: 0xf7f9_fffe_0400_6172,
            procbased2: 0x0217_7fff_0000_0000,
            exit: 0x007f_ffff_0003_6dfb,
            entry: 0x0000_ffff_0000_11fb,
            ..VmxCaps::default()
        }
    }

    const FIXED: FixedBits = FixedBits {
        cr0_fixed0: 0x8000_0021,
        cr0_fixed1: 0xffff_ffff,
        cr4_fixed0: 0x2000,
        cr4_fixed1: 0x0037_67ff,
    };

    #[test]
    fn interruption_info_encodes_sdm_table_25_17() {
        // Vector in 7:0, type in 10:8, error-code bit 11, valid bit 31.
        assert_eq!(interruption::external_interrupt(0x30), 0x8000_0030);
        assert_eq!(interruption::hardware_exception(13, true), 0x8000_0b0d);
        assert_eq!(interruption::hardware_exception(6, false), 0x8000_0306);
    }

    #[test]
    fn rdtscp_and_invpcid_follow_the_secondary_controls() {
        let c = controls(&skylake()).unwrap();
        assert!(c.rdtscp() && c.invpcid());
        let plain = Controls {
            secondary: c.secondary & !((1 << 3) | (1 << 12)),
            ..c
        };
        assert!(!plain.rdtscp() && !plain.invpcid());
    }

    #[test]
    fn controls_include_what_atoll_needs_and_what_the_cpu_requires() {
        let c = controls(&skylake()).unwrap();
        assert_eq!(c.pin & 0x49, 0x49);
        assert_eq!(c.pin & 0x16, 0x16, "default-1 bits kept");
        assert_ne!(c.primary & (1 << 7), 0, "HLT exits");
        assert_ne!(c.primary & (1 << 24), 0, "I/O exits");
        assert_eq!(c.primary & (1 << 15 | 1 << 16), 0, "no CR3 exiting");
        assert_eq!(c.secondary & 0xaa, 0xaa, "EPT, VPID, UG, RDTSCP");
        assert_eq!(c.exit & 0x3c_0200, 0x3c_0200);
        assert_eq!(c.entry & 0xc000, 0xc000);
        assert_eq!(c.entry & (1 << 9), 0);
        assert_ne!(entry_controls(c.entry, true) & (1 << 9), 0);
    }

    #[test]
    fn a_missing_control_is_named() {
        let mut caps = skylake();
        caps.procbased2 &= !(0x80u64 << 32);
        assert_eq!(
            controls(&caps),
            Err(MissingControl {
                word: "secondary processor-based",
                bits: 0x80
            })
        );
    }

    #[test]
    fn optional_controls_are_left_out_when_absent() {
        let mut caps = skylake();
        caps.procbased2 &= !((0x1008u64) << 32);
        assert_eq!(controls(&caps).unwrap().secondary & 0x1008, 0);
    }

    #[test]
    fn guest_control_registers_obey_fixed_bits_except_pe_pg() {
        assert_eq!(FIXED.guest_cr0(0), cr0::NE);
        assert_eq!(FIXED.guest_cr4(0), CR4_VMXE);
        assert_eq!(FIXED.cr0_mask() & (cr0::PE | cr0::PG), 0);
        assert_ne!(FIXED.cr0_mask() & cr0::NE, 0);
        assert_ne!(FIXED.cr4_mask() & CR4_VMXE, 0);
        assert_eq!(FIXED.cr4_mask() & 0x20, 0, "PAE is the guest's");
    }

    fn field(fields: &[(u32, u64)], f: u32) -> u64 {
        fields.iter().find(|(k, _)| *k == f).unwrap().1
    }

    #[test]
    fn protected_mode_start_is_flat_32_bit_unpaged() {
        let s = initial_guest_state(StartMode::Protected32 { eip: 0x10_0000 }, &FIXED);
        assert_eq!(field(&s, guest::RIP), 0x10_0000);
        assert_eq!(field(&s, guest::CR0) & (cr0::PE | cr0::PG), cr0::PE);
        assert_eq!(field(&s, guest::CS_LIMIT), 0xffff_ffff);
        assert_eq!(field(&s, guest::CS_ACCESS_RIGHTS), 0xc09b);
        assert_eq!(field(&s, guest::SS_ACCESS_RIGHTS), 0xc093);
        assert_eq!(field(&s, guest::LINK_PTR_FULL), u64::MAX);
        // The guest reads back CR4 without VMXE.
        assert_eq!(field(&s, control::CR4_READ_SHADOW) & CR4_VMXE, 0);
        assert_ne!(field(&s, guest::CR4) & CR4_VMXE, 0);
    }

    #[test]
    fn real_mode_start_follows_the_sipi_vector() {
        let s = initial_guest_state(StartMode::RealMode { vector: 0x9a }, &FIXED);
        assert_eq!(field(&s, guest::CS_SELECTOR), 0x9a00);
        assert_eq!(field(&s, guest::CS_BASE), 0x9_a000);
        assert_eq!(field(&s, guest::RIP), 0);
        assert_eq!(field(&s, guest::CR0) & cr0::PE, 0);
        assert_eq!(field(&s, guest::DS_LIMIT), 0xffff);
    }

    #[test]
    fn long_mode_start_is_the_linux_64_bit_entry_state() {
        let mode = StartMode::Long64 {
            rip: 0x100_0200,
            cr3: 0x9000,
            gdt_base: 0x6000,
            gdt_limit: 0x1f,
            code_selector: 0x10,
            data_selector: 0x18,
        };
        assert!(mode.long_mode());
        assert!(!StartMode::Protected32 { eip: 0 }.long_mode());
        let s = initial_guest_state(mode, &FIXED);
        let cr0 = field(&s, guest::CR0);
        assert_eq!(cr0 & (cr0::PE | cr0::PG), cr0::PE | cr0::PG);
        assert_eq!(field(&s, guest::CR3), 0x9000);
        assert_ne!(field(&s, guest::CR4) & CR4_PAE, 0);
        assert_eq!(field(&s, guest::IA32_EFER_FULL), EFER_LME_LMA);
        assert_eq!(field(&s, guest::RIP), 0x100_0200);
        assert_eq!(field(&s, guest::CS_SELECTOR), 0x10);
        assert_eq!(field(&s, guest::CS_ACCESS_RIGHTS), ar::CODE64);
        assert_eq!(field(&s, guest::SS_SELECTOR), 0x18);
        assert_eq!(field(&s, guest::GDTR_BASE), 0x6000);
        assert_eq!(field(&s, guest::GDTR_LIMIT), 0x1f);
        assert_eq!(field(&s, guest::RFLAGS), 0x2, "interrupts off");
    }
}
