//! A VM exit as a plain value. The arch layer reads the VMCS exit fields
//! into an [`Exit`] and the guest's registers into [`Registers`]; the
//! dispatcher decides from these alone, so every decision is testable on
//! the host.

use crate::addr::GuestPhysAddr;
use crate::bits::low_u16;

/// Basic exit reasons Atoll tells apart (SDM Vol. 3D, Appendix C). All
/// others arrive as [`ExitReason::Other`] and stop the VM.
// Each variant is the SDM's name for its exit reason (Appendix C).
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitReason {
    ExceptionOrNmi,
    ExternalInterrupt,
    TripleFault,
    Init,
    Sipi,
    InterruptWindow,
    Cpuid,
    Hlt,
    Vmcall,
    CrAccess,
    Io,
    Rdmsr,
    Wrmsr,
    InvalidGuestState,
    MsrLoading,
    MachineCheck,
    EptViolation,
    EptMisconfig,
    PreemptionTimer,
    Xsetbv,
    /// Any other basic reason (the number).
    Other(u16),
}

impl ExitReason {
    /// Decodes bits 15:0 of the exit-reason field.
    pub fn from_basic(basic: u16) -> Self {
        use ExitReason::*;
        match basic {
            0 => ExceptionOrNmi,
            1 => ExternalInterrupt,
            2 => TripleFault,
            3 => Init,
            4 => Sipi,
            7 => InterruptWindow,
            10 => Cpuid,
            12 => Hlt,
            18 => Vmcall,
            28 => CrAccess,
            30 => Io,
            31 => Rdmsr,
            32 => Wrmsr,
            33 => InvalidGuestState,
            34 => MsrLoading,
            41 => MachineCheck,
            48 => EptViolation,
            49 => EptMisconfig,
            52 => PreemptionTimer,
            55 => Xsetbv,
            n => Other(n),
        }
    }

    /// The name used in `stats` and `vm_stopped` events.
    pub fn name(self) -> &'static str {
        use ExitReason::*;
        match self {
            ExceptionOrNmi => "exception_nmi",
            ExternalInterrupt => "external_interrupt",
            TripleFault => "triple_fault",
            Init => "init",
            Sipi => "sipi",
            InterruptWindow => "interrupt_window",
            Cpuid => "cpuid",
            Hlt => "hlt",
            Vmcall => "vmcall",
            CrAccess => "cr_access",
            Io => "io",
            Rdmsr => "rdmsr",
            Wrmsr => "wrmsr",
            InvalidGuestState => "invalid_guest_state",
            MsrLoading => "msr_loading",
            MachineCheck => "machine_check",
            EptViolation => "ept_violation",
            EptMisconfig => "ept_misconfig",
            PreemptionTimer => "preemption_timer",
            Xsetbv => "xsetbv",
            Other(_) => "other",
        }
    }
}

/// The VMCS exit-information fields of one exit (SDM 25.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The basic exit reason (bits 15:0 of the exit-reason field).
    pub reason: ExitReason,
    /// Bit 31 of the exit reason: the exit happened during VM entry
    /// (invalid guest state, MSR loading, machine check).
    pub entry_failed: bool,
    /// The exit qualification (SDM 28.2.1): the reason's own details.
    pub qualification: u64,
    /// Length of the instruction that exited (for instruction exits).
    pub instruction_len: u8,
    /// The guest-physical address of an EPT violation or misconfiguration.
    pub guest_phys: GuestPhysAddr,
    /// VM-exit interruption information (exception or NMI exits).
    pub interruption: u32,
}

/// General-purpose register numbers in the x86 encoding order (the order
/// of ModRM's reg field and of the exit qualifications' register fields).
// Each name is the register's own.
#[allow(missing_docs)]
pub mod gpr {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
}

/// The guest registers an exit handler may read or change. The arch layer
/// writes back `gpr`, `rip` and `rflags` on the next entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    /// RAX..R15 in encoding order ([`gpr`]); RSP is the VMCS value.
    pub gpr: [u64; 16],
    /// Guest RIP: the instruction that exited (or the next one to run).
    pub rip: u64,
    /// Guest RFLAGS.
    pub rflags: u64,
    /// Guest CR0.
    pub cr0: u64,
    /// Guest CR3.
    pub cr3: u64,
    /// Guest CR4.
    pub cr4: u64,
    /// Guest IA32_EFER.
    pub efer: u64,
    /// The current privilege level (SS.DPL, SDM 25.4.1).
    pub cpl: u8,
}

impl Registers {
    /// Register `n` (0..16); 0 for any other number.
    pub fn get(&self, n: usize) -> u64 {
        self.gpr.get(n).copied().unwrap_or(0)
    }

    /// Sets register `n` (0..16); other numbers are ignored.
    pub fn set(&mut self, n: usize, value: u64) {
        if let Some(r) = self.gpr.get_mut(n) {
            *r = value;
        }
    }

    /// Skips the instruction that exited.
    pub fn advance(&mut self, exit: &Exit) {
        self.rip = self.rip.wrapping_add(u64::from(exit.instruction_len));
        // Executing an instruction ends an STI/MOV SS shadow and clears
        // RF; the arch layer clears the interruptibility state.
    }

    /// RDX:RAX, as RDMSR returns it and WRMSR takes it.
    pub fn edx_eax(&self) -> u64 {
        (self.get(gpr::RDX) << 32) | (self.get(gpr::RAX) & 0xffff_ffff)
    }

    /// Sets RDX:RAX from a 64-bit value (upper halves cleared, as RDMSR
    /// does in 64-bit mode).
    pub fn set_edx_eax(&mut self, value: u64) {
        self.set(gpr::RAX, value & 0xffff_ffff);
        self.set(gpr::RDX, value >> 32);
    }
}

/// A port I/O exit's qualification (SDM Table 28-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoAccess {
    /// The port (qualification bits 31:16).
    pub port: u16,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    /// OUT/OUTS (qualification bit 3 clear); else IN/INS.
    pub write: bool,
    /// INS/OUTS: Atoll does not emulate string I/O.
    pub string: bool,
    /// A REP prefix (qualification bit 5).
    pub rep: bool,
}

impl IoAccess {
    /// Reads an I/O-instruction exit's qualification (SDM Table 28-5).
    pub fn decode(qualification: u64) -> Self {
        IoAccess {
            size: (qualification & 0x7) as u8 + 1,
            write: qualification & (1 << 3) == 0,
            string: qualification & (1 << 4) != 0,
            rep: qualification & (1 << 5) != 0,
            port: low_u16(qualification >> 16),
        }
    }
}

/// A control-register access exit's qualification (SDM Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccess {
    /// MOV to CRn from register `gpr`.
    Write {
        /// Control register number n.
        cr: u8,
        /// The general-purpose register ([`gpr`] number).
        gpr: usize,
    },
    /// MOV from CRn (only CR3/CR8 exit this way, and Atoll enables
    /// neither).
    Read {
        /// Control register number n.
        cr: u8,
        /// The general-purpose register ([`gpr`] number).
        gpr: usize,
    },
    /// CLTS: clear CR0.TS.
    Clts,
    /// LMSW with the 16-bit source value.
    Lmsw {
        /// The source operand.
        value: u16,
    },
}

impl CrAccess {
    /// Reads a control-register access exit's qualification (SDM Table 28-3).
    pub fn decode(qualification: u64) -> Self {
        let cr = (qualification & 0xf) as u8;
        let gpr = ((qualification >> 8) & 0xf) as usize;
        match (qualification >> 4) & 0x3 {
            0 => CrAccess::Write { cr, gpr },
            1 => CrAccess::Read { cr, gpr },
            2 => CrAccess::Clts,
            _ => CrAccess::Lmsw {
                value: low_u16(qualification >> 16),
            },
        }
    }
}

/// An EPT violation's qualification (SDM Table 28-7): what the access was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptAccess {
    /// The access was a data read (qualification bit 0).
    pub read: bool,
    /// The access was a data write (bit 1).
    pub write: bool,
    /// The access was an instruction fetch (bit 2).
    pub fetch: bool,
}

impl EptAccess {
    /// Reads an EPT violation's qualification (SDM Table 28-7).
    pub fn decode(qualification: u64) -> Self {
        EptAccess {
            read: qualification & 1 != 0,
            write: qualification & 2 != 0,
            fetch: qualification & 4 != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_decode_by_number_and_unknown_ones_are_kept() {
        assert_eq!(ExitReason::from_basic(10), ExitReason::Cpuid);
        assert_eq!(ExitReason::from_basic(48), ExitReason::EptViolation);
        assert_eq!(ExitReason::from_basic(52), ExitReason::PreemptionTimer);
        assert_eq!(ExitReason::from_basic(60), ExitReason::Other(60));
        assert_eq!(ExitReason::Other(60).name(), "other");
    }

    #[test]
    fn io_qualification_fields() {
        // OUT DX, AL to 0x3f8.
        let q = IoAccess::decode(0x03f8_0000);
        assert_eq!((q.port, q.size, q.write, q.string), (0x3f8, 1, true, false));
        // IN EAX, 0x511 (size field 3 = 4 bytes), direction in.
        let q = IoAccess::decode(0x0511_0000 | 1 << 3 | 3);
        assert_eq!((q.port, q.size, q.write), (0x511, 4, false));
        // REP OUTSB.
        let q = IoAccess::decode(0x00f4_0000 | 1 << 4 | 1 << 5);
        assert!(q.string && q.rep);
    }

    #[test]
    fn cr_qualification_fields() {
        assert_eq!(CrAccess::decode(0x0304), CrAccess::Write { cr: 4, gpr: 3 });
        assert_eq!(
            CrAccess::decode(0x0010 | 0x0f00 | 3),
            CrAccess::Read { cr: 3, gpr: 15 }
        );
        assert_eq!(CrAccess::decode(0x20), CrAccess::Clts);
        assert_eq!(
            CrAccess::decode(0x1234_0030),
            CrAccess::Lmsw { value: 0x1234 }
        );
    }

    #[test]
    fn register_helpers_never_index_out_of_range() {
        let mut r = Registers::default();
        r.set(99, 5);
        assert_eq!(r.get(99), 0);
        r.set_edx_eax(0x1122_3344_5566_7788);
        assert_eq!(
            (r.get(gpr::RAX), r.get(gpr::RDX)),
            (0x5566_7788, 0x1122_3344)
        );
        assert_eq!(r.edx_eax(), 0x1122_3344_5566_7788);
    }
}
