//! Processor identity and control: CPUID, MSRs, halting.

use atoll_platform::vmx::MsrRead;
use raw_cpuid::CpuId;

/// What CPUID says about this processor that the boot report needs.
pub struct CpuFeatures {
    pub vendor: heapless::String<12>,
    /// CPUID.1:ECX.VMX[bit 5].
    pub vmx: bool,
    /// CPUID.1:ECX.x2APIC[bit 21].
    pub x2apic: bool,
    /// This CPU's initial APIC ID (CPUID.1:EBX[31:24], or the x2APIC ID from
    /// leaf 0xB when present, which is exact above 255).
    pub apic_id: u32,
}

/// Reads the CPUID facts of the current CPU.
pub fn features() -> CpuFeatures {
    let cpuid = CpuId::new();
    let info = cpuid.get_feature_info();
    let mut vendor = heapless::String::new();
    if let Some(v) = cpuid.get_vendor_info() {
        // A vendor string is 12 bytes, so it always fits.
        let _ = vendor.push_str(v.as_str());
    }
    let xapic_id = info
        .as_ref()
        .map_or(0, |f| u32::from(f.initial_local_apic_id()));
    let x2apic_id = cpuid
        .get_extended_topology_info()
        .and_then(|mut levels| levels.next())
        .map(|level| level.x2apic_id());
    CpuFeatures {
        vendor,
        vmx: info.as_ref().is_some_and(|f| f.has_vmx()),
        x2apic: info.as_ref().is_some_and(|f| f.has_x2apic()),
        apic_id: x2apic_id.unwrap_or(xapic_id),
    }
}

/// RDMSR for the VMX capability reader. Only constructed after CPUID has
/// shown VMX support, which is what makes the VMX capability MSRs exist.
pub struct VmxMsrs(());

impl VmxMsrs {
    /// Returns the reader when CPUID reports VMX.
    pub fn new(features: &CpuFeatures) -> Option<Self> {
        features.vmx.then_some(VmxMsrs(()))
    }
}

impl MsrRead for VmxMsrs {
    fn read_msr(&mut self, msr: u32) -> u64 {
        // SAFETY: a `VmxMsrs` exists only when CPUID.1:ECX.VMX is set, and
        // `VmxCaps::read` asks only for the MSRs the SDM (Vol. 3D, A.1-A.10)
        // says then exist, checking the gating capability bits first.
        unsafe { x86::msr::rdmsr(msr) }
    }
}

/// RDMSR of a guest's processor-held MSR (`atoll_vmm::msr::PROCESSOR_HELD`),
/// as the guest left it.
pub fn read_guest_msr(msr: u32) -> u64 {
    // SAFETY: the processor-held MSRs exist on every x86-64 processor
    // (TSC_AUX only with RDTSCP, which the caller checks); reading one has
    // no side effect.
    unsafe { x86::msr::rdmsr(msr) }
}

/// Stops this CPU for good: interrupts off, then HLT in a loop (an NMI or
/// SMI may wake it; it halts again).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CLI and HLT only change this CPU's interrupt flag and
        // run state; nothing is left to run on this CPU.
        unsafe {
            x86::irq::disable();
            x86::halt();
        }
    }
}

/// Executes UD2, so the exception path (IDT, stub, report) can be tested
/// from the command line (`selftest=exception`).
pub fn raise_invalid_opcode() -> ! {
    // SAFETY: UD2 raises #UD, whose IDT handler (idt.rs) reports a panic and
    // never returns; no state is changed before that.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

/// The time-stamp counter (SDM Vol. 3B, 19.17): cycles in hardware, about
/// one tick per emulated instruction in Bochs 2.7.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter; CR4.TSD is clear, so it is
    // allowed at CPL 0 (and everywhere).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Enables interrupts and halts until one arrives, atomically: STI's
/// one-instruction shadow keeps an interrupt from slipping in between, so a
/// wake-up is never missed (SDM Vol. 2B, STI). Returns with interrupts off
/// again, after the handler ran.
pub fn wait_for_interrupt() {
    // SAFETY: the IDT has handlers for every vector this CPU can receive;
    // the handlers preserve all registers, and interrupts end up disabled.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) }
}

/// CPUID leaf `leaf`, subleaf `subleaf`: [EAX, EBX, ECX, EDX].
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// CR4.OSXSAVE (SDM Vol. 3A, 2.5): lets XSETBV/XGETBV run.
const CR4_OSXSAVE: usize = 1 << 18;
/// CR4.OSFXSR: FXSAVE/FXRSTOR include the SSE registers.
const CR4_OSFXSR: usize = 1 << 9;

/// The XCR0 bits this processor supports (CPUID.(EAX=0DH,ECX=0):EDX:EAX),
/// or 0 without XSAVE (CPUID.1:ECX[26]).
pub fn xcr0_supported() -> u64 {
    if cpuid(1, 0)[2] & (1 << 26) == 0 {
        return 0;
    }
    let [a, _, _, d] = cpuid(0xd, 0);
    (u64::from(d) << 32) | u64::from(a)
}

/// Turns on CR4.OSFXSR, and CR4.OSXSAVE when the processor has XSAVE, so
/// guests' extended state can be saved whole when vCPUs switch and a
/// guest's XSETBV (which always exits) can be carried out here.
pub fn enable_extended_state() {
    let xsave = if has_xsave() { CR4_OSXSAVE } else { 0 };
    // SAFETY: OSFXSR and OSXSAVE only enable the FXSAVE/XSAVE instruction
    // families; Atoll's own code never uses extended state (the target has
    // no SSE/AVX code).
    unsafe {
        let cr4 = x86::controlregs::cr4().bits() | CR4_OSFXSR | xsave;
        x86::controlregs::cr4_write(x86::controlregs::Cr4::from_bits_truncate(cr4));
    }
}

/// CPUID.80000001H:EDX.RDTSCP[bit 27]: IA32_TSC_AUX exists.
pub fn has_rdtscp() -> bool {
    cpuid(0x8000_0001, 0)[3] & (1 << 27) != 0
}

/// Bytes XSAVE needs for every feature the processor supports
/// (CPUID.(EAX=0DH,ECX=0):ECX).
pub fn xsave_area_bytes() -> u64 {
    u64::from(cpuid(0xd, 0)[2])
}

/// CPUID.1:ECX.XSAVE[bit 26].
pub fn has_xsave() -> bool {
    cpuid(1, 0)[2] & (1 << 26) != 0
}

/// Loads a guest's value of one of the MSRs the processor holds for the
/// running vCPU (`atoll_vmm::msr::PROCESSOR_HELD`: SYSCALL targets,
/// KERNEL_GS_BASE, TSC_AUX). Other MSRs are refused.
pub fn load_guest_msr(msr: u32, value: u64) {
    if !atoll_vmm::msr::PROCESSOR_HELD.contains(&msr) {
        return;
    }
    if msr == atoll_vmm::msr::index::TSC_AUX && !has_rdtscp() {
        return;
    }
    // SAFETY: these MSRs exist on every x86-64 processor (TSC_AUX when
    // RDTSCP does, checked above), the MSR policy checked the value
    // (canonical addresses), and the host never
    // uses SYSCALL, SWAPGS or RDTSCP, so the guest's values cannot affect
    // it.
    unsafe { x86::msr::wrmsr(msr, value) }
}

/// XSETBV XCR0 with a value the dispatcher checked against
/// [`xcr0_supported`] and the architectural rules. The guest's XCR0 stays
/// loaded while the host runs: the host uses no extended state.
pub fn set_xcr0(value: u64) {
    if xcr0_supported() == 0 {
        return;
    }
    // SAFETY: CR4.OSXSAVE is set (`enable_extended_state` runs before any vCPU),
    // ECX = 0 names XCR0, and the value passed the #GP checks of XSETBV.
    unsafe {
        core::arch::asm!(
            "xsetbv",
            in("ecx") 0u32,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nomem, nostack)
        );
    }
}

/// Guest registers that neither the VMCS nor XSAVE hold: a VM exit leaves
/// CR2, DR0-DR3 and DR6 as the guest had them (SDM Vol. 3C, 28.3: only
/// DR7 is in the guest-state area). A CPU that runs several vCPUs switches
/// them with the vCPU: a page fault's CR2 must survive until the guest's
/// handler reads it, and one VM must not see another's debug registers
/// (MOV DR does not exit).
#[derive(Clone, Copy, Debug)]
pub struct LooseRegs {
    cr2: u64,
    dr: [u64; 4],
    dr6: u64,
}

impl Default for LooseRegs {
    /// The power-on values (SDM Vol. 3A, 10.1.1, Table 10-1).
    fn default() -> Self {
        LooseRegs {
            cr2: 0,
            dr: [0; 4],
            dr6: 0xffff_0ff0,
        }
    }
}

/// The current guest's [`LooseRegs`], as its last VM exit left them.
pub fn save_loose_regs() -> LooseRegs {
    // SAFETY: reading CR2 and the debug registers is allowed at CPL 0 and
    // has no side effect; the host itself neither page-faults in normal
    // operation nor uses the debug registers, so they are the guest's.
    unsafe {
        LooseRegs {
            cr2: x86::controlregs::cr2() as u64,
            dr: [
                x86::debugregs::dr0() as u64,
                x86::debugregs::dr1() as u64,
                x86::debugregs::dr2() as u64,
                x86::debugregs::dr3() as u64,
            ],
            dr6: x86::debugregs::dr6().bits() as u64,
        }
    }
}

/// Loads a vCPU's [`LooseRegs`] before it runs.
pub fn restore_loose_regs(regs: &LooseRegs) {
    // SAFETY: CR2 is only read by page-fault handlers, and the host's DR7
    // is 0 (VM exits load it, SDM 28.5.1), so DR0-DR3 and DR6 arm nothing
    // while the host runs; the values are what this vCPU last had.
    unsafe {
        x86::controlregs::cr2_write(regs.cr2);
        x86::debugregs::dr0_write(regs.dr[0] as usize);
        x86::debugregs::dr1_write(regs.dr[1] as usize);
        x86::debugregs::dr2_write(regs.dr[2] as usize);
        x86::debugregs::dr3_write(regs.dr[3] as usize);
        x86::debugregs::dr6_write(x86::debugregs::Dr6::from_bits_truncate(regs.dr6 as usize));
    }
}
