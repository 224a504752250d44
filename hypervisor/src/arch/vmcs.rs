//! Typed access to the fields of the current VMCS (SDM Vol. 3C, 25.4-25.8
//! and Appendix B): code outside `arch` names a guest register or a
//! control by what it is, never by its field encoding. Which values go in
//! is decided in `atoll_platform::vmcs`; this module only reads and writes.

use atoll_platform::vmcs::{self, Controls, FixedBits, StartMode};
use x86::vmx::vmcs::{control, guest, ro};

use super::vmx::{VmxFail, read, write, write_host_state};

/// A guest register held in the guest-state area (SDM 25.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestReg {
    Rsp,
    Rip,
    Rflags,
    Cr0,
    Cr3,
    Cr4,
    Efer,
    Pat,
    FsBase,
    GsBase,
    SysenterCs,
    SysenterEsp,
    SysenterEip,
    DebugCtl,
}

impl GuestReg {
    fn field(self) -> u32 {
        match self {
            GuestReg::Rsp => guest::RSP,
            GuestReg::Rip => guest::RIP,
            GuestReg::Rflags => guest::RFLAGS,
            GuestReg::Cr0 => guest::CR0,
            GuestReg::Cr3 => guest::CR3,
            GuestReg::Cr4 => guest::CR4,
            GuestReg::Efer => guest::IA32_EFER_FULL,
            GuestReg::Pat => guest::IA32_PAT_FULL,
            GuestReg::FsBase => guest::FS_BASE,
            GuestReg::GsBase => guest::GS_BASE,
            GuestReg::SysenterCs => guest::IA32_SYSENTER_CS,
            GuestReg::SysenterEsp => guest::IA32_SYSENTER_ESP,
            GuestReg::SysenterEip => guest::IA32_SYSENTER_EIP,
            GuestReg::DebugCtl => guest::IA32_DEBUGCTL_FULL,
        }
    }
}

/// The guest register `reg` (0 if it cannot be read).
pub fn guest_reg(reg: GuestReg) -> u64 {
    read(reg.field())
}

/// Sets the guest register `reg`.
pub fn set_guest_reg(reg: GuestReg, value: u64) -> Result<(), VmxFail> {
    write(reg.field(), value)
}

/// The guest's CPL: SS.DPL (SDM 25.4.1, access rights bits 6:5).
pub fn guest_cpl() -> u8 {
    ((read(guest::SS_ACCESS_RIGHTS) >> 5) & 3) as u8
}

/// The guest's CS access rights (SDM 25.4.1, Table 25-2).
pub fn guest_cs_rights() -> u64 {
    read(guest::CS_ACCESS_RIGHTS)
}

/// The guest interruptibility state (SDM 25.4.2, Table 25-3).
pub fn interruptibility() -> u64 {
    read(guest::INTERRUPTIBILITY_STATE)
}

/// Sets the guest interruptibility state.
pub fn set_interruptibility(value: u64) -> Result<(), VmxFail> {
    write(guest::INTERRUPTIBILITY_STATE, value)
}

/// The VM-entry interruption-information field (SDM 25.8.3).
pub fn entry_interruption() -> u32 {
    read(control::VMENTRY_INTERRUPTION_INFO_FIELD) as u32
}

/// Sets the VM-entry interruption information and, when given, the
/// exception error code delivered with it (SDM 25.8.3).
pub fn set_entry_interruption(info: u32, error_code: Option<u32>) -> Result<(), VmxFail> {
    if let Some(code) = error_code {
        write(control::VMENTRY_EXCEPTION_ERR_CODE, u64::from(code))?;
    }
    write(control::VMENTRY_INTERRUPTION_INFO_FIELD, u64::from(info))
}

/// The IDT-vectoring information and error-code fields of the last exit
/// (SDM 25.9.3): the event whose delivery the exit cut short, if any.
/// Runs after every exit, so the error code is read only when the field
/// says one was being delivered.
pub fn idt_vectoring() -> (u32, u32) {
    let info = read(ro::IDT_VECTORING_INFO) as u32;
    let error_code = if info & vmcs::interruption::DELIVER_ERROR_CODE != 0 {
        read(ro::IDT_VECTORING_ERR_CODE) as u32
    } else {
        0
    };
    (info, error_code)
}

/// Sets the VM-entry instruction length: how far past RIP the guest
/// returns from an injected software interrupt or exception (SDM 25.8.3).
pub fn set_entry_instruction_len(len: u8) -> Result<(), VmxFail> {
    write(control::VMENTRY_INSTRUCTION_LEN, u64::from(len))
}

/// The primary processor-based execution controls (SDM 25.6.2).
pub fn primary_controls() -> u32 {
    read(control::PRIMARY_PROCBASED_EXEC_CONTROLS) as u32
}

/// Sets the primary processor-based execution controls.
pub fn set_primary_controls(value: u32) -> Result<(), VmxFail> {
    write(control::PRIMARY_PROCBASED_EXEC_CONTROLS, u64::from(value))
}

/// The VM-entry controls (SDM 25.8.1).
pub fn entry_controls() -> u32 {
    read(control::VMENTRY_CONTROLS) as u32
}

/// Sets the VM-entry controls.
pub fn set_entry_controls(value: u32) -> Result<(), VmxFail> {
    write(control::VMENTRY_CONTROLS, u64::from(value))
}

/// Sets the CR0 read shadow: what the guest reads as CR0 (SDM 25.6.6).
pub fn set_cr0_shadow(value: u64) -> Result<(), VmxFail> {
    write(control::CR0_READ_SHADOW, value)
}

/// Sets the CR4 read shadow.
pub fn set_cr4_shadow(value: u64) -> Result<(), VmxFail> {
    write(control::CR4_READ_SHADOW, value)
}

/// Sets the VMX-preemption timer value (SDM 25.4.2).
pub fn set_preemption_timer(ticks: u32) -> Result<(), VmxFail> {
    write(guest::VMX_PREEMPTION_TIMER_VALUE, u64::from(ticks))
}

/// Writes a vCPU's whole VMCS afresh: `controls` (with the entry controls
/// for `mode`), no exceptions or MSR lists, nothing being injected, the
/// EPT pointer and VPID, this CPU's host state, and the initial guest
/// state `atoll_platform::vmcs` computes for `mode`.
pub fn write_initial(
    controls: &Controls,
    fixed: &FixedBits,
    eptp: u64,
    vpid: u16,
    mode: StartMode,
) -> Result<(), VmxFail> {
    let c = controls;
    for (field, value) in [
        (control::PINBASED_EXEC_CONTROLS, c.pin),
        (control::PRIMARY_PROCBASED_EXEC_CONTROLS, c.primary),
        (control::SECONDARY_PROCBASED_EXEC_CONTROLS, c.secondary),
        (control::VMEXIT_CONTROLS, c.exit),
        (
            control::VMENTRY_CONTROLS,
            vmcs::entry_controls(c.entry, mode.long_mode()),
        ),
        (control::EXCEPTION_BITMAP, 0),
        (control::CR3_TARGET_COUNT, 0),
        (control::VMEXIT_MSR_STORE_COUNT, 0),
        (control::VMEXIT_MSR_LOAD_COUNT, 0),
        (control::VMENTRY_MSR_LOAD_COUNT, 0),
        (control::VMENTRY_INTERRUPTION_INFO_FIELD, 0),
    ] {
        write(field, u64::from(value))?;
    }
    write(control::EPTP_FULL, eptp)?;
    write(control::VPID, u64::from(vpid))?;
    write_host_state()?;
    for (field, value) in vmcs::initial_guest_state(mode, fixed) {
        write(field, value)?;
    }
    Ok(())
}
