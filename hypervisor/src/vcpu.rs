//! A vCPU: its VMCS, its registers while it is not running, and the
//! mechanics of entering it and reading its exit. A vCPU belongs to one CPU
//! of its VM's node for its whole life: only that CPU loads its VMCS or
//! touches its registers (thesis 6.4, the running-thread problem); other
//! CPUs ask for changes through the VM's request flags and a kick IPI.

use atoll_platform::vmcs::{self, Controls, StartMode};
use atoll_platform::vmx::VmxCaps;
use atoll_vmm::exit::{Exit, Registers, gpr};

use crate::arch::kmem::KernelMemory;
use crate::arch::vmcs::{self as fields, GuestReg};
use crate::arch::vmx::{self, EntryFailed, GuestGprs, Vmcs, VmxFail};

/// What a vCPU is doing between runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// Ready to enter the guest.
    Runnable,
    /// Executed HLT: waits for an interrupt for it.
    Halted,
    /// In the `wait` hypercall: waits for a notification or its timeout.
    Waiting,
    /// An AP before its start-up IPI (SDM Vol. 3A, 10.4.2: wait-for-SIPI).
    WaitForSipi,
    /// Its VM ended; never runs again (until a restart resets it).
    Done,
}

/// Why a vCPU could not be set up.
#[derive(Clone, Copy, Debug)]
pub enum SetupError {
    OutOfKernelMemory,
    Vmx(VmxFail),
}

impl From<VmxFail> for SetupError {
    fn from(e: VmxFail) -> Self {
        SetupError::Vmx(e)
    }
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::OutOfKernelMemory => f.write_str("no kernel memory left for a VMCS"),
            SetupError::Vmx(_) => f.write_str("a VMCS field could not be written"),
        }
    }
}

/// What every vCPU of a VM shares in its VMCS.
#[derive(Clone, Copy, Debug)]
pub struct VmcsTemplate {
    pub controls: Controls,
    pub fixed: vmcs::FixedBits,
    pub eptp: u64,
    /// Non-zero and unique per VM on a CPU (SDM 28.1: VPID 0 is the host's).
    pub vpid: u16,
}

pub struct Vcpu {
    pub id: u16,
    vmcs: Vmcs,
    gprs: GuestGprs,
    launched: bool,
    pub state: VcpuState,
    template: VmcsTemplate,
    /// What the VMCS holds now, so unchanged fields are not rewritten on
    /// every entry: interrupt-window exiting, and the preemption timer.
    interrupt_window: bool,
    timer: Option<u32>,
    /// RSP, RIP and RFLAGS as read at the last exit: only what a handler
    /// changed is written back.
    at_exit: [u64; 3],
}

impl Vcpu {
    /// A vCPU with a fresh VMCS from `kmem`, starting as `mode`.
    pub fn new(
        id: u16,
        caps: &VmxCaps,
        template: VmcsTemplate,
        kmem: &mut KernelMemory,
        mode: StartMode,
    ) -> Result<Vcpu, SetupError> {
        let vmcs = vmx::alloc_vmcs(caps, kmem).ok_or(SetupError::OutOfKernelMemory)?;
        let mut vcpu = Vcpu {
            id,
            vmcs,
            gprs: GuestGprs::default(),
            launched: false,
            state: VcpuState::Runnable,
            template,
            interrupt_window: false,
            timer: None,
            at_exit: [0; 3],
        };
        vcpu.reset(mode)?;
        Ok(vcpu)
    }

    /// The control-register fixed bits this vCPU obeys.
    pub fn fixed(&self) -> vmcs::FixedBits {
        self.template.fixed
    }

    /// The execution controls it runs with.
    pub fn controls(&self) -> Controls {
        self.template.controls
    }

    /// Makes this vCPU's VMCS current on this CPU.
    pub fn load(&self) -> Result<(), VmxFail> {
        self.vmcs.load()
    }

    /// Puts the vCPU back to its start state: controls, host state and
    /// guest state written afresh, registers zeroed. The VMCS must be
    /// current ([`load`](Self::load) is called here).
    pub fn reset(&mut self, mode: StartMode) -> Result<(), VmxFail> {
        // A VMCS that was launched must be cleared before VMLAUNCH may use
        // it again (VM-instruction error 4 otherwise, SDM 31.4).
        // The launch state is "clear" from the VMCLEAR on, even if a later
        // step fails: the next entry must then be VMLAUNCH, never VMRESUME.
        self.vmcs.clear()?;
        self.launched = false;
        self.vmcs.load()?;
        let t = &self.template;
        fields::write_initial(&t.controls, &t.fixed, t.eptp, t.vpid, mode)?;
        self.gprs = GuestGprs::default();
        self.interrupt_window = false;
        self.timer = None;
        self.state = match mode {
            StartMode::RealMode { .. } if self.id != 0 => VcpuState::WaitForSipi,
            _ => VcpuState::Runnable,
        };
        Ok(())
    }

    /// Sets a general-purpose register before the first entry (boot
    /// protocols pass values in EAX/EBX).
    pub fn set_gpr(&mut self, n: usize, value: u64) {
        if let Some(r) = self.gprs.gpr.get_mut(n) {
            *r = value;
        }
    }

    /// Enters the guest until its next exit, with at most `slice` ticks of
    /// the VMX preemption timer. The VMCS must be current.
    pub fn enter(&mut self, slice: u32) -> Result<Exit, EntryFailed> {
        // Without "save preemption timer value" the field keeps what was
        // written, and each entry counts down from it afresh.
        if self.timer != Some(slice) {
            let _ = fields::set_preemption_timer(slice);
            self.timer = Some(slice);
        }
        vmx::run(&mut self.gprs, self.launched)?;
        self.launched = true;
        Ok(vmx::read_exit())
    }

    /// Turns interrupt-window exiting (SDM 25.6.2) on or off.
    pub fn set_interrupt_window(&mut self, on: bool) {
        if self.interrupt_window == on {
            return;
        }
        let bit = vmcs::INTERRUPT_WINDOW_EXITING;
        let controls = fields::primary_controls();
        let wanted = if on { controls | bit } else { controls & !bit };
        if fields::set_primary_controls(wanted).is_ok() {
            self.interrupt_window = on;
        }
    }

    /// The guest's registers after an exit (the VMCS must be current).
    pub fn registers(&self) -> Registers {
        let mut gpr = self.gprs.gpr;
        gpr[gpr::RSP] = fields::guest_reg(GuestReg::Rsp);
        Registers {
            gpr,
            rip: fields::guest_reg(GuestReg::Rip),
            rflags: fields::guest_reg(GuestReg::Rflags),
            cr0: fields::guest_reg(GuestReg::Cr0),
            cr3: fields::guest_reg(GuestReg::Cr3),
            cr4: fields::guest_reg(GuestReg::Cr4),
            efer: fields::guest_reg(GuestReg::Efer),
            cpl: fields::guest_cpl(),
        }
    }

    /// The registers an exit handler works on: the GPRs, RSP, RIP, RFLAGS
    /// and CPL, plus the paging registers when `paging` (for walking the
    /// guest's page tables). Fewer VMREADs than [`registers`](Self::registers).
    pub fn exit_registers(&mut self, paging: bool) -> Registers {
        let mut gpr = self.gprs.gpr;
        gpr[gpr::RSP] = fields::guest_reg(GuestReg::Rsp);
        let mut regs = Registers {
            gpr,
            rip: fields::guest_reg(GuestReg::Rip),
            rflags: fields::guest_reg(GuestReg::Rflags),
            cpl: fields::guest_cpl(),
            ..Registers::default()
        };
        if paging {
            regs.cr0 = fields::guest_reg(GuestReg::Cr0);
            regs.cr3 = fields::guest_reg(GuestReg::Cr3);
            regs.cr4 = fields::guest_reg(GuestReg::Cr4);
            regs.efer = fields::guest_reg(GuestReg::Efer);
        }
        self.at_exit = [regs.gpr[gpr::RSP], regs.rip, regs.rflags];
        regs
    }

    /// Writes back what an exit handler changed: the GPRs, and RSP, RIP and
    /// RFLAGS where they differ from the exit. Moving RIP past an
    /// instruction also ends any STI or MOV SS blocking it started (SDM
    /// 25.4.2).
    pub fn set_registers(&mut self, regs: &Registers) -> Result<(), VmxFail> {
        let [rsp, rip, rflags] = self.at_exit;
        self.gprs.gpr = regs.gpr;
        if regs.gpr[gpr::RSP] != rsp {
            fields::set_guest_reg(GuestReg::Rsp, regs.gpr[gpr::RSP])?;
        }
        if regs.rflags != rflags {
            fields::set_guest_reg(GuestReg::Rflags, regs.rflags)?;
        }
        if regs.rip != rip {
            fields::set_guest_reg(GuestReg::Rip, regs.rip)?;
            let blocking = fields::interruptibility();
            if blocking & vmcs::BLOCKING_STI_MOV_SS != 0 {
                fields::set_interruptibility(blocking & !vmcs::BLOCKING_STI_MOV_SS)?;
            }
        }
        self.at_exit = [regs.gpr[gpr::RSP], regs.rip, regs.rflags];
        Ok(())
    }
}
