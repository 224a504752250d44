//! The CPUID policy (SDM Vol. 2A, CPUID; leaf numbers below): the guest
//! sees the host processor with everything Atoll does not virtualise
//! removed, its own topology, and Atoll's hypervisor leaves.
//!
//! | leaf | guest sees |
//! |---|---|
//! | 0 | host vendor; max leaf min(host, 0xD) |
//! | 1 | host signature; EBX: its APIC ID, vCPU count; ECX: no VMX, SMX, MONITOR, DS, EST, TM2, SDBG, PDCM; x2APIC, TSC-deadline and "hypervisor" set; OSXSAVE = guest CR4.OSXSAVE; EDX: no DS, ACPI, TM, PBE; HTT with 2+ vCPUs |
//! | 2, 0xD | host |
//! | 4 | host caches, one package of `vcpus` cores |
//! | 5, 6, 0xA | zero (no MONITOR/MWAIT, power or performance monitoring) |
//! | 7.0 | host minus SGX, HLE, RTM, MPX, PQM/PQE, PT, WAITPKG, SGX-LC and the speculation-control MSR bits (their MSRs are not offered) |
//! | 0xB | one thread per core, `vcpus` cores; EDX = x2APIC ID |
//! | other basic | zero |
//! | 0x40000000 | max hypervisor leaf 0x40000010, signature "AtollHV" |
//! | 0x40000001 | EAX: hypercall ABI version |
//! | 0x40000010 | EAX: TSC kHz, EBX: local APIC timer kHz |
//! | 0x80000000 | max min(host, 0x80000008) |
//! | 0x80000001 | host minus SVM, RDTSCP unless enabled |
//! | 0x80000008 | 39 physical, 48 linear address bits |
//! | other extended | host (brand string, caches, invariant TSC) |

/// The hypercall ABI version (vmm/HYPERCALLS.md).
pub const HYPERCALL_ABI_VERSION: u32 = 1;
/// "AtollHV\0\0\0\0\0" in EBX, ECX, EDX.
pub const SIGNATURE: [u32; 3] = [
    u32::from_le_bytes(*b"Atol"),
    u32::from_le_bytes(*b"lHV\0"),
    0,
];
const MAX_BASIC: u32 = 0xd;
const MAX_EXTENDED: u32 = 0x8000_0008;
const HYPERVISOR_MAX: u32 = 0x4000_0010;
/// Guest-physical address bits (MSR checks use the same).
pub const PHYS_BITS: u32 = 39;

/// The host's CPUID.
pub trait HostCpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
}

/// What the guest's answer depends on besides the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub apic_id: u32,
    pub vcpus: u32,
    pub tsc_khz: u32,
    pub lapic_khz: u32,
    /// Guest CR4.OSXSAVE (leaf 1 ECX[27] mirrors it).
    pub osxsave: bool,
    /// Whether RDTSCP is enabled in the VMCS (else it raises #UD).
    pub rdtscp: bool,
}

mod bits {
    // Leaf 1 ECX.
    pub const DTES64: u32 = 1 << 2;
    pub const MONITOR: u32 = 1 << 3;
    pub const DS_CPL: u32 = 1 << 4;
    pub const VMX: u32 = 1 << 5;
    pub const SMX: u32 = 1 << 6;
    pub const EST: u32 = 1 << 7;
    pub const TM2: u32 = 1 << 8;
    pub const SDBG: u32 = 1 << 11;
    pub const PDCM: u32 = 1 << 15;
    pub const X2APIC: u32 = 1 << 21;
    pub const TSC_DEADLINE: u32 = 1 << 24;
    pub const OSXSAVE: u32 = 1 << 27;
    pub const HYPERVISOR: u32 = 1 << 31;
    // Leaf 1 EDX.
    pub const DS: u32 = 1 << 21;
    pub const ACPI: u32 = 1 << 22;
    pub const HTT: u32 = 1 << 28;
    pub const TM: u32 = 1 << 29;
    pub const PBE: u32 = 1 << 31;
    // Leaf 7.0 EBX: SGX, HLE, RTM, PQM, MPX, PQE, PT.
    pub const L7_EBX_HIDDEN: u32 =
        1 << 2 | 1 << 4 | 1 << 11 | 1 << 12 | 1 << 14 | 1 << 15 | 1 << 25;
    // Leaf 7.0 ECX: WAITPKG, SGX-LC.
    pub const L7_ECX_HIDDEN: u32 = 1 << 5 | 1 << 30;
    // Leaf 7.0 EDX: IBRS/IBPB, STIBP, L1D_FLUSH, ARCH_CAPABILITIES,
    // CORE_CAPABILITIES, SSBD.
    pub const L7_EDX_HIDDEN: u32 = 1 << 26 | 1 << 27 | 1 << 28 | 1 << 29 | 1 << 30 | 1 << 31;
    // 0x80000001 ECX SVM, EDX RDTSCP.
    pub const SVM: u32 = 1 << 2;
    pub const RDTSCP: u32 = 1 << 27;
}

/// CPUID leaf `leaf`, subleaf `subleaf`, as the guest sees it.
pub fn guest_cpuid(host: &impl HostCpuid, ctx: &Context, leaf: u32, subleaf: u32) -> [u32; 4] {
    let h = || host.cpuid(leaf, subleaf);
    match leaf {
        0 => {
            let [max, b, c, d] = h();
            [max.min(MAX_BASIC), b, c, d]
        }
        1 => leaf1(h(), ctx),
        2 | 0xd => h(),
        4 => {
            let [a, b, c, d] = h();
            let cores = ctx.vcpus.clamp(1, 64) - 1;
            [(a & 0x03ff_ffff) | (cores << 26), b, c, d]
        }
        7 if subleaf == 0 => {
            let [_, b, c, d] = h();
            [
                0,
                b & !bits::L7_EBX_HIDDEN,
                c & !bits::L7_ECX_HIDDEN,
                d & !bits::L7_EDX_HIDDEN,
            ]
        }
        0xb => topology(ctx, subleaf),
        0x4000_0000 => [HYPERVISOR_MAX, SIGNATURE[0], SIGNATURE[1], SIGNATURE[2]],
        0x4000_0001 => [HYPERCALL_ABI_VERSION, 0, 0, 0],
        0x4000_0010 => [ctx.tsc_khz, ctx.lapic_khz, 0, 0],
        0x8000_0000 => {
            let [max, b, c, d] = h();
            [max.min(MAX_EXTENDED), b, c, d]
        }
        0x8000_0001 => {
            let [a, b, c, d] = h();
            let rdtscp = if ctx.rdtscp { 0 } else { bits::RDTSCP };
            [a, b, c & !bits::SVM, d & !rdtscp]
        }
        0x8000_0008 => [(48 << 8) | PHYS_BITS, 0, 0, 0],
        0x8000_0002..=0x8000_0007 => h(),
        _ => [0; 4],
    }
}

fn leaf1([a, b, c, d]: [u32; 4], ctx: &Context) -> [u32; 4] {
    let hidden_c = bits::DTES64
        | bits::MONITOR
        | bits::DS_CPL
        | bits::VMX
        | bits::SMX
        | bits::EST
        | bits::TM2
        | bits::SDBG
        | bits::PDCM
        | bits::OSXSAVE;
    let mut c = (c & !hidden_c) | bits::X2APIC | bits::TSC_DEADLINE | bits::HYPERVISOR;
    if ctx.osxsave {
        c |= bits::OSXSAVE;
    }
    let mut d = d & !(bits::DS | bits::ACPI | bits::TM | bits::PBE | bits::HTT);
    if ctx.vcpus > 1 {
        d |= bits::HTT;
    }
    let count = ctx.vcpus.min(255);
    let b = (b & 0xffff) | (count << 16) | ((ctx.apic_id & 0xff) << 24);
    [a, b, c, d]
}

/// Leaf 0xB (SDM "Extended Topology Enumeration"): level 0 = SMT (one
/// thread per core), level 1 = core (`vcpus` cores in the package).
fn topology(ctx: &Context, subleaf: u32) -> [u32; 4] {
    let core_bits = 32 - ctx.vcpus.max(1).saturating_sub(1).leading_zeros();
    match subleaf {
        0 => [0, 1, 0x100, ctx.apic_id],
        1 => [core_bits, ctx.vcpus, 0x200 | 1, ctx.apic_id],
        n => [0, 0, n & 0xff, ctx.apic_id],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that answers every leaf with all bits set, and leaf 0 /
    /// 0x80000000 with large maxima.
    struct AllOnes;

    impl HostCpuid for AllOnes {
        fn cpuid(&self, leaf: u32, _subleaf: u32) -> [u32; 4] {
            match leaf {
                0 => [0x20, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
                0x8000_0000 => [0x8000_0021, 0, 0, 0],
                _ => [u32::MAX; 4],
            }
        }
    }

    const CTX: Context = Context {
        apic_id: 3,
        vcpus: 4,
        tsc_khz: 2_400_000,
        lapic_khz: 2_400_000,
        osxsave: false,
        rdtscp: true,
    };

    #[test]
    fn leaf1_hides_vmx_and_shows_the_vcpu() {
        let [_, b, c, d] = guest_cpuid(&AllOnes, &CTX, 1, 0);
        assert_eq!(c & bits::VMX, 0);
        assert_eq!(c & (bits::SMX | bits::MONITOR | bits::OSXSAVE), 0);
        assert_ne!(c & bits::HYPERVISOR, 0);
        assert_ne!(c & bits::X2APIC, 0);
        assert_eq!(b >> 24, 3);
        assert_eq!((b >> 16) & 0xff, 4);
        assert_ne!(d & bits::HTT, 0);
        assert_eq!(d & bits::ACPI, 0);
        let osx = Context {
            osxsave: true,
            vcpus: 1,
            ..CTX
        };
        let [_, _, c, d] = guest_cpuid(&AllOnes, &osx, 1, 0);
        assert_ne!(c & bits::OSXSAVE, 0);
        assert_eq!(d & bits::HTT, 0);
    }

    #[test]
    fn maxima_are_capped_and_unknown_leaves_are_zero() {
        assert_eq!(guest_cpuid(&AllOnes, &CTX, 0, 0)[0], 0xd);
        assert_eq!(guest_cpuid(&AllOnes, &CTX, 0x8000_0000, 0)[0], 0x8000_0008);
        for leaf in [3, 5, 6, 0xa, 0xe, 0x14, 0x1f, 0x8000_0009, 0x4000_0002] {
            assert_eq!(guest_cpuid(&AllOnes, &CTX, leaf, 0), [0; 4], "{leaf:#x}");
        }
        assert_eq!(guest_cpuid(&AllOnes, &CTX, 7, 1), [0; 4]);
    }

    #[test]
    fn hypervisor_leaves() {
        let [max, b, c, d] = guest_cpuid(&AllOnes, &CTX, 0x4000_0000, 0);
        assert_eq!(max, 0x4000_0010);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&b.to_le_bytes());
        sig[4..8].copy_from_slice(&c.to_le_bytes());
        sig[8..].copy_from_slice(&d.to_le_bytes());
        assert_eq!(&sig, b"AtollHV\0\0\0\0\0");
        assert_eq!(
            guest_cpuid(&AllOnes, &CTX, 0x4000_0001, 0)[0],
            HYPERCALL_ABI_VERSION
        );
        assert_eq!(
            guest_cpuid(&AllOnes, &CTX, 0x4000_0010, 0)[..2],
            [2_400_000, 2_400_000]
        );
    }

    #[test]
    fn leaf7_and_extended_hide_what_is_not_virtualised() {
        let [_, b, c, d] = guest_cpuid(&AllOnes, &CTX, 7, 0);
        assert_eq!(b & bits::L7_EBX_HIDDEN, 0);
        assert_eq!(c & bits::L7_ECX_HIDDEN, 0);
        assert_eq!(d & bits::L7_EDX_HIDDEN, 0);
        let [_, _, c, d] = guest_cpuid(&AllOnes, &CTX, 0x8000_0001, 0);
        assert_eq!(c & bits::SVM, 0);
        assert_ne!(d & bits::RDTSCP, 0);
        let no_rdtscp = Context {
            rdtscp: false,
            ..CTX
        };
        assert_eq!(
            guest_cpuid(&AllOnes, &no_rdtscp, 0x8000_0001, 0)[3] & bits::RDTSCP,
            0
        );
        assert_eq!(guest_cpuid(&AllOnes, &CTX, 0x8000_0008, 0)[0], 0x3027);
    }

    #[test]
    fn topology_leaf_counts_vcpus() {
        assert_eq!(guest_cpuid(&AllOnes, &CTX, 0xb, 0), [0, 1, 0x100, 3]);
        assert_eq!(guest_cpuid(&AllOnes, &CTX, 0xb, 1), [2, 4, 0x201, 3]);
        assert_eq!(guest_cpuid(&AllOnes, &CTX, 0xb, 2), [0, 0, 2, 3]);
        let one = Context { vcpus: 1, ..CTX };
        assert_eq!(guest_cpuid(&AllOnes, &one, 0xb, 1)[0], 0);
        let five = Context { vcpus: 5, ..CTX };
        assert_eq!(guest_cpuid(&AllOnes, &five, 0xb, 1)[0], 3);
        assert_eq!(guest_cpuid(&AllOnes, &CTX, 4, 0)[0] >> 26, 3);
    }

    proptest::proptest! {
        #[test]
        fn every_leaf_answers(leaf: u32, subleaf: u32, vcpus in 0u32..1000, apic_id: u32) {
            let ctx = Context { vcpus, apic_id, ..CTX };
            let r = guest_cpuid(&AllOnes, &ctx, leaf, subleaf);
            if leaf == 1 {
                proptest::prop_assert_eq!(r[2] & bits::VMX, 0);
            }
        }
    }
}
