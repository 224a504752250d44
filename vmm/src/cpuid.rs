//! The CPUID policy (SDM Vol. 2A, CPUID; leaf numbers below): the guest
//! sees the host processor with everything Atoll does not virtualise
//! removed, its own topology, and Atoll's hypervisor leaves.
//!
//! | leaf | guest sees |
//! |---|---|
//! | 0 | host vendor; max leaf 0x16 |
//! | 1 | host signature; EBX: its APIC ID, vCPU count; ECX: no VMX, SMX, MONITOR, DS, EST, TM2, SDBG, PDCM; x2APIC, TSC-deadline and "hypervisor" set; OSXSAVE = guest CR4.OSXSAVE; EDX: no DS, ACPI, TM, PBE; HTT with 2+ vCPUs |
//! | 2, 0xD | host |
//! | 4 | host caches, one package of `vcpus` cores |
//! | 5, 0xA | zero (no MONITOR/MWAIT or performance monitoring) |
//! | 6 | EAX: ARAT only (the virtual APIC timer runs in every C-state) |
//! | 7.0 | host minus SGX, HLE, RTM, TSXLDTRK, MPX, PQM/PQE, PT, PKU/OSPKE, CET, LA57, WAITPKG, TME, KL, bus-lock detect, ENQCMD, SGX-LC, PCONFIG, hybrid and the speculation-control MSR bits (their MSRs or controls are not offered); INVPCID and RDPID only when the VMCS enables them |
//! | 0xB | one thread per core, `vcpus` cores; EDX = x2APIC ID |
//! | 0x15 | EAX = EBX = 1, ECX = TSC Hz: the "crystal" is the TSC itself, so Linux takes the TSC and APIC timer rates from it (0 if it does not fit 32 bits) |
//! | 0x16 | EAX, EBX, ECX: TSC MHz (base, max, bus) |
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
/// Up to the frequency leaves 0x15 and 0x16 (whatever the host has: they
/// describe the VM's clocks, not the host's).
const MAX_BASIC: u32 = 0x16;
const MAX_EXTENDED: u32 = 0x8000_0008;
const HYPERVISOR_MAX: u32 = 0x4000_0010;
/// Guest-physical address bits (MSR checks use the same).
pub const PHYS_BITS: u32 = 39;

/// The host's CPUID.
pub trait HostCpuid {
    /// The host's answer to CPUID `leaf`/`subleaf`: EAX, EBX, ECX, EDX.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
}

/// What the guest's answer depends on besides the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// The vCPU's x2APIC ID (leaf 1 `EBX[31:24]` holds its low byte, leaf 0BH EDX all of it).
    pub apic_id: u32,
    /// How many vCPUs the VM has (leaves 1, 4 and 0BH report the count).
    pub vcpus: u32,
    /// The TSC rate in kHz (leaves 15H, 16H and 4000_0010H report it).
    pub tsc_khz: u32,
    /// The local APIC timer's rate in kHz (leaf 4000_0010H EBX).
    pub lapic_khz: u32,
    /// Guest CR4.OSXSAVE (leaf 1 ECX[27] mirrors it).
    pub osxsave: bool,
    /// Whether RDTSCP is enabled in the VMCS (else RDTSCP and RDPID raise
    /// #UD).
    pub rdtscp: bool,
    /// Whether INVPCID is enabled in the VMCS (else it raises #UD).
    pub invpcid: bool,
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
    // Leaf 6 EAX: always-running APIC timer.
    pub const ARAT: u32 = 1 << 2;
    // Leaf 7.0 EBX: SGX, HLE, RTM, PQM, MPX, PQE, PT. TSC_ADJUST (1) is
    // offered: its MSR reads 0 on every vCPU (msr.rs). With it, an
    // invariant TSC and few NUMA nodes, Linux trusts the TSC without its
    // clocksource watchdog; the watchdog compares the TSC with jiffies,
    // which fall behind when a vCPU's ticks are late (time-shared CPUs,
    // slow emulators), and would move the guest to a jiffies clock.
    // Atoll's guests read the processor's TSC, the same on every vCPU.
    pub const L7_EBX_HIDDEN: u32 =
        1 << 2 | 1 << 4 | 1 << 11 | 1 << 12 | 1 << 14 | 1 << 15 | 1 << 25;
    pub const INVPCID: u32 = 1 << 10;
    // Leaf 7.0 ECX: PKU (3), OSPKE (4), WAITPKG (5), CET_SS (7), TME (13),
    // LA57 (16: 5-level paging, which the guest's EPT-backed address
    // space and our page walker do not cover), KL (23), bus-lock detect
    // (24), ENQCMD (29), SGX-LC (30).
    pub const L7_ECX_HIDDEN: u32 = 1 << 3
        | 1 << 4
        | 1 << 5
        | 1 << 7
        | 1 << 13
        | 1 << 16
        | 1 << 23
        | 1 << 24
        | 1 << 29
        | 1 << 30;
    pub const RDPID: u32 = 1 << 22;
    // Leaf 7.0 EDX: hybrid (15), TSXLDTRK (16), PCONFIG (18), CET_IBT (20),
    // IBRS/IBPB, STIBP, L1D_FLUSH, ARCH_CAPABILITIES, CORE_CAPABILITIES,
    // SSBD (26-31).
    pub const L7_EDX_HIDDEN: u32 = 1 << 15
        | 1 << 16
        | 1 << 18
        | 1 << 20
        | 1 << 26
        | 1 << 27
        | 1 << 28
        | 1 << 29
        | 1 << 30
        | 1 << 31;
    // 0x80000001 ECX SVM, EDX RDTSCP.
    pub const SVM: u32 = 1 << 2;
    pub const RDTSCP: u32 = 1 << 27;
}

/// CPUID leaf `leaf`, subleaf `subleaf`, as the guest sees it.
pub fn guest_cpuid(host: &impl HostCpuid, ctx: &Context, leaf: u32, subleaf: u32) -> [u32; 4] {
    let h = || host.cpuid(leaf, subleaf);
    match leaf {
        0 => {
            let [_, b, c, d] = h();
            [MAX_BASIC, b, c, d]
        }
        1 => leaf1(h(), ctx),
        2 | 0xd => h(),
        4 => {
            let [a, b, c, d] = h();
            let cores = ctx.vcpus.clamp(1, 64) - 1;
            [(a & 0x03ff_ffff) | (cores << 26), b, c, d]
        }
        6 => [bits::ARAT, 0, 0, 0],
        7 if subleaf == 0 => {
            let [_, b, c, d] = h();
            let invpcid = if ctx.invpcid { 0 } else { bits::INVPCID };
            let rdpid = if ctx.rdtscp { 0 } else { bits::RDPID };
            [
                0,
                b & !(bits::L7_EBX_HIDDEN | invpcid),
                c & !(bits::L7_ECX_HIDDEN | rdpid),
                d & !bits::L7_EDX_HIDDEN,
            ]
        }
        0xb => topology(ctx, subleaf),
        // SDM CPUID leaf 15H: TSC = ECX * EBX / EAX; with a ratio of 1 the
        // "crystal" is the TSC, which is also the APIC timer's clock
        // (Linux sets lapic_timer_period from ECX). A rate that does not
        // fit says "not enumerated" (ECX 0) rather than a wrong one.
        0x15 => {
            let hz = u64::from(ctx.tsc_khz) * 1000;
            [1, 1, u32::try_from(hz).unwrap_or(0), 0]
        }
        // Leaf 16H: base, maximum and bus frequency in MHz (bits 15:0).
        0x16 => {
            let mhz = (ctx.tsc_khz / 1000).min(0xffff);
            [mhz, mhz, mhz, 0]
        }
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
        invpcid: true,
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
        assert_eq!(guest_cpuid(&AllOnes, &CTX, 0, 0)[0], 0x16);
        assert_eq!(guest_cpuid(&AllOnes, &CTX, 0x8000_0000, 0)[0], 0x8000_0008);
        for leaf in [3, 5, 0xa, 0xe, 0x14, 0x17, 0x1f, 0x8000_0009, 0x4000_0002] {
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
    fn frequency_leaves_and_arat_describe_the_vm_clocks() {
        assert_eq!(
            guest_cpuid(&AllOnes, &CTX, 0x15, 0),
            [1, 1, 2_400_000_000, 0]
        );
        assert_eq!(guest_cpuid(&AllOnes, &CTX, 0x16, 0), [2400, 2400, 2400, 0]);
        let fast = Context {
            tsc_khz: 5_000_000,
            ..CTX
        };
        assert_eq!(guest_cpuid(&AllOnes, &fast, 0x15, 0)[2], 0, "too fast");
        assert_eq!(guest_cpuid(&AllOnes, &fast, 0x16, 0)[0], 5000);
        assert_eq!(guest_cpuid(&AllOnes, &CTX, 6, 0), [bits::ARAT, 0, 0, 0]);
        // Linux wants TSC-deadline and x2APIC in leaf 1 ECX.
        let [_, _, c, _] = guest_cpuid(&AllOnes, &CTX, 1, 0);
        assert_ne!(c & bits::TSC_DEADLINE, 0);
        assert_ne!(c & bits::X2APIC, 0);
        // Even a host without the leaves: they describe the VM.
        struct Old;
        impl HostCpuid for Old {
            fn cpuid(&self, leaf: u32, _: u32) -> [u32; 4] {
                if leaf == 0 { [0xb, 0, 0, 0] } else { [0; 4] }
            }
        }
        assert_eq!(guest_cpuid(&Old, &CTX, 0, 0)[0], 0x16);
        assert_eq!(guest_cpuid(&Old, &CTX, 0x16, 0)[0], 2400);
    }

    #[test]
    fn leaf7_follows_the_vmcs_controls() {
        let [_, b, c, _] = guest_cpuid(&AllOnes, &CTX, 7, 0);
        assert_ne!(b & bits::INVPCID, 0);
        assert_ne!(c & bits::RDPID, 0);
        // PKU, OSPKE, LA57, CET are never offered; TSC_ADJUST is, when
        // the host has it.
        assert_eq!(c & (1 << 3 | 1 << 4 | 1 << 7 | 1 << 16), 0);
        assert_ne!(b & 1 << 1, 0, "TSC_ADJUST");
        let bare = Context {
            invpcid: false,
            rdtscp: false,
            ..CTX
        };
        let [_, b, c, d] = guest_cpuid(&AllOnes, &bare, 7, 0);
        assert_eq!(b & bits::INVPCID, 0);
        assert_eq!(c & bits::RDPID, 0);
        assert_eq!(d & (1 << 20), 0);
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
