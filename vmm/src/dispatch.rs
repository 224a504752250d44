//! Exit dispatch: what each VM exit means for the guest, decided from the
//! plain [`Exit`] value and the guest's [`Registers`] alone. Services the
//! VM needs (its devices, MSR and CPUID policy, hypercalls) come through
//! the narrow [`ExitEnv`] trait; the hypervisor implements it, tests fake
//! it. The result is an [`Outcome`] the hypervisor carries out.
//!
//! Instruction semantics follow the SDM: the handler of an instruction
//! exit either completes the instruction (results in registers, RIP moved
//! past it) or injects the fault the instruction would raise, leaving RIP
//! on it (faults are reported at the faulting instruction, SDM Vol. 3A,
//! 7.5).

use crate::addr::GuestPhysAddr;
use crate::bits::low_u32;
use crate::exit::{CrAccess, EptAccess, Exit, ExitReason, IoAccess, Registers, gpr};

/// An exception to inject (SDM Vol. 3A, Table 7-1 vectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The vector (0-31).
    pub vector: u8,
    /// The error code, for the exceptions that push one.
    pub error_code: Option<u32>,
}

impl Fault {
    /// #GP(0).
    pub const GP: Fault = Fault {
        vector: 13,
        error_code: Some(0),
    };
    /// #UD.
    pub const UD: Fault = Fault {
        vector: 6,
        error_code: None,
    };
}

/// Why a VM is stopped. Each names a guest action, never a host failure
/// the guest could not cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Triple fault: the guest could not deliver a double fault (exit 2).
    TripleFault,
    /// VM entry refused the guest state (exit 33) or its MSR list (34).
    InvalidGuestState,
    /// A machine check during entry (exit 41).
    MachineCheck,
    /// VMLAUNCH/VMRESUME failed outright with this VM-instruction error.
    EntryFailed {
        /// The VM-instruction error number (SDM 31.4).
        instruction_error: u64,
    },
    /// An access to guest-physical memory the VM does not own and no
    /// device claims.
    EptViolation {
        /// The guest-physical address accessed.
        gpa: GuestPhysAddr,
        /// What the access was.
        access: EptAccess,
    },
    /// An EPT misconfiguration (a hypervisor bug, contained to the VM).
    EptMisconfig {
        /// The guest-physical address accessed.
        gpa: GuestPhysAddr,
    },
    /// INS/OUTS: string port I/O is not emulated.
    StringIo {
        /// The port accessed.
        port: u16,
    },
    /// A device access by an instruction Atoll does not emulate (its first
    /// opcode byte; 0 if it could not be fetched), or one that leaves the
    /// device.
    MmioUnsupported {
        /// The guest-physical address accessed.
        gpa: GuestPhysAddr,
        /// The instruction's first opcode byte (0 if not fetched).
        opcode: u8,
    },
    /// A control-register access Atoll does not emulate.
    CrAccess {
        /// The exit qualification (SDM Table 28-3).
        qualification: u64,
    },
    /// Every vCPU halted with interrupts disabled and nothing can wake them.
    HaltedForever,
    /// The hypervisor could not set up a vCPU of the VM (VMX or its VMCS on
    /// that CPU): not the guest's doing, so never restarted.
    SetupFailed,
    /// An exception exit Atoll did not ask for.
    UnexpectedException {
        /// The VM-exit interruption information (SDM 25.9.2).
        interruption: u32,
    },
    /// An exit reason Atoll does not handle (the basic reason number).
    UnknownExit {
        /// The basic exit reason number (SDM Appendix C).
        reason: u16,
    },
}

impl StopReason {
    /// The `reason` field of `vm_stopped` events.
    pub fn name(&self) -> &'static str {
        match self {
            StopReason::TripleFault => "triple_fault",
            StopReason::InvalidGuestState => "invalid_guest_state",
            StopReason::MachineCheck => "machine_check",
            StopReason::EntryFailed { .. } => "entry_failed",
            StopReason::EptViolation { .. } => "ept_violation",
            StopReason::EptMisconfig { .. } => "ept_misconfig",
            StopReason::StringIo { .. } => "string_io",
            StopReason::MmioUnsupported { .. } => "mmio_unsupported",
            StopReason::CrAccess { .. } => "cr_access",
            StopReason::HaltedForever => "halted_forever",
            StopReason::SetupFailed => "setup_failed",
            StopReason::UnexpectedException { .. } => "unexpected_exception",
            StopReason::UnknownExit { .. } => "unknown_exit",
        }
    }

    /// Whether the guest crashed (so `on_crash` applies), rather than ended
    /// in a way it chose.
    pub fn is_crash(&self) -> bool {
        !matches!(self, StopReason::HaltedForever | StopReason::SetupFailed)
    }
}

/// What the hypervisor does after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Re-enter the guest (with the registers as the handler left them).
    Resume,
    /// Inject this exception, then re-enter.
    Inject(Fault),
    /// HLT: run the vCPU again once an interrupt for it is pending;
    /// `interrupts_enabled` is RFLAGS.IF (with IF clear only INIT, SIPI or
    /// an NMI could wake it).
    Halt {
        /// RFLAGS.IF at the HLT.
        interrupts_enabled: bool,
    },
    /// A host interrupt caused the exit: let the host take it, then resume.
    HostInterrupt,
    /// A host NMI caused the exit (the host's stop signal): handle it.
    HostNmi,
    /// The time slice ended: let another vCPU of this CPU run.
    Yield,
    /// An INIT signal arrived: the vCPU waits for a start-up IPI.
    Init,
    /// Complete a MOV to CR0/CR4 with this value (already checked against
    /// the architectural rules); RIP is already past the instruction.
    WriteCr {
        /// Control register number (0 or 4).
        cr: u8,
        /// The value to load.
        value: u64,
    },
    /// Complete XSETBV with this XCR0 (already checked).
    SetXcr0(u64),
    /// The VM asked to end with this status (isa-debug-exit or a hypercall).
    PowerOff {
        /// The exit status it gave.
        status: u32,
    },
    /// The guest reset its machine (reset control register, keyboard
    /// controller): a reboot, so the VM starts again from its images.
    Reboot,
    /// Stop the VM.
    Stop(StopReason),
}

/// What the dispatcher needs from the VM and the machine.
pub trait ExitEnv {
    /// CPUID as the guest sees it (the policy already applied).
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// A port read of `size` (1, 2 or 4) bytes.
    fn port_in(&mut self, port: u16, size: u8) -> u32;
    /// A port write; a device may end the VM (isa-debug-exit).
    fn port_out(&mut self, port: u16, size: u8, value: u32) -> Option<Outcome>;
    /// RDMSR; `None` means #GP.
    fn rdmsr(&mut self, msr: u32) -> Option<u64>;
    /// WRMSR; `false` means #GP.
    fn wrmsr(&mut self, msr: u32, value: u64) -> bool;
    /// A VMCALL at `regs.rip` (already past the instruction): perform it and
    /// set its result registers.
    fn hypercall(&mut self, regs: &mut Registers) -> Outcome;
    /// An access to guest-physical memory outside RAM: a device's, or
    /// `None` if no device claims it.
    fn mmio(
        &mut self,
        gpa: GuestPhysAddr,
        access: EptAccess,
        regs: &mut Registers,
    ) -> Option<Outcome>;
    /// The XCR0 bits the host processor supports (CPUID.(EAX=0DH,ECX=0)).
    fn xcr0_supported(&self) -> u64;
}

/// Decides what `exit` means for the guest.
pub fn dispatch(exit: &Exit, regs: &mut Registers, env: &mut impl ExitEnv) -> Outcome {
    match exit.reason {
        ExitReason::Cpuid => cpuid(exit, regs, env),
        ExitReason::Hlt => {
            regs.advance(exit);
            Outcome::Halt {
                interrupts_enabled: regs.rflags & RFLAGS_IF != 0,
            }
        }
        ExitReason::Io => port_io(exit, regs, env),
        ExitReason::Rdmsr => rdmsr(exit, regs, env),
        ExitReason::Wrmsr => wrmsr(exit, regs, env),
        ExitReason::Vmcall => {
            regs.advance(exit);
            env.hypercall(regs)
        }
        ExitReason::CrAccess => cr_access(exit, regs),
        ExitReason::Xsetbv => xsetbv(exit, regs, env),
        ExitReason::EptViolation => {
            let access = EptAccess::decode(exit.qualification);
            env.mmio(exit.guest_phys, access, regs)
                .unwrap_or(Outcome::Stop(StopReason::EptViolation {
                    gpa: exit.guest_phys,
                    access,
                }))
        }
        ExitReason::EptMisconfig => Outcome::Stop(StopReason::EptMisconfig {
            gpa: exit.guest_phys,
        }),
        ExitReason::ExternalInterrupt => Outcome::HostInterrupt,
        ExitReason::ExceptionOrNmi if is_nmi(exit.interruption) => Outcome::HostNmi,
        ExitReason::ExceptionOrNmi => Outcome::Stop(StopReason::UnexpectedException {
            interruption: exit.interruption,
        }),
        ExitReason::PreemptionTimer => Outcome::Yield,
        ExitReason::InterruptWindow => Outcome::Resume,
        ExitReason::Init => Outcome::Init,
        ExitReason::TripleFault => Outcome::Stop(StopReason::TripleFault),
        ExitReason::InvalidGuestState | ExitReason::MsrLoading => {
            Outcome::Stop(StopReason::InvalidGuestState)
        }
        ExitReason::MachineCheck => Outcome::Stop(StopReason::MachineCheck),
        ExitReason::Sipi => Outcome::Stop(StopReason::UnknownExit { reason: 4 }),
        // VMX instructions (VMCALL aside): the guest sees no VMX (CPUID),
        // so they are undefined for it (SDM Vol. 3C, 26.1.3 makes them
        // exit; the architecture without VMX raises #UD).
        ExitReason::Other(19..=27 | 50 | 53) => Outcome::Inject(Fault::UD),
        // INVD would drop dirty cache lines the host may own; it is done
        // as WBINVD, which needs nothing here (EPT memory is coherent).
        ExitReason::Other(13) => {
            regs.advance(exit);
            Outcome::Resume
        }
        ExitReason::Other(reason) => Outcome::Stop(StopReason::UnknownExit { reason }),
    }
}

const RFLAGS_IF: u64 = 1 << 9;

/// Interruption type 2 = NMI (SDM Table 25-17), valid bit 31.
fn is_nmi(interruption: u32) -> bool {
    interruption & (1 << 31) != 0 && (interruption >> 8) & 0x7 == 2
}

fn cpuid(exit: &Exit, regs: &mut Registers, env: &mut impl ExitEnv) -> Outcome {
    let leaf = low_u32(regs.get(gpr::RAX));
    let subleaf = low_u32(regs.get(gpr::RCX));
    let [a, b, c, d] = env.cpuid(leaf, subleaf);
    // CPUID writes the low halves and clears the high halves (64-bit mode).
    regs.set(gpr::RAX, u64::from(a));
    regs.set(gpr::RBX, u64::from(b));
    regs.set(gpr::RCX, u64::from(c));
    regs.set(gpr::RDX, u64::from(d));
    regs.advance(exit);
    Outcome::Resume
}

/// IN and OUT with AL/AX/EAX (SDM Vol. 2A, IN/OUT): IN of 1 or 2 bytes
/// keeps the rest of RAX; IN of 4 bytes zero-extends into RAX.
fn port_io(exit: &Exit, regs: &mut Registers, env: &mut impl ExitEnv) -> Outcome {
    let io = IoAccess::decode(exit.qualification);
    if io.string {
        return Outcome::Stop(StopReason::StringIo { port: io.port });
    }
    let mask: u64 = match io.size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    let rax = regs.get(gpr::RAX);
    regs.advance(exit);
    if io.write {
        return env
            .port_out(io.port, io.size, low_u32(rax & mask))
            .unwrap_or(Outcome::Resume);
    }
    let value = u64::from(env.port_in(io.port, io.size)) & mask;
    let merged = if io.size == 4 {
        value
    } else {
        (rax & !mask) | value
    };
    regs.set(gpr::RAX, merged);
    Outcome::Resume
}

fn rdmsr(exit: &Exit, regs: &mut Registers, env: &mut impl ExitEnv) -> Outcome {
    match env.rdmsr(low_u32(regs.get(gpr::RCX))) {
        Some(value) => {
            regs.set_edx_eax(value);
            regs.advance(exit);
            Outcome::Resume
        }
        None => Outcome::Inject(Fault::GP),
    }
}

fn wrmsr(exit: &Exit, regs: &mut Registers, env: &mut impl ExitEnv) -> Outcome {
    if env.wrmsr(low_u32(regs.get(gpr::RCX)), regs.edx_eax()) {
        regs.advance(exit);
        Outcome::Resume
    } else {
        Outcome::Inject(Fault::GP)
    }
}

/// CR0 bits (SDM Vol. 3A, 2.5).
const CR0_PE: u64 = 1 << 0;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
/// CR4 bits a guest may set: everything architectural up to bit 24 but
/// VMXE (13) and SMXE (14), which Atoll hides, and the reserved bits
/// 12 (LA57 is not offered), 15, 19 (SDM Vol. 3A, 2.5).
const CR4_ALLOWED: u64 = 0x01ff_ffff & !(1 << 12 | 1 << 13 | 1 << 14 | 1 << 15 | 1 << 19);

/// A MOV to CR0 or CR4 that touched a bit the hypervisor owns. The write's
/// architectural checks come first (SDM Vol. 2B, MOV to CR: #GP(0) for
/// reserved bits, PG without PE, NW without CD); then the hypervisor
/// completes it.
fn cr_access(exit: &Exit, regs: &mut Registers) -> Outcome {
    let stop = Outcome::Stop(StopReason::CrAccess {
        qualification: exit.qualification,
    });
    let CrAccess::Write { cr, gpr } = CrAccess::decode(exit.qualification) else {
        return stop;
    };
    let value = regs.get(gpr);
    let legal = match cr {
        0 => {
            value >> 32 == 0
                && !(value & CR0_PG != 0 && value & CR0_PE == 0)
                && !(value & CR0_NW != 0 && value & CR0_CD == 0)
        }
        4 => value & !CR4_ALLOWED == 0,
        _ => return stop,
    };
    if !legal {
        return Outcome::Inject(Fault::GP);
    }
    regs.advance(exit);
    Outcome::WriteCr { cr, value }
}

/// XSETBV (SDM Vol. 2C): ECX must name XCR0, bit 0 (x87) must be set, AVX
/// needs SSE, and only bits the processor supports; otherwise #GP(0).
fn xsetbv(exit: &Exit, regs: &mut Registers, env: &mut impl ExitEnv) -> Outcome {
    let value = regs.edx_eax();
    let (x87, sse, avx) = (1, 1 << 1, 1 << 2);
    let legal = low_u32(regs.get(gpr::RCX)) == 0
        && regs.cpl == 0
        && value & x87 != 0
        && (value & avx == 0 || value & sse != 0)
        && value & !env.xcr0_supported() == 0;
    if !legal {
        return Outcome::Inject(Fault::GP);
    }
    regs.advance(exit);
    Outcome::SetXcr0(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Records what the dispatcher asked for; answers from fixed tables.
    #[derive(Default)]
    struct FakeEnv {
        calls: Vec<&'static str>,
        port_value: u32,
        writes: Vec<(u16, u8, u32)>,
        msr: Option<u64>,
        msr_writes: Vec<(u32, u64)>,
        refuse_wrmsr: bool,
    }

    impl ExitEnv for FakeEnv {
        fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
            self.calls.push("cpuid");
            [leaf, subleaf, 0xc, 0xd]
        }
        fn port_in(&mut self, _port: u16, _size: u8) -> u32 {
            self.calls.push("in");
            self.port_value
        }
        fn port_out(&mut self, port: u16, size: u8, value: u32) -> Option<Outcome> {
            self.writes.push((port, size, value));
            (port == 0xf4).then_some(Outcome::PowerOff { status: value })
        }
        fn rdmsr(&mut self, _msr: u32) -> Option<u64> {
            self.msr
        }
        fn wrmsr(&mut self, msr: u32, value: u64) -> bool {
            self.msr_writes.push((msr, value));
            !self.refuse_wrmsr
        }
        fn hypercall(&mut self, regs: &mut Registers) -> Outcome {
            self.calls.push("hypercall");
            regs.set(gpr::RAX, 0);
            Outcome::Resume
        }
        fn mmio(
            &mut self,
            gpa: GuestPhysAddr,
            _access: EptAccess,
            _regs: &mut Registers,
        ) -> Option<Outcome> {
            (gpa.0 == 0xfee0_0000).then_some(Outcome::Resume)
        }
        fn xcr0_supported(&self) -> u64 {
            0x7
        }
    }

    fn exit(reason: ExitReason, qualification: u64, len: u8) -> Exit {
        Exit {
            reason,
            entry_failed: false,
            qualification,
            instruction_len: len,
            guest_phys: GuestPhysAddr(0),
            interruption: 0,
        }
    }

    fn regs() -> Registers {
        Registers {
            rip: 0x1000,
            ..Registers::default()
        }
    }

    #[test]
    fn cpuid_sets_four_registers_and_skips_the_instruction() {
        let mut r = regs();
        r.gpr[gpr::RAX] = 0xffff_ffff_0000_0007;
        r.gpr[gpr::RCX] = 1;
        r.gpr[gpr::RBX] = u64::MAX;
        let mut env = FakeEnv::default();
        assert_eq!(
            dispatch(&exit(ExitReason::Cpuid, 0, 2), &mut r, &mut env),
            Outcome::Resume
        );
        assert_eq!(r.gpr[..4], [7, 0xc, 0xd, 1][..], "rax rcx rdx rbx");
        assert_eq!(r.rip, 0x1002);
    }

    #[test]
    fn port_reads_merge_by_size_and_writes_mask_rax() {
        let mut env = FakeEnv {
            port_value: 0xaabb_ccdd,
            ..FakeEnv::default()
        };
        let mut r = regs();
        r.gpr[gpr::RAX] = 0x1111_2222_3333_4444;
        // IN AL, DX (port 0x3fd).
        let q = 0x03fd_0000 | 1 << 3;
        dispatch(&exit(ExitReason::Io, q, 1), &mut r, &mut env);
        assert_eq!(r.gpr[gpr::RAX], 0x1111_2222_3333_44dd);
        // IN EAX: zero-extends.
        dispatch(&exit(ExitReason::Io, q | 3, 1), &mut r, &mut env);
        assert_eq!(r.gpr[gpr::RAX], 0xaabb_ccdd);
        // OUT DX, AX.
        r.gpr[gpr::RAX] = 0x1234_5678;
        dispatch(&exit(ExitReason::Io, 0x03f8_0001, 1), &mut r, &mut env);
        assert_eq!(env.writes, [(0x3f8, 2, 0x5678)]);
        assert_eq!(r.rip, 0x1003);
    }

    #[test]
    fn a_debug_exit_write_ends_the_vm_and_string_io_stops_it() {
        let mut env = FakeEnv::default();
        let mut r = regs();
        r.gpr[gpr::RAX] = 3;
        assert_eq!(
            dispatch(&exit(ExitReason::Io, 0x00f4_0000, 1), &mut r, &mut env),
            Outcome::PowerOff { status: 3 }
        );
        assert_eq!(
            dispatch(&exit(ExitReason::Io, 0x03f8_0010, 1), &mut r, &mut env),
            Outcome::Stop(StopReason::StringIo { port: 0x3f8 })
        );
    }

    #[test]
    fn msr_faults_leave_rip_on_the_instruction() {
        let mut env = FakeEnv::default();
        let mut r = regs();
        assert_eq!(
            dispatch(&exit(ExitReason::Rdmsr, 0, 2), &mut r, &mut env),
            Outcome::Inject(Fault::GP)
        );
        assert_eq!(r.rip, 0x1000);
        env.msr = Some(0x1_0000_0002);
        dispatch(&exit(ExitReason::Rdmsr, 0, 2), &mut r, &mut env);
        assert_eq!((r.gpr[gpr::RAX], r.gpr[gpr::RDX], r.rip), (2, 1, 0x1002));
        r.gpr[gpr::RCX] = 0xc000_0080;
        r.gpr[gpr::RDX] = 0xffff_ffff_0000_0001;
        r.gpr[gpr::RAX] = 0xffff_ffff_0000_0500;
        dispatch(&exit(ExitReason::Wrmsr, 0, 2), &mut r, &mut env);
        assert_eq!(env.msr_writes, [(0xc000_0080, 0x1_0000_0500)]);
        env.refuse_wrmsr = true;
        assert_eq!(
            dispatch(&exit(ExitReason::Wrmsr, 0, 2), &mut r, &mut env),
            Outcome::Inject(Fault::GP)
        );
    }

    #[test]
    fn cr_writes_are_checked_before_they_complete() {
        let mut env = FakeEnv::default();
        let write_cr = |cr: u64, gpr: u64| cr | gpr << 8;
        let cases = [
            (
                0,
                0x8000_0031u64,
                Outcome::WriteCr {
                    cr: 0,
                    value: 0x8000_0031,
                },
            ),
            (0, 0x8000_0030, Outcome::Inject(Fault::GP)), // PG without PE
            (0, 0x2000_0031, Outcome::Inject(Fault::GP)), // NW without CD
            (0, 1 << 32 | 0x31, Outcome::Inject(Fault::GP)),
            (4, 0x20, Outcome::WriteCr { cr: 4, value: 0x20 }),
            (4, 1 << 13, Outcome::Inject(Fault::GP)), // VMXE hidden
            (4, 1 << 40, Outcome::Inject(Fault::GP)),
        ];
        for (cr, value, expected) in cases {
            let mut r = regs();
            r.gpr[3] = value;
            let got = dispatch(
                &exit(ExitReason::CrAccess, write_cr(cr, 3), 3),
                &mut r,
                &mut env,
            );
            assert_eq!(got, expected, "cr{cr} <- {value:#x}");
            let moved = matches!(expected, Outcome::WriteCr { .. });
            assert_eq!(r.rip, if moved { 0x1003 } else { 0x1000 });
        }
        // CLTS and CR3 reads are not expected: stop, never guess.
        let mut r = regs();
        assert!(matches!(
            dispatch(&exit(ExitReason::CrAccess, 0x20, 2), &mut r, &mut env),
            Outcome::Stop(StopReason::CrAccess { .. })
        ));
    }

    #[test]
    fn xsetbv_follows_the_architectural_rules() {
        let mut env = FakeEnv::default();
        for (ecx, value, cpl, ok) in [
            (0, 0x3, 0, true),
            (0, 0x7, 0, true),
            (0, 0x2, 0, false),
            (0, 0x5, 0, false),
            (0, 0xf, 0, false),
            (1, 0x3, 0, false),
            (0, 0x3, 3, false),
        ] {
            let mut r = regs();
            r.gpr[gpr::RCX] = ecx;
            r.gpr[gpr::RAX] = value;
            r.cpl = cpl;
            let got = dispatch(&exit(ExitReason::Xsetbv, 0, 3), &mut r, &mut env);
            let expected = if ok {
                Outcome::SetXcr0(value)
            } else {
                Outcome::Inject(Fault::GP)
            };
            assert_eq!(got, expected, "ecx {ecx} value {value:#x} cpl {cpl}");
        }
    }

    #[test]
    fn crashes_and_unknown_exits_stop_the_vm() {
        let mut env = FakeEnv::default();
        let mut r = regs();
        let stop = |reason| Outcome::Stop(reason);
        assert_eq!(
            dispatch(&exit(ExitReason::TripleFault, 0, 0), &mut r, &mut env),
            stop(StopReason::TripleFault)
        );
        assert_eq!(
            dispatch(&exit(ExitReason::InvalidGuestState, 0, 0), &mut r, &mut env),
            stop(StopReason::InvalidGuestState)
        );
        assert_eq!(
            dispatch(&exit(ExitReason::Other(62), 0, 0), &mut r, &mut env),
            stop(StopReason::UnknownExit { reason: 62 })
        );
        // VMXON (27) and INVEPT (50) are #UD for a guest without VMX.
        assert_eq!(
            dispatch(&exit(ExitReason::Other(27), 0, 4), &mut r, &mut env),
            Outcome::Inject(Fault::UD)
        );
        assert_eq!(
            dispatch(&exit(ExitReason::Other(50), 0, 5), &mut r, &mut env),
            Outcome::Inject(Fault::UD)
        );
        let mut violation = exit(ExitReason::EptViolation, 0x2, 0);
        violation.guest_phys = GuestPhysAddr(0x4000_0000);
        assert!(matches!(
            dispatch(&violation, &mut r, &mut env),
            Outcome::Stop(StopReason::EptViolation {
                access: EptAccess { write: true, .. },
                ..
            })
        ));
        violation.guest_phys = GuestPhysAddr(0xfee0_0000);
        assert_eq!(dispatch(&violation, &mut r, &mut env), Outcome::Resume);
    }

    #[test]
    fn host_events_are_told_apart() {
        let mut env = FakeEnv::default();
        let mut r = regs();
        let mut nmi = exit(ExitReason::ExceptionOrNmi, 0, 0);
        nmi.interruption = 1 << 31 | 2 << 8 | 2;
        assert_eq!(dispatch(&nmi, &mut r, &mut env), Outcome::HostNmi);
        nmi.interruption = 1 << 31 | 3 << 8 | 14;
        assert!(matches!(dispatch(&nmi, &mut r, &mut env), Outcome::Stop(_)));
        assert_eq!(
            dispatch(&exit(ExitReason::ExternalInterrupt, 0, 0), &mut r, &mut env),
            Outcome::HostInterrupt
        );
        assert_eq!(
            dispatch(&exit(ExitReason::PreemptionTimer, 0, 0), &mut r, &mut env),
            Outcome::Yield
        );
        r.rflags = 0x202;
        assert_eq!(
            dispatch(&exit(ExitReason::Hlt, 0, 1), &mut r, &mut env),
            Outcome::Halt {
                interrupts_enabled: true
            }
        );
        assert_eq!(r.rip, 0x1001);
    }

    proptest::proptest! {
        /// No exit value and register state makes the dispatcher panic,
        /// and none moves RIP other than past one instruction (at most
        /// 15 bytes, SDM Vol. 2, 2.3.11): a fault or a host event leaves
        /// it where it was, so the guest sees the fault at the instruction.
        #[test]
        fn any_exit_moves_rip_past_one_instruction_at_most(
            basic in 0u16..80,
            qualification: u64,
            len in 0u8..16,
            gprs: [u64; 16],
            rip: u64,
            interruption: u32,
        ) {
            let e = Exit {
                reason: ExitReason::from_basic(basic),
                entry_failed: false,
                qualification,
                instruction_len: len,
                guest_phys: GuestPhysAddr(qualification.rotate_left(17)),
                interruption,
            };
            let mut r = Registers { gpr: gprs, rip, ..Registers::default() };
            let outcome = dispatch(&e, &mut r, &mut FakeEnv::default());
            let moved = r.rip.wrapping_sub(rip);
            match outcome {
                Outcome::Inject(_) | Outcome::HostInterrupt | Outcome::HostNmi => {
                    proptest::prop_assert_eq!(moved, 0);
                }
                _ => proptest::prop_assert!(moved <= 15, "RIP moved {} bytes", moved),
            }
        }
    }
}
