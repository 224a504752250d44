//! Performing hypercalls (ABI: vmm/HYPERCALLS.md). `atoll_vmm::hypercall`
//! decodes and checks the call against what the VM holds; only a call that
//! passed every check reaches `perform`, which changes state.

use alloc::vec::Vec;

use atoll_vmm::GuestMemory;
use atoll_vmm::dispatch::Outcome;
use atoll_vmm::exit::{Registers, gpr};
use atoll_vmm::hypercall::{self, Args, Context, Error, Hypercall, Output};

use crate::arch::cpu;
use crate::arch::time;
use crate::node::Node;
use crate::sched::HostedVcpu;
use crate::vcpu::VcpuState;
use crate::vm;

/// What performing a call leads to.
enum Performed {
    /// Done: write the outputs and resume.
    Done(Output),
    /// The vCPU blocks (`wait`); its result is written when it wakes.
    Blocked,
    /// Something the run loop carries out (power off).
    Outcome(Outcome),
}

/// Handles a VMCALL (RIP already past it).
pub fn handle(node: &Node, hosted: &mut HostedVcpu, regs: &mut Registers) -> Outcome {
    let args = Args {
        rax: regs.get(gpr::RAX),
        rdi: regs.get(gpr::RDI),
        rsi: regs.get(gpr::RSI),
        rdx: regs.get(gpr::RDX),
        rcx: regs.get(gpr::RCX),
        cpl: regs.cpl,
    };
    let vm = hosted.vm;
    let signals: Vec<u64> = vm.spec.signals.iter().map(|s| s.notifications).collect();
    let channels = vm.channel_state();
    let taken = vm.taken_regions();
    let ctx = Context {
        ram_bytes: vm.spec.memory.len,
        signals: &signals,
        channels: &channels,
        taken: &taken,
    };
    let result = hypercall::decode(&args, &ctx).and_then(|call| perform(node, hosted, call));
    match result {
        Ok(Performed::Outcome(outcome)) => outcome,
        Ok(Performed::Blocked) => Outcome::Yield,
        Ok(Performed::Done(out)) => {
            write_result(regs, Ok(out));
            Outcome::Resume
        }
        Err(e) => {
            write_result(regs, Err(e));
            Outcome::Resume
        }
    }
}

fn write_result(regs: &mut Registers, result: Result<Output, Error>) {
    let (rax, out) = hypercall::result_registers(result);
    regs.set(gpr::RAX, rax);
    if let Some(out) = out {
        regs.set(gpr::RDX, out.rdx);
        regs.set(gpr::RSI, out.rsi);
        regs.set(gpr::RDI, out.rdi);
    }
}

fn perform(node: &Node, hosted: &mut HostedVcpu, call: Hypercall) -> Result<Performed, Error> {
    let vm = hosted.vm;
    let done = |rdx| {
        Ok(Performed::Done(Output {
            rdx,
            ..Output::default()
        }))
    };
    match call {
        Hypercall::Version => done(u64::from(atoll_vmm::cpuid::HYPERCALL_ABI_VERSION)),
        Hypercall::ConsoleWrite { gpa, len } => {
            console_write(vm, gpa, len)?;
            done(len)
        }
        Hypercall::Ids => Ok(Performed::Done(Output {
            rdx: vm.spec.global as u64,
            rsi: u64::from(hosted.vcpu.id),
            rdi: node.index as u64,
        })),
        Hypercall::Signal {
            handle,
            notification,
        } => {
            let cap = vm
                .spec
                .signals
                .get(usize::from(handle))
                .ok_or(Error::BadHandle)?;
            crate::signals::signal(node, usize::from(cap.node.0), u32::from(notification))
                .map_err(|_| Error::Unavailable)?;
            done(0)
        }
        Hypercall::Wait { timeout_us } => {
            let pending = vm.take_notifications();
            if pending != 0 || timeout_us == Some(0) {
                return done(pending);
            }
            hosted.wait_deadline = timeout_us.map_or(u64::MAX, |us| {
                cpu::rdtsc().saturating_add(us.saturating_mul(time::tsc_per_us()))
            });
            hosted.vcpu.state = VcpuState::Waiting;
            Ok(Performed::Blocked)
        }
        Hypercall::MapChannel { handle, gpa, .. } => {
            // Checked again under the VM's mapping lock (Vm::map_channel).
            done(vm.map_channel(handle, gpa.0)?)
        }
        Hypercall::PowerOff { status } => Ok(Performed::Outcome(Outcome::PowerOff { status })),
        Hypercall::ReportStats => {
            vm::report_stats(vm, node);
            done(0)
        }
    }
}

/// Prints guest bytes as console lines of the VM (one line per '\n';
/// what follows the last one is a line too).
fn console_write(vm: &vm::Vm, gpa: atoll_vmm::GuestPhysAddr, len: u64) -> Result<(), Error> {
    let mut buf = [0u8; hypercall::CONSOLE_MAX as usize];
    let bytes = buf.get_mut(..len as usize).ok_or(Error::BadArgument)?;
    // One copy out of guest memory: the guest may change the bytes while
    // they are printed, but only this copy is used.
    vm.ram.read(gpa, bytes).map_err(|_| Error::BadAddress)?;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let printable: Vec<u8> = line
            .iter()
            .map(|b| {
                if b.is_ascii_graphic() || *b == b' ' {
                    *b
                } else {
                    b'?'
                }
            })
            .collect();
        vm::print_guest_line(vm, &printable);
    }
    Ok(())
}

/// Completes a `wait` whose notification arrived or whose time ran out:
/// RAX = 0, RDX = the notifications taken (0 on timeout).
pub fn finish_wait(hosted: &mut HostedVcpu) {
    let pending = hosted.vm.take_notifications();
    hosted.vcpu.set_gpr(gpr::RAX, 0);
    hosted.vcpu.set_gpr(gpr::RDX, pending);
    hosted.vcpu.state = VcpuState::Runnable;
}
