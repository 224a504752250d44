//! VMX capability MSRs (Intel SDM Vol. 3D, Appendix A) and what they allow.
//!
//! Reading a VMX capability MSR that does not exist raises #GP, so the
//! read order follows the SDM's rules: the secondary controls MSR only when
//! the primary controls allow activating them (A.3.3), the EPT/VPID MSR only
//! when EPT or VPID can be enabled (A.10), the TRUE_* MSRs only when
//! IA32_VMX_BASIC bit 55 says they exist (A.1).

/// Reads a model-specific register. The arch layer implements it with RDMSR;
/// tests with a table.
pub trait MsrRead {
    /// The value of MSR `msr`.
    fn read_msr(&mut self, msr: u32) -> u64;
}

/// MSR indices (SDM Vol. 4, Table 2-2).
// The constants carry the SDM's own MSR names; the table is their doc.
#[allow(missing_docs)]
pub mod msr {
    pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
    pub const IA32_VMX_BASIC: u32 = 0x480;
    pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
    pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
    pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
    pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
    pub const IA32_VMX_MISC: u32 = 0x485;
    pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
    pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
    pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
    pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
    pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
    pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
    pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
    pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
}

/// Control bits Atoll cares about (SDM Vol. 3C, 25.6.2).
mod bits {
    /// IA32_VMX_BASIC bit 55: the TRUE_* control MSRs exist.
    pub const BASIC_TRUE_CTLS: u64 = 1 << 55;
    /// Primary processor-based control 31: activate secondary controls.
    pub const PROC_SECONDARY: u32 = 1 << 31;
    /// Secondary controls: enable EPT (1), enable VPID (5), unrestricted guest (7).
    pub const PROC2_EPT: u32 = 1 << 1;
    pub const PROC2_VPID: u32 = 1 << 5;
    pub const PROC2_UNRESTRICTED: u32 = 1 << 7;
    /// IA32_VMX_EPT_VPID_CAP: page-walk length 4 (6), write-back paging
    /// structures (14), INVEPT (20), INVVPID (32).
    pub const EPT_WALK_4: u64 = 1 << 6;
    pub const EPT_WB: u64 = 1 << 14;
}

/// The raw capability MSR values. A control MSR holds the allowed-0 settings
/// in bits 31:0 and the allowed-1 settings in bits 63:32 (SDM A.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxCaps {
    /// IA32_VMX_BASIC (A.1).
    pub basic: u64,
    /// Pin-based controls (A.3.1), the TRUE_ MSR when it exists.
    pub pinbased: u64,
    /// Primary processor-based controls (A.3.2), the TRUE_ MSR when it
    /// exists.
    pub procbased: u64,
    /// Secondary processor-based controls (A.3.3); 0 when they cannot be
    /// activated.
    pub procbased2: u64,
    /// VM-exit controls (A.4), the TRUE_ MSR when it exists.
    pub exit: u64,
    /// VM-entry controls (A.5), the TRUE_ MSR when it exists.
    pub entry: u64,
    /// IA32_VMX_MISC (A.6).
    pub misc: u64,
    /// IA32_VMX_EPT_VPID_CAP (A.10); 0 unless EPT or VPID can be enabled.
    pub ept_vpid: u64,
    /// IA32_FEATURE_CONTROL: the lock and VMXON-enable bits (SDM Vol. 3C,
    /// 24.7).
    pub feature_control: u64,
    /// CR0/CR4 bits fixed to 1 (FIXED0) and bits allowed to be 1 (FIXED1)
    /// in VMX operation (SDM Vol. 3D, A.7-A.8).
    pub cr0_fixed0: u64,
    /// See `cr0_fixed0`.
    pub cr0_fixed1: u64,
    /// See `cr0_fixed0`.
    pub cr4_fixed0: u64,
    /// See `cr0_fixed0`.
    pub cr4_fixed1: u64,
}

impl VmxCaps {
    /// Reads the capability MSRs. Call only when CPUID.1:ECX.VMX is set.
    pub fn read(msrs: &mut impl MsrRead) -> Self {
        let basic = msrs.read_msr(msr::IA32_VMX_BASIC);
        let true_ctls = basic & bits::BASIC_TRUE_CTLS != 0;
        let pick = |plain, truer| if true_ctls { truer } else { plain };
        let mut caps = VmxCaps {
            basic,
            pinbased: msrs.read_msr(pick(
                msr::IA32_VMX_PINBASED_CTLS,
                msr::IA32_VMX_TRUE_PINBASED_CTLS,
            )),
            procbased: msrs.read_msr(pick(
                msr::IA32_VMX_PROCBASED_CTLS,
                msr::IA32_VMX_TRUE_PROCBASED_CTLS,
            )),
            exit: msrs.read_msr(pick(msr::IA32_VMX_EXIT_CTLS, msr::IA32_VMX_TRUE_EXIT_CTLS)),
            entry: msrs.read_msr(pick(
                msr::IA32_VMX_ENTRY_CTLS,
                msr::IA32_VMX_TRUE_ENTRY_CTLS,
            )),
            misc: msrs.read_msr(msr::IA32_VMX_MISC),
            feature_control: msrs.read_msr(msr::IA32_FEATURE_CONTROL),
            cr0_fixed0: msrs.read_msr(msr::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: msrs.read_msr(msr::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: msrs.read_msr(msr::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: msrs.read_msr(msr::IA32_VMX_CR4_FIXED1),
            ..VmxCaps::default()
        };
        if allowed1(caps.procbased) & bits::PROC_SECONDARY != 0 {
            caps.procbased2 = msrs.read_msr(msr::IA32_VMX_PROCBASED_CTLS2);
            if caps.secondary_allowed(bits::PROC2_EPT) || caps.secondary_allowed(bits::PROC2_VPID) {
                caps.ept_vpid = msrs.read_msr(msr::IA32_VMX_EPT_VPID_CAP);
            }
        }
        caps
    }

    fn secondary_allowed(&self, bit: u32) -> bool {
        allowed1(self.procbased) & bits::PROC_SECONDARY != 0 && allowed1(self.procbased2) & bit != 0
    }

    /// EPT can be enabled with the 4-level walk and write-back paging
    /// structures that Atoll's EPT builder uses.
    pub fn ept(&self) -> bool {
        let needed = bits::EPT_WALK_4 | bits::EPT_WB;
        self.secondary_allowed(bits::PROC2_EPT) && self.ept_vpid & needed == needed
    }

    /// INVEPT single-context and INVVPID single-context exist
    /// (IA32_VMX_EPT_VPID_CAP bits 20, 25, 32 and 41, SDM A.10): how Atoll
    /// drops a VM's cached translations.
    pub fn invalidation(&self) -> bool {
        let needed = 1 << 20 | 1 << 25 | 1 << 32 | 1 << 41;
        self.ept_vpid & needed == needed
    }

    /// VPIDs can be enabled.
    pub fn vpid(&self) -> bool {
        self.secondary_allowed(bits::PROC2_VPID)
    }

    /// The fixed-bit rules for control registers.
    pub fn fixed_bits(&self) -> crate::vmcs::FixedBits {
        crate::vmcs::FixedBits {
            cr0_fixed0: self.cr0_fixed0,
            cr0_fixed1: self.cr0_fixed1,
            cr4_fixed0: self.cr4_fixed0,
            cr4_fixed1: self.cr4_fixed1,
        }
    }

    /// Unrestricted guest (real-mode and unpaged guests) can be enabled.
    pub fn unrestricted_guest(&self) -> bool {
        self.secondary_allowed(bits::PROC2_UNRESTRICTED)
    }
}

/// The allowed-1 half of a control capability MSR.
fn allowed1(ctl: u64) -> u32 {
    (ctl >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    /// MSRs from a table; reading one that is absent records it, as the
    /// hardware would raise #GP.
    struct FakeMsrs {
        values: BTreeMap<u32, u64>,
        faults: Vec<u32>,
    }

    impl MsrRead for FakeMsrs {
        fn read_msr(&mut self, msr: u32) -> u64 {
            self.values.get(&msr).copied().unwrap_or_else(|| {
                self.faults.push(msr);
                0
            })
        }
    }

    fn fake(values: &[(u32, u64)]) -> FakeMsrs {
        FakeMsrs {
            values: values.iter().copied().collect(),
            faults: Vec::new(),
        }
    }

    /// The values Bochs 2.7's corei7_skylake_x model reports (its
    /// `vmx_caps` event).
    fn skylake() -> FakeMsrs {
        fake(&[
            (msr::IA32_FEATURE_CONTROL, 0x5),
            (msr::IA32_VMX_BASIC, 0x00d8_1000_0000_002b),
            (msr::IA32_VMX_MISC, 0x6004_01e0),
            (msr::IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_007f_0000_0016),
            (msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0xf7f9_fffe_0400_6172),
            (msr::IA32_VMX_TRUE_EXIT_CTLS, 0x007f_ffff_0003_6dfb),
            (msr::IA32_VMX_TRUE_ENTRY_CTLS, 0x0000_ffff_0000_11fb),
            (msr::IA32_VMX_PROCBASED_CTLS2, 0x0217_7fff_0000_0000),
            (msr::IA32_VMX_EPT_VPID_CAP, 0x0000_0f01_0633_4141),
            (msr::IA32_VMX_CR0_FIXED0, 0x8000_0021),
            (msr::IA32_VMX_CR0_FIXED1, 0xffff_ffff),
            (msr::IA32_VMX_CR4_FIXED0, 0x2000),
            (msr::IA32_VMX_CR4_FIXED1, 0x0037_67ff),
        ])
    }

    #[test]
    fn decodes_a_full_featured_cpu_and_uses_true_msrs() {
        let mut msrs = skylake();
        let caps = VmxCaps::read(&mut msrs);
        assert!(
            msrs.faults.is_empty(),
            "read absent MSRs {:x?}",
            msrs.faults
        );
        assert!(caps.ept() && caps.vpid() && caps.unrestricted_guest());
        assert!(caps.invalidation());
    }

    #[test]
    fn never_reads_msrs_the_cpu_does_not_have() {
        // No TRUE controls, no secondary controls.
        let mut msrs = fake(&[
            (msr::IA32_FEATURE_CONTROL, 0x5),
            (msr::IA32_VMX_BASIC, 0x1),
            (msr::IA32_VMX_PINBASED_CTLS, 0x16),
            (msr::IA32_VMX_PROCBASED_CTLS, 0x7fff_fffe_0400_6172),
            (msr::IA32_VMX_EXIT_CTLS, 0),
            (msr::IA32_VMX_ENTRY_CTLS, 0),
            (msr::IA32_VMX_MISC, 0),
            (msr::IA32_VMX_CR0_FIXED0, 0x8000_0021),
            (msr::IA32_VMX_CR0_FIXED1, 0xffff_ffff),
            (msr::IA32_VMX_CR4_FIXED0, 0x2000),
            (msr::IA32_VMX_CR4_FIXED1, 0x0037_67ff),
        ]);
        let caps = VmxCaps::read(&mut msrs);
        assert!(
            msrs.faults.is_empty(),
            "read absent MSRs {:x?}",
            msrs.faults
        );
        assert!(!caps.ept() && !caps.vpid() && !caps.unrestricted_guest());
    }

    #[test]
    fn ept_needs_a_four_level_write_back_walk() {
        let mut msrs = skylake();
        msrs.values
            .insert(msr::IA32_VMX_EPT_VPID_CAP, 0x0000_0f01_0633_0141); // no WB
        let caps = VmxCaps::read(&mut msrs);
        assert!(!caps.ept());
        assert!(caps.vpid());
    }
}
