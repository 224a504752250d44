//! Each CPU's run loop: the vCPUs the plan assigns to this CPU, run round
//! robin. A vCPU stays on its CPU for life, so its VMCS is only ever
//! loaded here and no other CPU touches its state (thesis 6.4). When a CPU
//! has more than one runnable vCPU, the VMX preemption timer ends each
//! slice; a CPU with none halts until an interrupt (its tick, a kick).
//!
//! One exit, end to end:
//!
//! ```text
//!  enter (vmx::run) -> Exit value -> host interrupt/NMI? take it here
//!                                 -> else dispatch (atoll_vmm) -> Outcome
//!  Outcome applied to the vCPU (registers, injection, CR writes, halt)
//!  or to the VM (power off, stop: Vm::request_end)
//! ```

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use atoll_platform::vmcs::{self, StartMode};
use atoll_platform::vmx::VmxCaps;
use atoll_vmm::GuestPhysAddr;
use atoll_vmm::dispatch::{self, ExitEnv, Fault, Outcome, StopReason};
use atoll_vmm::exit::{EptAccess, Exit, Registers, gpr};
use x86::vmx::vmcs::{control, guest};

use crate::arch::{cpu, percpu, shared, vmx};
use crate::node::Node;
use crate::vcpu::{Vcpu, VcpuState, VmcsTemplate};
use crate::vm::{End, Vm};

/// A time slice when vCPUs share a CPU, in microseconds.
const SLICE_US: u64 = 10_000;
/// Exits handled in a row before the loop looks at its other vCPUs and
/// the VM's requests again (so a storm of exits cannot starve them).
const EXITS_PER_TURN: u32 = 64;

/// One vCPU this CPU runs, with the VM generation it was reset for.
struct Slot {
    vm: &'static Vm,
    vcpu: Vcpu,
    generation: u32,
    /// Whether this slot checked out of the current generation.
    parked: bool,
}

/// This CPU's part after it is up: run its vCPUs forever. Returns only if
/// the CPU has no vCPU at all (the caller then idles).
pub fn run_vcpus(node: &'static Node, caps: &VmxCaps) -> Option<core::convert::Infallible> {
    let me = percpu::current()?;
    let vms = node.vms.get()?;
    let mine: Vec<(&'static Vm, u16)> = vms
        .iter()
        .flat_map(|vm| {
            vm.spec
                .vcpu_cpus
                .iter()
                .enumerate()
                .filter(|(_, cpu)| **cpu == me.cpu)
                .map(move |(i, _)| (*vm, i as u16))
        })
        .collect();
    if mine.is_empty() {
        return None;
    }
    if let Err(e) = vmx::enable_on_this_cpu(caps, &mut node.kmem.lock()) {
        log::error!("CPU {}: VMX cannot be turned on: {e}", me.cpu);
        for (vm, _) in &mine {
            vm.request_end(
                node,
                End::Stopped {
                    reason: StopReason::EntryFailed {
                        instruction_error: 0,
                    },
                    vcpu: 0,
                    regs: Registers::default(),
                },
            );
        }
        return None;
    }
    let controls = match vmcs::controls(caps) {
        Ok(c) => c,
        Err(e) => {
            log::error!("CPU {}: {e}", me.cpu);
            return None;
        }
    };
    let mut slots = Vec::with_capacity(mine.len());
    for (vm, id) in mine {
        let template = VmcsTemplate {
            controls,
            fixed: caps.fixed_bits(),
            eptp: vm.eptp,
            vpid: vm.vpid,
        };
        let built = Vcpu::new(
            id,
            caps,
            template,
            &mut node.kmem.lock(),
            start_mode(vm, id),
        );
        match built {
            Ok(mut vcpu) => {
                prepare_boot_registers(vm, &mut vcpu);
                slots.push(Slot {
                    vm,
                    vcpu,
                    generation: 0,
                    parked: false,
                });
            }
            Err(e) => log::error!("VM '{}' vCPU {id}: {e}", vm.spec.name),
        }
    }
    let slice = slice_ticks(caps, slots.len());
    run_loop(node, &mut slots, slice)
}

/// vCPU 0 starts at the kernel's entry; the others wait for a start-up IPI.
fn start_mode(vm: &Vm, id: u16) -> StartMode {
    if id == 0 {
        StartMode::Protected32 {
            eip: vm.entry().entry,
        }
    } else {
        StartMode::RealMode { vector: 0 }
    }
}

/// The boot protocol's registers for vCPU 0 (multiboot: EAX, EBX).
fn prepare_boot_registers(vm: &Vm, vcpu: &mut Vcpu) {
    if vcpu.id == 0 {
        let entry = vm.entry();
        vcpu.set_gpr(gpr::RAX, u64::from(entry.eax));
        vcpu.set_gpr(gpr::RBX, u64::from(entry.ebx));
    } else {
        vm.blocked.fetch_add(1, Ordering::AcqRel);
    }
}

/// The preemption-timer value for one slice: the timer counts down once
/// every 2^X TSC ticks, X = IA32_VMX_MISC[4:0] (SDM 25.5.1). A CPU with
/// one vCPU gets the longest slice there is.
fn slice_ticks(caps: &VmxCaps, vcpus: usize) -> u32 {
    if vcpus <= 1 {
        return u32::MAX;
    }
    let shift = caps.misc & 0x1f;
    let ticks = crate::arch::time::tsc_per_us().saturating_mul(SLICE_US) >> shift;
    u32::try_from(ticks).unwrap_or(u32::MAX).max(1)
}

fn run_loop(node: &'static Node, slots: &mut [Slot], slice: u32) -> ! {
    let mut current: Option<usize> = None;
    let mut next = 0;
    loop {
        for slot in slots.iter_mut() {
            sync_with_vm(node, slot);
        }
        let count = slots.len();
        let pick = (0..count)
            .map(|i| (next + i) % count)
            .find(|&i| slots.get(i).is_some_and(runnable));
        let Some(i) = pick else {
            node.idle_check();
            cpu::wait_for_interrupt();
            continue;
        };
        next = i + 1;
        if let Some(slot) = slots.get_mut(i) {
            if current != Some(i) {
                if slot.vcpu.load().is_err() {
                    log::error!("VM '{}': VMPTRLD failed", slot.vm.spec.name);
                }
                current = Some(i);
            }
            run_turn(node, slot, slice);
        }
    }
}

fn runnable(slot: &Slot) -> bool {
    !slot.parked && slot.vm.is_running() && slot.vcpu.state == VcpuState::Runnable
}

/// Applies the VM's requests to one of this CPU's vCPUs: a new generation
/// (restart) resets it; an ending VM parks it.
fn sync_with_vm(node: &Node, slot: &mut Slot) {
    let generation = slot.vm.generation.load(Ordering::Acquire);
    if generation != slot.generation && slot.vm.is_running() {
        // The restarted guest builds new page tables in the same memory:
        // translations this CPU cached for the old incarnation (tagged
        // with the VM's VPID and EPT) must go first (SDM 29.4.3.3). Every
        // CPU with a vCPU of the VM does this for itself when the restart
        // kick reaches it.
        vmx::invvpid_single(slot.vm.vpid);
        vmx::invept_single(slot.vm.eptp);
        let mode = start_mode(slot.vm, slot.vcpu.id);
        if slot.vcpu.reset(mode).is_err() {
            log::error!("VM '{}': vCPU reset failed", slot.vm.spec.name);
        }
        prepare_boot_registers(slot.vm, &mut slot.vcpu);
        slot.generation = generation;
        slot.parked = false;
    }
    if !slot.parked && !slot.vm.is_running() && !slot.vm.has_ended() {
        slot.parked = true;
        slot.vcpu.state = VcpuState::Done;
        slot.vm.check_out(node);
    }
}

/// Runs one vCPU until its slice ends, it blocks, or its VM ends.
fn run_turn(node: &Node, slot: &mut Slot, slice: u32) {
    for _ in 0..EXITS_PER_TURN {
        let entered = cpu::rdtsc();
        let exit = match slot.vcpu.enter(slice) {
            Ok(exit) => exit,
            Err(failed) => {
                let reason = StopReason::EntryFailed {
                    instruction_error: failed.instruction_error,
                };
                let regs = slot.vcpu.registers();
                slot.vm.request_end(node, stopped(slot, reason, regs));
                return;
            }
        };
        let exited = cpu::rdtsc();
        let keep_going = handle_exit(node, slot, &exit);
        slot.vm
            .record_exit(exit.reason, exited - entered, cpu::rdtsc() - exited);
        if !keep_going || !slot.vm.is_running() {
            return;
        }
    }
}

fn stopped(slot: &Slot, reason: StopReason, regs: Registers) -> End {
    End::Stopped {
        reason,
        vcpu: slot.vcpu.id,
        regs,
    }
}

/// Handles one exit; false when the vCPU should not be re-entered now.
fn handle_exit(node: &Node, slot: &mut Slot, exit: &Exit) -> bool {
    let mut regs = slot.vcpu.registers();
    let outcome = {
        let mut env = Env {
            node,
            slot_vm: slot.vm,
            vcpu: slot.vcpu.id,
        };
        dispatch::dispatch(exit, &mut regs, &mut env)
    };
    let vm = slot.vm;
    match outcome {
        Outcome::HostInterrupt => {
            vmx::take_pending_interrupts();
            true
        }
        Outcome::HostNmi => {
            if shared::STOPPING.load(Ordering::SeqCst) {
                cpu::halt_forever();
            }
            true
        }
        Outcome::Resume => write_back(slot, &regs, vm, node),
        Outcome::Inject(fault) => inject(fault) && write_back(slot, &regs, vm, node),
        Outcome::Yield => false,
        Outcome::Halt { interrupts_enabled } => {
            let _ = slot.vcpu.set_registers(&regs);
            slot.vcpu.state = VcpuState::Halted;
            if !interrupts_enabled {
                block(node, slot, regs);
            }
            false
        }
        Outcome::Init => {
            slot.vcpu.state = VcpuState::WaitForSipi;
            block(node, slot, regs);
            false
        }
        Outcome::WriteCr { cr, value } => {
            write_cr(cr, value, slot);
            write_back(slot, &regs, vm, node)
        }
        Outcome::SetXcr0(value) => {
            cpu::set_xcr0(value);
            write_back(slot, &regs, vm, node)
        }
        Outcome::PowerOff { status } => {
            vm.request_end(
                node,
                End::Exited {
                    status,
                    vcpu: slot.vcpu.id,
                },
            );
            false
        }
        Outcome::Stop(reason) => {
            vm.request_end(node, stopped(slot, reason, regs));
            false
        }
    }
}

fn write_back(slot: &mut Slot, regs: &Registers, vm: &Vm, node: &Node) -> bool {
    if slot.vcpu.set_registers(regs).is_err() {
        let reason = StopReason::EntryFailed {
            instruction_error: 0,
        };
        vm.request_end(node, stopped(slot, reason, *regs));
        return false;
    }
    true
}

/// A vCPU that nothing can wake yet; when every vCPU of its VM is so, the
/// VM can never run again and is stopped.
fn block(node: &Node, slot: &Slot, regs: Registers) {
    let blocked = slot.vm.blocked.fetch_add(1, Ordering::AcqRel) + 1;
    if blocked >= u32::from(slot.vm.spec.vcpus) {
        slot.vm
            .request_end(node, stopped(slot, StopReason::HaltedForever, regs));
    }
}

/// Queues a hardware exception for the next entry (SDM 26.6.1.1: type 3,
/// deliver error code, valid).
fn inject(fault: Fault) -> bool {
    let mut info = u64::from(fault.vector) | (3 << 8) | (1 << 31);
    if let Some(code) = fault.error_code {
        info |= 1 << 11;
        let _ = vmx::write(control::VMENTRY_EXCEPTION_ERR_CODE, u64::from(code));
    }
    vmx::write(control::VMENTRY_INTERRUPTION_INFO_FIELD, info).is_ok()
}

/// Completes MOV to CR0/CR4: the hardware value obeys the fixed bits, the
/// guest reads back what it wrote. Turning paging on with EFER.LME set
/// enters IA-32e mode (SDM Vol. 3A, 10.8.5): EFER.LMA and the entry
/// control follow CR0.PG.
fn write_cr(cr: u8, value: u64, slot: &Slot) {
    let fixed = slot.vcpu.fixed();
    match cr {
        0 => {
            let _ = vmx::write(guest::CR0, fixed.guest_cr0(value));
            let _ = vmx::write(control::CR0_READ_SHADOW, value);
            let efer = vmx::read(guest::IA32_EFER_FULL);
            let (lme, lma) = (1 << 8, 1 << 10);
            let long = value & vmcs::cr0::PG != 0 && efer & lme != 0;
            let efer = if long { efer | lma } else { efer & !lma };
            let _ = vmx::write(guest::IA32_EFER_FULL, efer);
            let entry = vmx::read(control::VMENTRY_CONTROLS) as u32;
            let _ = vmx::write(
                control::VMENTRY_CONTROLS,
                u64::from(vmcs::entry_controls(entry, long)),
            );
        }
        _ => {
            let _ = vmx::write(guest::CR4, fixed.guest_cr4(value));
            let _ = vmx::write(control::CR4_READ_SHADOW, value);
        }
    }
}

/// The services the dispatcher calls, for one exit of one vCPU.
struct Env<'a> {
    node: &'a Node,
    slot_vm: &'a Vm,
    vcpu: u16,
}

impl ExitEnv for Env<'_> {
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        crate::exits::cpuid(self.slot_vm, self.vcpu, leaf, subleaf)
    }

    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        crate::exits::port_in(self.node, self.slot_vm, port, size)
    }

    fn port_out(&mut self, port: u16, size: u8, value: u32) -> Option<Outcome> {
        crate::exits::port_out(self.node, self.slot_vm, port, size, value)
    }

    fn rdmsr(&mut self, msr: u32) -> Option<u64> {
        crate::exits::rdmsr(msr)
    }

    fn wrmsr(&mut self, msr: u32, value: u64) -> bool {
        crate::exits::wrmsr(msr, value)
    }

    fn hypercall(&mut self, regs: &mut Registers) -> Outcome {
        crate::exits::hypercall(self.node, self.slot_vm, self.vcpu, regs)
    }

    fn mmio(
        &mut self,
        _gpa: GuestPhysAddr,
        _access: EptAccess,
        _regs: &mut Registers,
    ) -> Option<Outcome> {
        None
    }

    fn xcr0_supported(&self) -> u64 {
        cpu::xcr0_supported()
    }
}
