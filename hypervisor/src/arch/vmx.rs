//! VMX operation (SDM Vol. 3C, chapters 24-28): VMXON on each CPU, VMCS
//! access, and the VM entry/exit path. Only mechanics live here: which
//! controls and guest state to use is decided in `atoll_platform::vmcs`,
//! what an exit means in `atoll_vmm`.
//!
//! The entry/exit path (`vmx_run` below) keeps the host's callee-saved
//! registers and a pointer to the vCPU's register block on the host stack,
//! and points HOST_RSP at that frame, so the exit stub finds the block at
//! `[rsp]`:
//!
//! ```text
//!  host stack at entry:  [rsp]    -> &GuestGprs
//!                        [rsp+8]  .. [rsp+48]: r15 r14 r13 r12 rbx rbp
//!                        [rsp+56] return address into `run`
//! ```

use core::arch::global_asm;

use atoll_platform::vmx::VmxCaps;
use atoll_vmm::GuestPhysAddr;
use atoll_vmm::exit::{Exit, ExitReason};
use x86::vmx::vmcs::{host, ro};

use super::kmem::KernelMemory;

use atoll_platform::vmcs::CR4_VMXE;
use atoll_platform::vmx::msr::IA32_FEATURE_CONTROL;

/// IA32_FEATURE_CONTROL: lock (bit 0) and VMXON outside SMX (bit 2)
/// (SDM Vol. 3C, 24.7).
const FEATURE_LOCKED: u64 = 1 << 0;
const FEATURE_VMX_OUTSIDE_SMX: u64 = 1 << 2;
const IA32_PAT: u32 = 0x277;
const IA32_EFER: u32 = 0xc000_0080;
const IA32_FS_BASE: u32 = 0xc000_0100;
const IA32_GS_BASE: u32 = 0xc000_0101;

/// Why VMX could not be turned on.
#[derive(Clone, Copy, Debug)]
pub enum EnableError {
    /// Firmware locked IA32_FEATURE_CONTROL with VMX off.
    DisabledByFirmware,
    /// VMXON failed (the region or CR0/CR4 were not accepted).
    VmxonFailed,
    OutOfKernelMemory,
}

impl core::fmt::Display for EnableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            EnableError::DisabledByFirmware => {
                "the firmware locked IA32_FEATURE_CONTROL with VMX disabled"
            }
            EnableError::VmxonFailed => "VMXON failed",
            EnableError::OutOfKernelMemory => "no kernel memory left for the VMXON region",
        })
    }
}

/// Turns VMX operation on for this CPU with the 4 KiB VMXON region at
/// `region` (SDM 24.7-24.11): feature control, CR0/CR4 fixed bits, CR4.VMXE,
/// the revision identifier, VMXON.
///
/// # Safety
/// `region` must be a zeroed, 4 KiB aligned page of this node's memory that
/// nothing else uses for as long as VMX stays on, and CPUID must report VMX.
pub unsafe fn enable(caps: &VmxCaps, region: u64) -> Result<(), EnableError> {
    // SAFETY: IA32_FEATURE_CONTROL exists when CPUID reports VMX (caller).
    let control = unsafe { x86::msr::rdmsr(IA32_FEATURE_CONTROL) };
    if control & FEATURE_LOCKED == 0 {
        let wanted = control | FEATURE_LOCKED | FEATURE_VMX_OUTSIDE_SMX;
        // SAFETY: an unlocked feature-control MSR may be written once; this
        // only enables VMX outside SMX and locks it.
        unsafe { x86::msr::wrmsr(IA32_FEATURE_CONTROL, wanted) };
    } else if control & FEATURE_VMX_OUTSIDE_SMX == 0 {
        return Err(EnableError::DisabledByFirmware);
    }
    // SAFETY: setting the bits the fixed MSRs demand (and VMXE) keeps the
    // CPU in its current mode: paging and protection are already on, and
    // NE/VMXE change no behaviour Atoll relies on.
    unsafe {
        let cr0 = (x86::controlregs::cr0().bits() as u64 | caps.cr0_fixed0) & caps.cr0_fixed1;
        x86::controlregs::cr0_write(x86::controlregs::Cr0::from_bits_truncate(cr0 as usize));
        let cr4 = x86::controlregs::cr4().bits() as u64 | caps.cr4_fixed0 | CR4_VMXE;
        x86::controlregs::cr4_write(x86::controlregs::Cr4::from_bits_truncate(
            (cr4 & caps.cr4_fixed1) as usize,
        ));
    }
    let revision = (caps.basic & 0x7fff_ffff) as u32;
    // SAFETY: the caller owns the page at `region`; its first dword holds
    // the VMCS revision identifier (SDM 24.11.5).
    unsafe {
        core::ptr::write_volatile(region as *mut u32, revision);
        x86::bits64::vmx::vmxon(region).map_err(|_| EnableError::VmxonFailed)
    }
}

/// Turns VMX on for this CPU with a VMXON region from the node's kernel
/// memory (which is never reused, so the region stays VMX's).
pub fn enable_on_this_cpu(caps: &VmxCaps, kmem: &mut KernelMemory) -> Result<(), EnableError> {
    let region = kmem
        .alloc_zeroed(4096, 4096)
        .ok_or(EnableError::OutOfKernelMemory)?;
    super::cpu::enable_extended_state();
    // SAFETY: the page is fresh and zeroed, from this node's kernel memory,
    // and the caller checked CPUID.VMX (the capabilities were read).
    unsafe { enable(caps, region) }
}

/// A fresh VMCS from the node's kernel memory, or `None` if memory ran out
/// or VMCLEAR failed. VMX must be on on this CPU.
pub fn alloc_vmcs(caps: &VmxCaps, kmem: &mut KernelMemory) -> Option<Vmcs> {
    let region = kmem.alloc_zeroed(4096, 4096)?;
    // SAFETY: the page is fresh, zeroed and given to this VMCS alone.
    unsafe { Vmcs::new(caps, region) }
}

/// A VMCS region in node memory (SDM 25.2).
pub struct Vmcs {
    phys: u64,
}

impl Vmcs {
    /// Prepares the zeroed 4 KiB page at `region` as a VMCS and clears it.
    ///
    /// # Safety
    /// As for [`enable`]'s region: a zeroed page of node memory used for
    /// nothing else, and VMX must be on on this CPU.
    pub unsafe fn new(caps: &VmxCaps, region: u64) -> Option<Vmcs> {
        let revision = (caps.basic & 0x7fff_ffff) as u32;
        // SAFETY: the caller gives the page to this VMCS alone.
        unsafe {
            core::ptr::write_volatile(region as *mut u32, revision);
            x86::bits64::vmx::vmclear(region).ok()?;
        }
        Some(Vmcs { phys: region })
    }

    /// Clears the VMCS (VMCLEAR, SDM 24.11.3): its launch state becomes
    /// "clear", so the next entry must be VMLAUNCH; it stops being current.
    pub fn clear(&self) -> Result<(), VmxFail> {
        // SAFETY: `phys` is this VMCS's region; VMX is on (a `Vmcs` exists
        // only then); VMCLEAR only flushes and marks that region.
        unsafe { x86::bits64::vmx::vmclear(self.phys) }.map_err(|_| VmxFail)
    }

    /// Makes this the current VMCS of this CPU (VMPTRLD).
    pub fn load(&self) -> Result<(), VmxFail> {
        // SAFETY: `phys` is a cleared VMCS region with the right revision;
        // VMX is on (a `Vmcs` exists only then).
        unsafe { x86::bits64::vmx::vmptrld(self.phys) }.map_err(|_| VmxFail)
    }
}

/// A VMX instruction failed (VMfailInvalid or VMfailValid).
#[derive(Clone, Copy, Debug)]
pub struct VmxFail;

/// Writes a field of the current VMCS.
pub fn write(field: u32, value: u64) -> Result<(), VmxFail> {
    // SAFETY: VMWRITE only touches the current VMCS; with none loaded or an
    // invalid field it fails with a status, which is returned.
    unsafe { x86::bits64::vmx::vmwrite(field, value) }.map_err(|_| VmxFail)
}

/// Reads a field of the current VMCS (0 if it cannot be read).
pub fn read(field: u32) -> u64 {
    // SAFETY: as for `write`: failure is a status, not undefined behaviour.
    unsafe { x86::bits64::vmx::vmread(field) }.unwrap_or(0)
}

/// Writes the host-state area (SDM 25.5, 26.2.2-26.2.4) from this CPU's
/// current state: what the CPU returns to on every exit.
pub fn write_host_state() -> Result<(), VmxFail> {
    // SAFETY: reading control registers, descriptor-table registers and
    // MSRs that exist on every x86-64 CPU has no side effects.
    let (cr0, cr3, cr4, gdtr, idtr, tr, fs_base, gs_base, efer, pat) = unsafe {
        let mut gdtr = x86::dtables::DescriptorTablePointer::<u64>::default();
        let mut idtr = x86::dtables::DescriptorTablePointer::<u64>::default();
        x86::dtables::sgdt(&mut gdtr);
        x86::dtables::sidt(&mut idtr);
        (
            x86::controlregs::cr0().bits() as u64,
            x86::controlregs::cr3(),
            x86::controlregs::cr4().bits() as u64,
            gdtr,
            idtr,
            x86::task::tr(),
            x86::msr::rdmsr(IA32_FS_BASE),
            x86::msr::rdmsr(IA32_GS_BASE),
            x86::msr::rdmsr(IA32_EFER),
            x86::msr::rdmsr(IA32_PAT),
        )
    };
    let tr_base = tss_base(gdtr.base as u64, tr.bits());
    for (field, value) in [
        (host::CR0, cr0),
        (host::CR3, cr3),
        (host::CR4, cr4),
        (host::CS_SELECTOR, 0x08),
        (host::SS_SELECTOR, 0x10),
        (host::DS_SELECTOR, 0x10),
        (host::ES_SELECTOR, 0x10),
        (host::FS_SELECTOR, 0),
        (host::GS_SELECTOR, 0),
        (host::TR_SELECTOR, u64::from(tr.bits())),
        (host::FS_BASE, fs_base),
        (host::GS_BASE, gs_base),
        (host::TR_BASE, tr_base),
        (host::GDTR_BASE, gdtr.base as u64),
        (host::IDTR_BASE, idtr.base as u64),
        (host::IA32_SYSENTER_CS, 0),
        (host::IA32_SYSENTER_ESP, 0),
        (host::IA32_SYSENTER_EIP, 0),
        (host::IA32_EFER_FULL, efer),
        (host::IA32_PAT_FULL, pat),
        (host::RIP, vmx_exit as *const () as u64),
    ] {
        write(field, value)?;
    }
    Ok(())
}

/// The base of the 64-bit TSS whose descriptor is at `selector` in the
/// GDT at `gdt` (SDM Vol. 3A, Figure 8-4).
fn tss_base(gdt: u64, selector: u16) -> u64 {
    let at = gdt + u64::from(selector & !7);
    // SAFETY: the loaded GDT is mapped (the CPU uses it), and TR names a
    // 16-byte system descriptor in it (gdt.rs).
    let (low, high) = unsafe {
        (
            core::ptr::read_volatile(at as *const u64),
            core::ptr::read_volatile((at + 8) as *const u64),
        )
    };
    ((low >> 16) & 0xff_ffff) | (((low >> 56) & 0xff) << 24) | ((high & 0xffff_ffff) << 32)
}

/// The guest's general-purpose registers while it is not running, in
/// encoding order (RSP's slot is unused: RSP lives in the VMCS), and CR2,
/// which VMX does not switch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestGprs {
    pub gpr: [u64; 16],
    pub cr2: u64,
}

const _: () = assert!(core::mem::offset_of!(GuestGprs, cr2) == 128);

/// How a VM entry failed (SDM 26.1-26.2: VMfailInvalid, or VMfailValid
/// with the VM-instruction error number).
#[derive(Clone, Copy, Debug)]
pub struct EntryFailed {
    pub instruction_error: u64,
}

/// Enters the guest of the current VMCS (VMLAUNCH the first time, then
/// VMRESUME) and returns at its next VM exit, with the guest's registers
/// in `gprs`. Host interrupts stay disabled across (RFLAGS.IF is 0 after
/// an exit, SDM 27.5.3).
pub fn run(gprs: &mut GuestGprs, launched: bool) -> Result<(), EntryFailed> {
    // SAFETY: the current VMCS holds a complete host state (HOST_RIP is
    // `vmx_exit`, HOST_RSP is set by `vmx_run` itself) and a guest state;
    // `vmx_run` saves and restores every callee-saved register and writes
    // only `gprs`.
    let status = unsafe { vmx_run(gprs, u64::from(launched)) };
    match status {
        0 => Ok(()),
        1 => Err(EntryFailed {
            instruction_error: u64::MAX,
        }),
        _ => Err(EntryFailed {
            instruction_error: read(ro::VM_INSTRUCTION_ERROR),
        }),
    }
}

/// Reads the exit-information fields into a plain value (SDM 25.9).
pub fn read_exit() -> Exit {
    let raw = read(ro::EXIT_REASON);
    Exit {
        reason: ExitReason::from_basic(raw as u16),
        entry_failed: raw & (1 << 31) != 0,
        qualification: read(ro::EXIT_QUALIFICATION),
        instruction_len: read(ro::VMEXIT_INSTRUCTION_LEN) as u8,
        guest_phys: GuestPhysAddr(read(ro::GUEST_PHYSICAL_ADDR_FULL)),
        interruption: read(ro::VMEXIT_INTERRUPTION_INFO) as u32,
    }
}

/// INVEPT single-context (SDM Vol. 3C, 30.3): drops cached translations
/// derived from the EPT whose pointer is `eptp`, on this CPU.
pub fn invept_single(eptp: u64) {
    let descriptor: [u64; 2] = [eptp, 0];
    // SAFETY: INVEPT only invalidates TLB entries; type 1 is
    // single-context, supported wherever EPT is (Atoll requires INVEPT
    // single-context in its capability check).
    unsafe {
        core::arch::asm!(
            "invept {ty}, [{desc}]",
            ty = in(reg) 1u64,
            desc = in(reg) &descriptor,
            options(nostack)
        );
    }
}

/// INVVPID single-context (SDM Vol. 3C, 30.3): drops this CPU's cached
/// linear translations tagged with `vpid`.
pub fn invvpid_single(vpid: u16) {
    let descriptor: [u64; 2] = [u64::from(vpid), 0];
    // SAFETY: INVVPID only invalidates TLB entries for one VPID.
    unsafe {
        core::arch::asm!(
            "invvpid {ty}, [{desc}]",
            ty = in(reg) 1u64,
            desc = in(reg) &descriptor,
            options(nostack)
        );
    }
}

/// Lets an external interrupt that caused an exit be delivered to the host
/// IDT now: with "acknowledge interrupt on exit" off, it is still pending
/// in the local APIC and fires as soon as interrupts are enabled.
pub fn take_pending_interrupts() {
    // SAFETY: STI; NOP; CLI opens a one-instruction window in which pending
    // interrupts are delivered to the host's handlers, which preserve all
    // registers.
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) }
}

unsafe extern "C" {
    /// Returns 0 after a VM exit, 1 for VMfailInvalid, 2 for VMfailValid.
    fn vmx_run(gprs: *mut GuestGprs, launched: u64) -> u64;
    fn vmx_exit();
}

// The entry/exit path. The guest's GPRs are loaded from and saved to the
// GuestGprs block (offset 8 * encoding number, CR2 at 128).
global_asm!(
    r#"
    .section .text
    .global vmx_run
vmx_run:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rdi
    mov rax, 0x6c14          /* HOST_RSP */
    vmwrite rax, rsp
    jbe 3f
    mov rax, [rdi + 128]
    mov cr2, rax
    cmp rsi, 0               /* flags survive the MOVs below */
    mov rax, [rdi + 0]
    mov rcx, [rdi + 8]
    mov rdx, [rdi + 16]
    mov rbx, [rdi + 24]
    mov rbp, [rdi + 40]
    mov rsi, [rdi + 48]
    mov r8,  [rdi + 64]
    mov r9,  [rdi + 72]
    mov r10, [rdi + 80]
    mov r11, [rdi + 88]
    mov r12, [rdi + 96]
    mov r13, [rdi + 104]
    mov r14, [rdi + 112]
    mov r15, [rdi + 120]
    mov rdi, [rdi + 56]
    jne 2f
    vmlaunch
    jmp 3f
2:  vmresume
3:  /* entry failed: CF = VMfailInvalid, ZF = VMfailValid */
    mov eax, 1
    jc 4f
    mov eax, 2
4:  add rsp, 8
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

    .global vmx_exit
vmx_exit:
    push rdi
    mov rdi, [rsp + 8]
    mov [rdi + 0], rax
    mov [rdi + 8], rcx
    mov [rdi + 16], rdx
    mov [rdi + 24], rbx
    mov [rdi + 40], rbp
    mov [rdi + 48], rsi
    mov [rdi + 64], r8
    mov [rdi + 72], r9
    mov [rdi + 80], r10
    mov [rdi + 88], r11
    mov [rdi + 96], r12
    mov [rdi + 104], r13
    mov [rdi + 112], r14
    mov [rdi + 120], r15
    pop rax
    mov [rdi + 56], rax
    mov rax, cr2
    mov [rdi + 128], rax
    add rsp, 8
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    xor eax, eax
    ret
"#
);
