//! The MSR policy (MSR numbers from SDM Vol. 4): which model-specific
//! registers a guest may use, where each one's guest value lives, and the
//! checks a write must pass. Every RDMSR and WRMSR exits, so this sees
//! every access; anything not listed here is #GP, as on a processor that
//! does not have the MSR.
//!
//! | MSRs | where the guest value lives | write checks |
//! |---|---|---|
//! | EFER, PAT, FS/GS base, SYSENTER_CS/ESP/EIP, DEBUGCTL | VMCS guest area | EFER: SCE, LME, NXE only, LME fixed while paging; PAT: valid types; bases: canonical; DEBUGCTL: 0 |
//! | STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE, TSC_AUX | the processor, while the vCPU's CPU runs it (the host never uses them); saved here (KERNEL_GS_BASE, which SWAPGS changes without an exit, read from the processor) | canonical addresses, TSC_AUX 32 bits |
//! | MTRRs, MISC_ENABLE, BIOS_SIGN_ID | here | valid memory types, reserved bits |
//! | APIC_BASE, x2APIC 0x800-0x8FF, TSC_DEADLINE | the virtual local APIC | its own |
//! | TSC | the processor (no offset) | writes: #GP |
//! | TSC_ADJUST | none: always 0, since guests run on the processor's TSC without an offset (offered so a guest knows its TSC is never adjusted) | only 0; other writes: #GP |
//! | PLATFORM_ID, MCG_CAP, MCG_STATUS | constants | read-only |
//! | FEATURE_CONTROL | locked, VMX off (matching a CPUID without VMX) | read-only |

/// MSR numbers.
// Each name is the SDM's (Vol. 4, Table 2-2, without the IA32_ prefix).
#[allow(missing_docs)]
pub mod index {
    pub const TSC: u32 = 0x10;
    pub const PLATFORM_ID: u32 = 0x17;
    pub const APIC_BASE: u32 = 0x1b;
    pub const FEATURE_CONTROL: u32 = 0x3a;
    pub const TSC_ADJUST: u32 = 0x3b;
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    pub const MTRR_CAP: u32 = 0xfe;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MCG_CAP: u32 = 0x179;
    pub const MCG_STATUS: u32 = 0x17a;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const DEBUGCTL: u32 = 0x1d9;
    pub const MTRR_PHYS_FIRST: u32 = 0x200;
    pub const MTRR_PHYS_LAST: u32 = 0x20f;
    pub const MTRR_FIX_64K: u32 = 0x250;
    pub const MTRR_FIX_16K_80000: u32 = 0x258;
    pub const MTRR_FIX_16K_A0000: u32 = 0x259;
    pub const MTRR_FIX_4K_FIRST: u32 = 0x268;
    pub const MTRR_FIX_4K_LAST: u32 = 0x26f;
    pub const PAT: u32 = 0x277;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const TSC_DEADLINE: u32 = 0x6e0;
    pub const X2APIC_FIRST: u32 = 0x800;
    pub const X2APIC_LAST: u32 = 0x8ff;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
}

use crate::bits::low_u8;
use index::*;

/// MSRs whose guest value is a VMCS guest-state field.
// Each variant names the MSR of that name (SDM Vol. 4, IA32_ prefix
// dropped).
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmcsMsr {
    Efer,
    Pat,
    FsBase,
    GsBase,
    SysenterCs,
    SysenterEsp,
    SysenterEip,
    DebugCtl,
}

/// MSRs the processor holds for the guest while it runs (not switched by
/// VMX; the host does not use them, so they stay loaded between exits and
/// are swapped only when the CPU switches vCPUs).
pub const PROCESSOR_HELD: [u32; 6] = [STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE, TSC_AUX];

/// Processor-held MSRs the guest changes without an exit: SWAPGS exchanges
/// GS.base with IA32_KERNEL_GS_BASE (SDM Vol. 2B, SWAPGS). Their value is
/// the processor's: RDMSR reads it there ([`Read::Processor`]), and a CPU
/// that switches vCPUs saves it from there first
/// ([`GuestMsrs::save_from_processor`]).
pub const CHANGED_WITHOUT_EXIT: [u32; 1] = [KERNEL_GS_BASE];

/// What an RDMSR reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// This value.
    Value(u64),
    /// The guest's value in the VMCS guest-state field for this MSR.
    Vmcs(VmcsMsr),
    /// The guest's time-stamp counter (the host's; no offset).
    Tsc,
    /// The vCPU's IA32_APIC_BASE (kept with its local APIC).
    ApicBase,
    /// An x2APIC register of the vCPU's local APIC.
    Lapic(u32),
    /// The processor's value (the guest may have changed it natively).
    Processor(u32),
    /// The local APIC timer's TSC deadline (SDM 11.5.4.1).
    TscDeadline,
    /// The read faults: inject #GP(0).
    Fault,
}

/// What a WRMSR does, after its checks passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Stored in [`GuestMsrs`]; nothing else to do.
    Stored,
    /// Stored, and the processor must hold the value while the guest runs.
    Load(u32, u64),
    /// Write the VMCS guest-state field for this MSR.
    Vmcs(VmcsMsr, u64),
    /// Set IA32_APIC_BASE (the local APIC may change mode).
    ApicBase(u64),
    /// Write this x2APIC register (MSR index, value) of the vCPU's local APIC.
    Lapic(u32, u64),
    /// Arm the local APIC timer for this TSC deadline (SDM 11.5.4.1; 0 disarms).
    TscDeadline(u64),
    /// The write faults: inject #GP(0).
    Fault,
}

/// The guest state a write check needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteContext {
    /// The current guest EFER (from the VMCS).
    pub efer: u64,
    /// CR0.PG of the guest.
    pub paging: bool,
}

const FIXED_MTRRS: usize = 11;
const VARIABLE_MTRRS: usize = 8;
/// MTRRcap: 8 variable ranges, fixed ranges supported, WC supported.
const MTRR_CAP_VALUE: u64 = 0x508;
/// Physical-address width the guest is told (CPUID 0x80000008 says so
/// too); bits above it in MTRR base/mask registers are reserved.
const PHYS_BITS: u32 = 39;

/// One vCPU's MSRs that live neither in the VMCS nor in the local APIC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestMsrs {
    processor: [u64; PROCESSOR_HELD.len()],
    mtrr_fixed: [u64; FIXED_MTRRS],
    mtrr_variable: [u64; 2 * VARIABLE_MTRRS],
    mtrr_def_type: u64,
    misc_enable: u64,
}

impl GuestMsrs {
    /// The values the processor must hold for this vCPU, as (MSR, value).
    pub fn processor_held(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        PROCESSOR_HELD
            .iter()
            .copied()
            .zip(self.processor.iter().copied())
    }

    /// Records the processor's value of an MSR the guest changes without
    /// an exit (others are ignored), before another vCPU's is loaded.
    pub fn save_from_processor(&mut self, msr: u32, value: u64) {
        if CHANGED_WITHOUT_EXIT.contains(&msr)
            && let Some(slot) = self.slot(msr)
        {
            *slot = value;
        }
    }

    fn get(&self, msr: u32) -> Option<u64> {
        match location(msr)? {
            Location::Processor(i) => self.processor.get(i).copied(),
            Location::Variable(i) => self.mtrr_variable.get(i).copied(),
            Location::Fixed(i) => self.mtrr_fixed.get(i).copied(),
            Location::DefType => Some(self.mtrr_def_type),
            Location::MiscEnable => Some(self.misc_enable),
        }
    }

    fn slot(&mut self, msr: u32) -> Option<&mut u64> {
        match location(msr)? {
            Location::Processor(i) => self.processor.get_mut(i),
            Location::Variable(i) => self.mtrr_variable.get_mut(i),
            Location::Fixed(i) => self.mtrr_fixed.get_mut(i),
            Location::DefType => Some(&mut self.mtrr_def_type),
            Location::MiscEnable => Some(&mut self.misc_enable),
        }
    }
}

/// Where in [`GuestMsrs`] an MSR is kept.
enum Location {
    Processor(usize),
    Variable(usize),
    Fixed(usize),
    DefType,
    MiscEnable,
}

fn location(msr: u32) -> Option<Location> {
    if let Some(i) = PROCESSOR_HELD.iter().position(|&m| m == msr) {
        return Some(Location::Processor(i));
    }
    match msr {
        MTRR_PHYS_FIRST..=MTRR_PHYS_LAST => {
            Some(Location::Variable((msr - MTRR_PHYS_FIRST) as usize))
        }
        MTRR_DEF_TYPE => Some(Location::DefType),
        MISC_ENABLE => Some(Location::MiscEnable),
        m => fixed_mtrr(m).map(Location::Fixed),
    }
}

/// The fixed-range MTRR's index (0..11), if `msr` is one.
fn fixed_mtrr(msr: u32) -> Option<usize> {
    match msr {
        MTRR_FIX_64K => Some(0),
        MTRR_FIX_16K_80000 => Some(1),
        MTRR_FIX_16K_A0000 => Some(2),
        MTRR_FIX_4K_FIRST..=MTRR_FIX_4K_LAST => Some(3 + (msr - MTRR_FIX_4K_FIRST) as usize),
        _ => None,
    }
}

fn vmcs_msr(msr: u32) -> Option<VmcsMsr> {
    Some(match msr {
        EFER => VmcsMsr::Efer,
        PAT => VmcsMsr::Pat,
        FS_BASE => VmcsMsr::FsBase,
        GS_BASE => VmcsMsr::GsBase,
        SYSENTER_CS => VmcsMsr::SysenterCs,
        SYSENTER_ESP => VmcsMsr::SysenterEsp,
        SYSENTER_EIP => VmcsMsr::SysenterEip,
        DEBUGCTL => VmcsMsr::DebugCtl,
        _ => return None,
    })
}

/// RDMSR.
pub fn read(msrs: &GuestMsrs, msr: u32) -> Read {
    if let Some(v) = vmcs_msr(msr) {
        return Read::Vmcs(v);
    }
    match msr {
        TSC => Read::Tsc,
        APIC_BASE => Read::ApicBase,
        X2APIC_FIRST..=X2APIC_LAST => Read::Lapic(msr),
        TSC_DEADLINE => Read::TscDeadline,
        PLATFORM_ID | BIOS_SIGN_ID | MCG_CAP | MCG_STATUS | TSC_ADJUST => Read::Value(0),
        // Locked, VMX disabled both inside and outside SMX.
        FEATURE_CONTROL => Read::Value(1),
        MTRR_CAP => Read::Value(MTRR_CAP_VALUE),
        m if CHANGED_WITHOUT_EXIT.contains(&m) => Read::Processor(m),
        _ => msrs.get(msr).map_or(Read::Fault, Read::Value),
    }
}

/// WRMSR: checks the value, then says where it goes.
pub fn write(msrs: &mut GuestMsrs, ctx: WriteContext, msr: u32, value: u64) -> Write {
    if let Some(v) = vmcs_msr(msr) {
        return match checked_vmcs_value(v, ctx, value) {
            Some(value) => Write::Vmcs(v, value),
            None => Write::Fault,
        };
    }
    let legal = match msr {
        APIC_BASE => return Write::ApicBase(value),
        X2APIC_FIRST..=X2APIC_LAST => return Write::Lapic(msr, value),
        TSC_DEADLINE => return Write::TscDeadline(value),
        // Microcode update loads are refused; writing 0 before reading the
        // revision (the documented way to read it) is fine. TSC_ADJUST
        // stays 0: the guest's TSC is the processor's (SDM Vol. 3B,
        // "Time-Stamp Counter Adjustment").
        BIOS_SIGN_ID | TSC_ADJUST => {
            return if value == 0 {
                Write::Stored
            } else {
                Write::Fault
            };
        }
        STAR | SFMASK => true,
        LSTAR | CSTAR | KERNEL_GS_BASE => canonical(value),
        TSC_AUX => value >> 32 == 0,
        MTRR_DEF_TYPE => value & !0xcff == 0 && memory_type(low_u8(value)),
        MISC_ENABLE => true,
        MTRR_PHYS_FIRST..=MTRR_PHYS_LAST => variable_mtrr(msr, value),
        m if fixed_mtrr(m).is_some() => value.to_le_bytes().iter().all(|t| memory_type(*t)),
        _ => false,
    };
    let Some(slot) = msrs.slot(msr).filter(|_| legal) else {
        return Write::Fault;
    };
    *slot = value;
    if PROCESSOR_HELD.contains(&msr) {
        Write::Load(msr, value)
    } else {
        Write::Stored
    }
}

/// EFER bits (SDM Vol. 3A, 2.2.1): SCE (0), LME (8), LMA (10), NXE (11).
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_WRITABLE: u64 = 1 | EFER_LME | EFER_LMA | 1 << 11;

fn checked_vmcs_value(msr: VmcsMsr, ctx: WriteContext, value: u64) -> Option<u64> {
    match msr {
        VmcsMsr::Efer => {
            // LME may not change while paging is on (SDM 10.8.5: #GP), and
            // LMA is the processor's: the written bit is ignored.
            let lme_changes = (value ^ ctx.efer) & EFER_LME != 0;
            (value & !EFER_WRITABLE == 0 && !(ctx.paging && lme_changes))
                .then_some((value & !EFER_LMA) | (ctx.efer & EFER_LMA))
        }
        VmcsMsr::Pat => value
            .to_le_bytes()
            .iter()
            .all(|t| pat_type(*t))
            .then_some(value),
        VmcsMsr::FsBase | VmcsMsr::GsBase | VmcsMsr::SysenterEsp | VmcsMsr::SysenterEip => {
            canonical(value).then_some(value)
        }
        VmcsMsr::SysenterCs => (value >> 32 == 0).then_some(value),
        // Branch tracing and its friends are not offered.
        VmcsMsr::DebugCtl => (value == 0).then_some(value),
    }
}

/// A 48-bit canonical address: bits 63:47 all equal.
pub fn canonical(addr: u64) -> bool {
    ((addr as i64) << 16 >> 16) as u64 == addr
}

/// PAT entries: UC, WC, WT, WP, WB, UC- (SDM Table 11-10).
fn pat_type(t: u8) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6 | 7)
}

/// MTRR memory types: UC, WC, WT, WP, WB (SDM Table 11-8).
fn memory_type(t: u8) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// IA32_MTRR_PHYSBASEn (even) / PHYSMASKn (odd), SDM Figure 11-7.
fn variable_mtrr(msr: u32, value: u64) -> bool {
    let above_phys = !((1u64 << PHYS_BITS) - 1);
    if (msr - MTRR_PHYS_FIRST).is_multiple_of(2) {
        value & (above_phys | 0xf00) == 0 && memory_type(low_u8(value))
    } else {
        value & (above_phys | 0x7ff) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGING: WriteContext = WriteContext {
        efer: EFER_LME | EFER_LMA,
        paging: true,
    };
    const FLAT: WriteContext = WriteContext {
        efer: 0,
        paging: false,
    };

    #[test]
    fn unknown_msrs_fault_both_ways() {
        let mut m = GuestMsrs::default();
        for msr in [0x0, 0x48, 0x10a, 0xc001_0000, 0xdead_beef, 0x4b56_4d00] {
            assert_eq!(read(&m, msr), Read::Fault, "{msr:#x}");
            assert_eq!(write(&mut m, FLAT, msr, 0), Write::Fault, "{msr:#x}");
        }
    }

    #[test]
    fn efer_rules() {
        let mut m = GuestMsrs::default();
        assert_eq!(
            write(&mut m, FLAT, EFER, EFER_LME | 1),
            Write::Vmcs(VmcsMsr::Efer, EFER_LME | 1)
        );
        assert_eq!(write(&mut m, FLAT, EFER, 1 << 1), Write::Fault, "reserved");
        assert_eq!(
            write(&mut m, PAGING, EFER, 0),
            Write::Fault,
            "LME off while paging"
        );
        // LMA written is ignored; the current one is kept.
        assert_eq!(
            write(&mut m, PAGING, EFER, EFER_LME | 1 << 11),
            Write::Vmcs(VmcsMsr::Efer, EFER_LME | EFER_LMA | 1 << 11)
        );
        assert_eq!(
            write(&mut m, FLAT, EFER, EFER_LMA),
            Write::Vmcs(VmcsMsr::Efer, 0)
        );
    }

    #[test]
    fn addresses_must_be_canonical() {
        let mut m = GuestMsrs::default();
        for msr in [
            FS_BASE,
            GS_BASE,
            LSTAR,
            CSTAR,
            KERNEL_GS_BASE,
            SYSENTER_EIP,
            SYSENTER_ESP,
        ] {
            assert_eq!(
                write(&mut m, FLAT, msr, 0x8000_0000_0000),
                Write::Fault,
                "{msr:#x}"
            );
            assert_eq!(
                write(&mut m, FLAT, msr, 0x8000_0000_0000_0000),
                Write::Fault
            );
            assert_ne!(
                write(&mut m, FLAT, msr, 0xffff_8000_0000_0000),
                Write::Fault
            );
            assert_ne!(write(&mut m, FLAT, msr, 0x7fff_ffff_f000), Write::Fault);
        }
        assert!(canonical(0) && canonical(u64::MAX) && !canonical(1 << 47));
    }

    #[test]
    fn processor_held_msrs_are_stored_and_loaded() {
        let mut m = GuestMsrs::default();
        assert_eq!(
            write(&mut m, FLAT, LSTAR, 0xffff_ffff_8100_0000),
            Write::Load(LSTAR, 0xffff_ffff_8100_0000)
        );
        assert_eq!(read(&m, LSTAR), Read::Value(0xffff_ffff_8100_0000));
        assert_eq!(write(&mut m, FLAT, TSC_AUX, 1 << 32), Write::Fault);
        assert!(
            m.processor_held()
                .any(|(msr, v)| msr == LSTAR && v == 0xffff_ffff_8100_0000)
        );
    }

    #[test]
    fn kernel_gs_base_is_the_processors_because_swapgs_changes_it() {
        let mut m = GuestMsrs::default();
        assert_eq!(
            write(&mut m, FLAT, KERNEL_GS_BASE, 0xffff_8880_0000_0000),
            Write::Load(KERNEL_GS_BASE, 0xffff_8880_0000_0000)
        );
        assert_eq!(read(&m, KERNEL_GS_BASE), Read::Processor(KERNEL_GS_BASE));
        // The guest swapped GS; the CPU saves what the processor holds.
        m.save_from_processor(KERNEL_GS_BASE, 0x7f00_0000);
        assert!(
            m.processor_held()
                .any(|(msr, v)| msr == KERNEL_GS_BASE && v == 0x7f00_0000)
        );
        m.save_from_processor(LSTAR, 1);
        assert_eq!(read(&m, LSTAR), Read::Value(0), "only SWAPGS's MSR");
    }

    #[test]
    fn pat_and_mtrrs_take_valid_memory_types_only() {
        let mut m = GuestMsrs::default();
        assert_eq!(
            write(&mut m, FLAT, PAT, 0x0007_0406_0007_0406),
            Write::Vmcs(VmcsMsr::Pat, 0x0007_0406_0007_0406)
        );
        assert_eq!(write(&mut m, FLAT, PAT, 0x0002), Write::Fault);
        assert_eq!(write(&mut m, FLAT, MTRR_DEF_TYPE, 0xc06), Write::Stored);
        assert_eq!(read(&m, MTRR_DEF_TYPE), Read::Value(0xc06));
        assert_eq!(write(&mut m, FLAT, MTRR_DEF_TYPE, 0x1006), Write::Fault);
        assert_eq!(
            write(&mut m, FLAT, MTRR_DEF_TYPE, 0x7),
            Write::Fault,
            "UC- is not an MTRR type"
        );
        assert_eq!(
            write(&mut m, FLAT, 0x268, 0x0606_0606_0606_0606),
            Write::Stored
        );
        assert_eq!(
            write(&mut m, FLAT, 0x26f, 0x0606_0606_0606_0602),
            Write::Fault
        );
        assert_eq!(write(&mut m, FLAT, 0x200, 0x8000_0006), Write::Stored);
        assert_eq!(
            write(&mut m, FLAT, 0x200, 1 << 40 | 6),
            Write::Fault,
            "above the address width"
        );
        assert_eq!(
            write(&mut m, FLAT, 0x201, 0xffff_f000 | 1 << 11),
            Write::Stored
        );
        assert_eq!(write(&mut m, FLAT, 0x201, 0x100), Write::Fault);
        assert_eq!(read(&m, MTRR_CAP), Read::Value(0x508));
    }

    #[test]
    fn the_rest_of_the_table() {
        let mut m = GuestMsrs::default();
        assert_eq!(read(&m, TSC), Read::Tsc);
        assert_eq!(write(&mut m, FLAT, TSC, 5), Write::Fault);
        // TSC_ADJUST reads 0 and keeps it: the guest TSC has no offset.
        assert_eq!(read(&m, TSC_ADJUST), Read::Value(0));
        assert_eq!(write(&mut m, FLAT, TSC_ADJUST, 0), Write::Stored);
        assert_eq!(write(&mut m, FLAT, TSC_ADJUST, 1), Write::Fault);
        assert_eq!(read(&m, FEATURE_CONTROL), Read::Value(1));
        assert_eq!(write(&mut m, FLAT, FEATURE_CONTROL, 5), Write::Fault);
        assert_eq!(read(&m, 0x830), Read::Lapic(0x830));
        assert_eq!(write(&mut m, FLAT, 0x80b, 0), Write::Lapic(0x80b, 0));
        assert_eq!(
            write(&mut m, FLAT, APIC_BASE, 0xfee0_0d00),
            Write::ApicBase(0xfee0_0d00)
        );
        assert_eq!(write(&mut m, FLAT, TSC_DEADLINE, 9), Write::TscDeadline(9));
        assert_eq!(write(&mut m, FLAT, BIOS_SIGN_ID, 0), Write::Stored);
        assert_eq!(write(&mut m, FLAT, BIOS_SIGN_ID, 0x1000), Write::Fault);
        assert_eq!(write(&mut m, FLAT, DEBUGCTL, 1), Write::Fault);
        assert_eq!(write(&mut m, FLAT, SYSENTER_CS, 1 << 32), Write::Fault);
    }

    proptest::proptest! {
        #[test]
        fn any_access_gets_an_answer(msr: u32, value: u64, efer: u64, paging: bool) {
            // Also the low and the 0xC000_0000 ranges, where most
            // architectural MSRs are.
            for msr in [msr, msr & 0x1ff, 0xc000_0000 | (msr & 0x1ff)] {
                let mut m = GuestMsrs::default();
                let _ = read(&m, msr);
                let before = m.clone();
                match write(&mut m, WriteContext { efer, paging }, msr, value) {
                    // A refused write changes nothing.
                    Write::Fault => proptest::prop_assert_eq!(&m, &before),
                    // A stored value is what the guest reads back.
                    Write::Stored => {
                        proptest::prop_assert_eq!(read(&m, msr), Read::Value(value), "{:#x}", msr);
                    }
                    _ => {}
                }
            }
        }
    }
}
