//! The hypervisor's side of exit handling: [`Env`] gives the dispatcher
//! (`atoll_vmm::dispatch`) the services it asks for, carried out with the
//! policies of `atoll_vmm` (CPUID, MSRs, the local APIC, the port bus),
//! this node's state (devices under the node lock) and this CPU's
//! hardware (host CPUID, the current VMCS).

use atoll_platform::vmcs;
use atoll_vmm::GuestPhysAddr;
use atoll_vmm::cpuid::{self, HostCpuid};
use atoll_vmm::devices::{LINE_BYTES, PortEffect};
use atoll_vmm::dispatch::{ExitEnv, Fault, Outcome};
use atoll_vmm::exit::{EptAccess, Registers};
use atoll_vmm::lapic;
use atoll_vmm::mmio::{self, CodeMode};
use atoll_vmm::msr::{self, VmcsMsr, WriteContext};
use atoll_vmm::walk::Paging;
use core::sync::atomic::Ordering;

use crate::arch::guestram::GuestRam;
use crate::arch::vmcs::{self as fields, GuestReg};
use crate::arch::{cpu, time};
use crate::console;
use crate::devwork;
use crate::node::Node;
use crate::sched::HostedVcpu;
use crate::vm::{self, Vm, VmBoard};
use alloc::vec::Vec;

/// One exit's view of its vCPU and node.
pub struct Env<'a> {
    node: &'a Node,
    hosted: &'a mut HostedVcpu,
}

impl<'a> Env<'a> {
    pub fn new(node: &'a Node, hosted: &'a mut HostedVcpu) -> Self {
        Env { node, hosted }
    }
}

/// The host processor's CPUID.
struct Host;

impl HostCpuid for Host {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        cpu::cpuid(leaf, subleaf)
    }
}

/// The VMCS guest register holding a guest MSR.
fn vmcs_reg(msr: VmcsMsr) -> GuestReg {
    match msr {
        VmcsMsr::Efer => GuestReg::Efer,
        VmcsMsr::Pat => GuestReg::Pat,
        VmcsMsr::FsBase => GuestReg::FsBase,
        VmcsMsr::GsBase => GuestReg::GsBase,
        VmcsMsr::SysenterCs => GuestReg::SysenterCs,
        VmcsMsr::SysenterEsp => GuestReg::SysenterEsp,
        VmcsMsr::SysenterEip => GuestReg::SysenterEip,
        VmcsMsr::DebugCtl => GuestReg::DebugCtl,
    }
}

impl ExitEnv for Env<'_> {
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let khz = u32::try_from(time::tsc_per_us().saturating_mul(1000)).unwrap_or(u32::MAX);
        let ctx = cpuid::Context {
            apic_id: u32::from(self.hosted.vcpu.id),
            vcpus: u32::from(self.hosted.vm.spec.vcpus),
            tsc_khz: khz,
            lapic_khz: khz,
            osxsave: fields::guest_reg(GuestReg::Cr4) & vmcs::CR4_OSXSAVE != 0,
            rdtscp: self.hosted.vcpu.controls().rdtscp(),
            invpcid: self.hosted.vcpu.controls().invpcid(),
        };
        cpuid::guest_cpuid(&Host, &ctx, leaf, subleaf)
    }

    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        let (value, messages) = self
            .node
            .with_devices(self.hosted.vm.local, |board| {
                (board.port_read(port, size), board.take_messages())
            })
            .unwrap_or((u32::MAX, Vec::new()));
        self.hosted
            .vm
            .post_interrupts(self.node, self.hosted.vcpu.id, &messages);
        value
    }

    fn port_out(&mut self, port: u16, size: u8, value: u32) -> Option<Outcome> {
        port_out(
            self.node,
            self.hosted.vm,
            self.hosted.vcpu.id,
            port,
            size,
            value,
        )
    }

    fn rdmsr(&mut self, msr: u32) -> Option<u64> {
        if msr == msr::index::TSC_AUX && !cpu::has_rdtscp() {
            return None;
        }
        match msr::read(&self.hosted.msrs, msr) {
            msr::Read::Value(v) => Some(v),
            msr::Read::Vmcs(m) => Some(fields::guest_reg(vmcs_reg(m))),
            msr::Read::Tsc => Some(cpu::rdtsc()),
            msr::Read::ApicBase => Some(self.hosted.lapic.apic_base()),
            msr::Read::Lapic(reg) => self.hosted.lapic.read(reg, cpu::rdtsc()),
            msr::Read::Processor(msr) => Some(cpu::read_guest_msr(msr)),
            msr::Read::TscDeadline => Some(self.hosted.lapic.tsc_deadline()),
            msr::Read::Fault => None,
        }
    }

    fn wrmsr(&mut self, msr: u32, value: u64) -> bool {
        if msr == msr::index::TSC_AUX && !cpu::has_rdtscp() {
            return false;
        }
        let ctx = WriteContext {
            efer: fields::guest_reg(GuestReg::Efer),
            paging: fields::guest_reg(GuestReg::Cr0) & vmcs::cr0::PG != 0,
        };
        match msr::write(&mut self.hosted.msrs, ctx, msr, value) {
            msr::Write::Stored => true,
            msr::Write::Load(msr, value) => {
                cpu::load_guest_msr(msr, value);
                true
            }
            msr::Write::Vmcs(m, value) => fields::set_guest_reg(vmcs_reg(m), value).is_ok(),
            msr::Write::ApicBase(value) => {
                let ok = self.hosted.lapic.set_apic_base(value);
                self.hosted
                    .vm
                    .publish_recipient(self.hosted.vcpu.id, &self.hosted.lapic);
                ok
            }
            msr::Write::Lapic(reg, value) => {
                match self.hosted.lapic.write(reg, value, cpu::rdtsc()) {
                    lapic::Write::Done => true,
                    lapic::Write::Fault => false,
                    lapic::Write::Send(ipi) => {
                        self.hosted.vm.post_ipi(self.node, self.hosted.vcpu.id, ipi);
                        true
                    }
                    lapic::Write::Eoi(vector) => {
                        self.eoi(vector);
                        true
                    }
                }
            }
            msr::Write::TscDeadline(deadline) => {
                self.hosted.lapic.set_tsc_deadline(deadline);
                true
            }
            msr::Write::Fault => false,
        }
    }

    fn hypercall(&mut self, regs: &mut Registers) -> Outcome {
        crate::hypercalls::handle(self.node, self.hosted, regs)
    }

    fn mmio(
        &mut self,
        gpa: GuestPhysAddr,
        _access: EptAccess,
        regs: &mut Registers,
    ) -> Option<Outcome> {
        let paging = Paging {
            cr0: regs.cr0,
            cr3: regs.cr3,
            cr4: regs.cr4,
            efer: regs.efer,
        };
        let mode = code_mode(fields::guest_cs_rights(), regs.efer);
        let ram = self.hosted.vm.ram;
        if self.hosted.lapic.mmio_decoded() && LapicPage::claims(gpa) {
            return self.lapic_mmio(gpa, regs, mode, &paging);
        }
        let (outcome, messages, lines, work) = self
            .node
            .with_devices(self.hosted.vm.local, |board| {
                let mut bus = BoardBus { board, ram };
                let outcome = mmio::emulate(gpa, regs, mode, &paging, &ram, &mut bus);
                let lines: Vec<Vec<u8>> =
                    core::iter::from_fn(|| bus.board.take_console_line()).collect();
                // A notification only recorded its work: one slice now.
                let work = bus.board.has_device_work() && devwork::slice_locked(bus.board, ram);
                (outcome, bus.board.take_messages(), lines, work)
            })
            .unwrap_or((None, Vec::new(), Vec::new(), false));
        self.hosted.device_work |= work;
        for line in lines {
            vm::print_guest_line(self.hosted.vm, &line);
        }
        self.hosted
            .vm
            .post_interrupts(self.node, self.hosted.vcpu.id, &messages);
        outcome
    }

    fn xcr0_supported(&self) -> u64 {
        cpu::xcr0_supported()
    }
}

impl Env<'_> {
    /// An access to the xAPIC page of the vCPU's own local APIC: an IPI it
    /// sends is posted, a logical-ID change published, an EOI of a
    /// level-triggered vector passed to the IOAPIC.
    fn lapic_mmio(
        &mut self,
        gpa: GuestPhysAddr,
        regs: &mut Registers,
        mode: CodeMode,
        paging: &Paging,
    ) -> Option<Outcome> {
        let ram = self.hosted.vm.ram;
        let mut page = LapicPage {
            lapic: &mut self.hosted.lapic,
            now: cpu::rdtsc(),
            effect: lapic::Write::Done,
        };
        let outcome = mmio::emulate(gpa, regs, mode, paging, &ram, &mut page);
        let effect = page.effect;
        let (vm, id) = (self.hosted.vm, self.hosted.vcpu.id);
        vm.publish_recipient(id, &self.hosted.lapic);
        match effect {
            lapic::Write::Send(ipi) => vm.post_ipi(self.node, id, ipi),
            lapic::Write::Eoi(vector) => self.eoi(vector),
            lapic::Write::Done | lapic::Write::Fault => {}
        }
        outcome
    }

    /// A level-triggered `vector` ended: the IOAPIC may send again.
    fn eoi(&mut self, vector: u8) {
        let messages = self
            .node
            .with_devices(self.hosted.vm.local, |board| {
                board.eoi(vector);
                board.take_messages()
            })
            .unwrap_or_default();
        self.hosted
            .vm
            .post_interrupts(self.node, self.hosted.vcpu.id, &messages);
    }
}

/// The xAPIC page of one vCPU's local APIC as an MMIO device: 32-bit
/// accesses to its registers (SDM 11.4.1: other sizes are undefined, so
/// they leave the device and stop the VM).
struct LapicPage<'a> {
    lapic: &'a mut lapic::Lapic,
    now: u64,
    /// What the last write asked for.
    effect: lapic::Write,
}

impl LapicPage<'_> {
    fn claims(gpa: GuestPhysAddr) -> bool {
        gpa.0 & !0xfff == lapic::APIC_BASE_DEFAULT
    }

    fn offset(gpa: GuestPhysAddr, size: u8) -> Option<u32> {
        let offset = gpa.0.checked_sub(lapic::APIC_BASE_DEFAULT)?;
        (size == 4 && offset % 4 == 0 && offset < u64::from(lapic::XAPIC_PAGE))
            .then_some(offset as u32)
    }
}

impl mmio::MmioBus for LapicPage<'_> {
    fn claims(&self, gpa: GuestPhysAddr) -> bool {
        LapicPage::claims(gpa)
    }

    fn read(&mut self, gpa: GuestPhysAddr, size: u8) -> Option<u64> {
        let offset = LapicPage::offset(gpa, size)?;
        Some(u64::from(
            self.lapic.mmio_read(offset, self.now).unwrap_or(u32::MAX),
        ))
    }

    fn write(&mut self, gpa: GuestPhysAddr, size: u8, value: u64) -> bool {
        let Some(offset) = LapicPage::offset(gpa, size) else {
            return false;
        };
        self.effect = self.lapic.mmio_write(offset, value as u32, self.now);
        true
    }
}

/// The VM's board as an MMIO bus; its virtio devices reach the VM's RAM.
struct BoardBus<'a> {
    board: &'a mut VmBoard,
    ram: GuestRam,
}

impl mmio::MmioBus for BoardBus<'_> {
    fn claims(&self, gpa: GuestPhysAddr) -> bool {
        self.board.claims(gpa)
    }

    fn read(&mut self, gpa: GuestPhysAddr, size: u8) -> Option<u64> {
        self.board.mmio_read(gpa, size)
    }

    fn write(&mut self, gpa: GuestPhysAddr, size: u8, value: u64) -> bool {
        self.board.mmio_write(gpa, size, value, &mut self.ram)
    }
}

/// The code segment's mode (SDM 25.4.1 access rights: L is bit 13, D/B
/// bit 14; L counts only in IA-32e mode).
fn code_mode(cs_rights: u64, efer: u64) -> CodeMode {
    if efer & (1 << 10) != 0 && cs_rights & (1 << 13) != 0 {
        CodeMode::Bits64
    } else if cs_rights & (1 << 14) != 0 {
        CodeMode::Bits32
    } else {
        CodeMode::Bits16
    }
}

/// A port write through the VM's bus by vCPU `vcpu`; a finished console
/// line is printed with the VM's name, interrupts the write raised are
/// delivered, isa-debug-exit and ACPI S5 end the VM.
pub fn port_out(
    node: &Node,
    vm: &Vm,
    vcpu: u16,
    port: u16,
    size: u8,
    value: u32,
) -> Option<Outcome> {
    let mut line = [0u8; LINE_BYTES];
    let (effect, len, messages) = node
        .with_devices(vm.local, |board| {
            let effect = board.port_write(port, size, value);
            let len = if effect == PortEffect::ConsoleLine {
                board.ports.uart.take_line(&mut line)
            } else {
                None
            };
            (effect, len, board.take_messages())
        })
        .unwrap_or((PortEffect::None, None, Vec::new()));
    if let Some(len) = len {
        vm::print_guest_line(vm, line.get(..len).unwrap_or(&[]));
    }
    vm.post_interrupts(node, vcpu, &messages);
    effect.into()
}

/// Faults reported per VM as `vm_fault` events; later ones are only
/// counted (a guest probing MSRs in a loop must not flood the console).
const REPORTED_FAULTS: u32 = 16;

/// Reports a fault injected into a guest (`vm_fault`).
pub fn report_fault(node: &Node, vm: &Vm, vcpu: u16, fault: Fault, regs: &Registers) {
    if vm.faults.fetch_add(1, Ordering::Relaxed) >= REPORTED_FAULTS {
        return;
    }
    console::event("vm_fault", |e| {
        e.field("vm", vm.spec.name.as_str())
            .field("node", node.index)
            .field("vcpu", vcpu)
            .field("vector", fault.vector)
            .field("error_code", fault.error_code)
            .field("rip", atoll_platform::event::Hex(regs.rip))
    });
}
