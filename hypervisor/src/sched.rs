//! Each CPU's run loop: the vCPUs the plan assigns to this CPU, run round
//! robin. A vCPU stays on its CPU for life, so its VMCS, registers, local
//! APIC and MSRs are only ever touched here (thesis 6.4: other CPUs post
//! requests to the VM's mailboxes and kick this CPU). When a CPU has more
//! than one runnable vCPU, the VMX preemption timer ends each slice; a CPU
//! with none halts until an interrupt (its tick, a kick).
//!
//! One exit, end to end:
//!
//! ```text
//!  mailbox -> local APIC; timer; inject a pending interrupt
//!  enter (vmx::run) -> Exit value -> an event cut short? queue it again
//!                                 -> host interrupt/NMI? take it here
//!                                 -> else dispatch (atoll_vmm) -> Outcome
//!  Outcome applied to the vCPU (registers, injection, CR writes, halt)
//!  or to the VM (power off, stop: Vm::request_end)
//! ```
//!
//! Switching vCPUs on a CPU swaps, besides the VMCS, only what the
//! hardware does not switch: extended (FPU/SSE/AVX) state, XCR0 and the
//! processor-held MSRs (thesis 4.5.5, selective switching).

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use atoll_platform::vmcs::{self, StartMode};
use atoll_platform::vmx::VmxCaps;
use atoll_vmm::dispatch::{self, Fault, Outcome, StopReason};
use atoll_vmm::exit::{Exit, ExitReason, Registers, gpr};
use atoll_vmm::lapic::Lapic;
use atoll_vmm::lifecycle::{End, Parking, VcpuLife};
use atoll_vmm::msr::GuestMsrs;
use atoll_vmm::vectoring;

use crate::arch::fpu::FpuArea;
use crate::arch::vmcs::{self as fields, GuestReg};
use crate::arch::{apic, cpu, percpu, shared, vmx};
use crate::console;
use crate::exit_env::Env;
use crate::node::Node;
use crate::vcpu::{Vcpu, VcpuState, VmcsTemplate};
use crate::vm::{Boot, Vm};

/// A time slice when vCPUs share a CPU, in microseconds.
const SLICE_US: u64 = 10_000;
/// Exits handled in a row before the loop looks at its other vCPUs and
/// the VM's requests again (so a storm of exits cannot starve them).
const EXITS_PER_TURN: u32 = 64;
/// XCR0 after reset: x87 only (SDM Vol. 1, 13.3).
const XCR0_RESET: u64 = 1;

/// One vCPU this CPU runs, and everything of it the hardware does not
/// keep in the VMCS. (Named for what it is, a vCPU hosted by this CPU:
/// "slot" in Atoll means a CPU's place in its node, e.g. in the node
/// lock's queue.)
pub struct HostedVcpu {
    pub vm: &'static Vm,
    pub vcpu: Vcpu,
    pub lapic: Lapic,
    pub msrs: GuestMsrs,
    pub xcr0: u64,
    fpu: FpuArea,
    /// CR2 and the debug registers, while another vCPU has the CPU.
    loose: cpu::LooseRegs,
    /// The VM generation it was reset for, and whether it checked out.
    life: VcpuLife,
    /// RFLAGS.IF at the HLT that halted it: whether an interrupt wakes it.
    halted_interruptible: bool,
    /// When a `wait` hypercall gives up (TSC; `u64::MAX` = never).
    pub wait_deadline: u64,
    /// The VM's EPT generation this CPU's translations are current for.
    ept_generation: u32,
    /// A device of the VM has work this vCPU's notification left: this
    /// CPU runs a slice of it per pass of its loop (devwork.rs).
    pub device_work: bool,
}

/// What the loop needs about the machine.
struct LoopContext {
    /// Preemption-timer value of a full slice.
    slice: u32,
    /// Preemption-timer value of a turn while device work is pending.
    device_turn: u32,
    /// The preemption timer counts once every 2^shift TSC ticks.
    shift: u32,
    xsave: bool,
    /// The plan's VM names, for console focus reports.
    vm_names: Vec<&'static str>,
}

/// How often (TSC ticks) a CPU looks for console input: about every 100
/// us at the calibrated rate, well within the time the UART's 16-byte FIFO
/// takes to fill at 115200 baud (1.4 ms). A guest that does not exit for
/// longer delays it: pasted text can overflow the FIFO.
fn input_poll_ticks() -> u64 {
    crate::arch::time::tsc_per_us().saturating_mul(100).max(1)
}

/// This CPU's part after it is up: run its vCPUs forever. Returns only if
/// the CPU has no vCPU at all (the caller then idles).
pub fn run_vcpus(node: &'static Node, caps: &VmxCaps) -> Option<core::convert::Infallible> {
    let me = percpu::current()?;
    let vms = node.vms.get()?;
    // vCPU numbers are below MAX_VCPUS (255), so u16 holds them.
    let on_this_cpu = || {
        vms.iter().flat_map(move |vm| {
            vm.spec
                .vcpu_cpus
                .iter()
                .enumerate()
                .filter(move |(_, cpu)| **cpu == me.cpu)
                .filter_map(move |(i, _)| Some((*vm, u16::try_from(i).ok()?)))
        })
    };
    let count = on_this_cpu().count();
    if count == 0 {
        return None;
    }
    // Both lists grow with the config: allocated fallibly, and if the node
    // heap cannot hold them, this CPU's vCPUs are stopped, not the host.
    let mut mine: Vec<(&'static Vm, u16)> = Vec::new();
    let mut all_hosted: Vec<HostedVcpu> = Vec::new();
    if mine.try_reserve_exact(count).is_err() || all_hosted.try_reserve_exact(count).is_err() {
        log::error!("CPU {}: no node heap for its {count} vCPUs", me.cpu);
        for (vm, id) in on_this_cpu() {
            abandon(node, vm, id);
        }
        return None;
    }
    mine.extend(on_this_cpu());
    let setup = vmx::enable_on_this_cpu(caps, &mut node.kmem.lock())
        .map_err(|e| alloc::format!("VMX cannot be turned on: {e}"))
        .and_then(|()| vmcs::controls(caps).map_err(|e| alloc::format!("{e}")));
    let controls = match setup {
        Ok(controls) => controls,
        Err(e) => {
            log::error!("CPU {}: {e}", me.cpu);
            for (vm, id) in &mine {
                abandon(node, vm, *id);
            }
            return None;
        }
    };
    for (vm, id) in mine {
        let template = VmcsTemplate {
            controls,
            fixed: caps.fixed_bits(),
            eptp: vm.eptp,
            vpid: vm.vpid,
        };
        let mut kmem = node.kmem.lock();
        let built = Vcpu::new(id, caps, template, &mut kmem, start_mode(vm, id))
            .map_err(|e| alloc::format!("{e}"))
            .and_then(|vcpu| {
                Ok((
                    vcpu,
                    FpuArea::new(&mut kmem).ok_or("no memory for FPU state")?,
                ))
            });
        drop(kmem);
        match built {
            Ok((vcpu, fpu)) => {
                let mut hosted = HostedVcpu {
                    vm,
                    lapic: new_lapic(id),
                    vcpu,
                    msrs: GuestMsrs::default(),
                    xcr0: XCR0_RESET,
                    fpu,
                    loose: cpu::LooseRegs::default(),
                    life: VcpuLife::default(),
                    halted_interruptible: false,
                    wait_deadline: u64::MAX,
                    ept_generation: 0,
                    device_work: false,
                };
                prepare_boot_registers(&mut hosted);
                all_hosted.push(hosted);
            }
            Err(e) => {
                log::error!("VM '{}' vCPU {id}: {e}", vm.spec.name);
                abandon(node, vm, id);
            }
        }
    }
    let ctx = LoopContext {
        slice: slice_ticks(caps, all_hosted.len()),
        device_turn: us_to_timer(caps, crate::devwork::TURN_US),
        shift: (caps.misc & 0x1f) as u32,
        xsave: cpu::has_xsave(),
        vm_names: node.boot.plan.vms.iter().map(|v| v.name.as_str()).collect(),
    };
    run_loop(node, &mut all_hosted, &ctx)
}

/// A vCPU this CPU cannot run (VMX or its VMCS could not be set up): its
/// VM is stopped, and the vCPU checks out at once so the VM can end.
fn abandon(node: &Node, vm: &Vm, id: u16) {
    let reason = StopReason::SetupFailed;
    let regs = Registers::default();
    vm.request_end(
        node,
        End::Stopped {
            reason,
            vcpu: id,
            regs,
        },
    );
    vm.check_out(node);
}

fn new_lapic(id: u16) -> Lapic {
    let mut lapic = Lapic::new(u32::from(id));
    // The virtual APIC timer counts at the TSC rate (CPUID 0x40000010
    // tells the guest so).
    lapic.set_timer_clock(1);
    lapic
}

/// vCPU 0 starts at the kernel's entry, in the mode its boot protocol
/// asks for; the others wait for a start-up IPI.
fn start_mode(vm: &Vm, id: u16) -> StartMode {
    if id != 0 {
        return StartMode::RealMode { vector: 0 };
    }
    match vm.boot() {
        Boot::Multiboot(entry) => StartMode::Protected32 { eip: entry.entry },
        Boot::Linux(entry) => StartMode::Long64 {
            rip: entry.rip,
            cr3: entry.cr3,
            gdt_base: entry.gdt_base,
            gdt_limit: entry.gdt_limit,
            code_selector: entry.code_selector,
            data_selector: entry.data_selector,
        },
    }
}

/// The boot protocol's registers for vCPU 0 (multiboot: EAX, EBX; Linux:
/// RSI, the zero page); the others wait for a start-up IPI, so nothing
/// but an IPI can run them.
fn prepare_boot_registers(hosted: &mut HostedVcpu) {
    if hosted.vcpu.id == 0 {
        match hosted.vm.boot() {
            Boot::Multiboot(entry) => {
                hosted.vcpu.set_gpr(gpr::RAX, u64::from(entry.eax));
                hosted.vcpu.set_gpr(gpr::RBX, u64::from(entry.ebx));
            }
            Boot::Linux(entry) => hosted.vcpu.set_gpr(gpr::RSI, entry.rsi),
        }
    } else {
        hosted.vcpu.state = VcpuState::WaitForSipi;
        // Not a stuck VM yet: vCPU 0 runs and will send the start-up IPI.
        hosted.vm.life.block();
    }
}

/// The preemption-timer value for one slice: the timer counts down once
/// every 2^X TSC ticks, X = IA32_VMX_MISC[4:0] (SDM 25.5.1). A CPU with
/// one vCPU gets the longest slice there is.
fn slice_ticks(caps: &VmxCaps, vcpus: usize) -> u32 {
    if vcpus <= 1 {
        return u32::MAX;
    }
    us_to_timer(caps, SLICE_US)
}

/// `us` microseconds as a preemption-timer value (at least 1).
fn us_to_timer(caps: &VmxCaps, us: u64) -> u32 {
    let shift = caps.misc & 0x1f;
    let ticks = crate::arch::time::tsc_per_us().saturating_mul(us) >> shift;
    u32::try_from(ticks).unwrap_or(u32::MAX).max(1)
}

fn run_loop(node: &'static Node, all_hosted: &mut [HostedVcpu], ctx: &LoopContext) -> ! {
    let mut current: Option<usize> = None;
    let mut next = 0;
    let mut next_input_poll = 0;
    loop {
        let now = cpu::rdtsc();
        if now >= next_input_poll {
            console::poll_input(&ctx.vm_names);
            next_input_poll = now.saturating_add(input_poll_ticks());
        }
        // Resetting a vCPU (restart, INIT, SIPI) loads its VMCS: the
        // current vCPU's must be loaded again before it runs.
        let mut vmcs_moved = false;
        for hosted in all_hosted.iter_mut() {
            vmcs_moved |= sync_with_vm(node, hosted);
        }
        // Device work first, one slice per VM that has some: a CPU with
        // work pending never idles (devwork.rs).
        let mut device_work = false;
        for hosted in all_hosted.iter_mut().filter(|s| s.device_work) {
            crate::devwork::run_slice(node, hosted);
            device_work |= hosted.device_work;
        }
        let count = all_hosted.len();
        let pick = (0..count)
            .map(|i| (next + i) % count)
            .find(|&i| all_hosted.get(i).is_some_and(runnable));
        let Some(i) = pick else {
            if device_work {
                continue;
            }
            node.idle_check();
            // A halted vCPU's timer or a `wait` timeout must not wait for
            // the next tick: make the tick come at the earliest of them.
            if let Some(deadline) = all_hosted.iter().filter_map(wake_deadline).min() {
                apic::tick_by(deadline);
            }
            cpu::wait_for_interrupt();
            continue;
        };
        next = i + 1;
        if current != Some(i) {
            switch(all_hosted, current, i, ctx.xsave);
            current = Some(i);
        } else if vmcs_moved && let Some(hosted) = all_hosted.get(i) {
            let _ = hosted.vcpu.load();
        }
        let turn = if device_work {
            ctx.device_turn
        } else {
            ctx.slice
        };
        if let Some(hosted) = all_hosted.get_mut(i) {
            run_turn(node, hosted, ctx, turn);
        }
    }
}

/// Hands the CPU from vCPU `from` to vCPU `to`: extended state, XCR0 and
/// the processor-held MSRs, then the VMCS. XSAVE and XRSTOR run with XCR0
/// set to everything the processor supports: a guest's XCR0 may leave out
/// state it uses anyway (SSE registers work with XCR0 = x87 only, SDM
/// Vol. 1, 13.3), and that state must be switched too.
fn switch(all_hosted: &mut [HostedVcpu], from: Option<usize>, to: usize, xsave: bool) {
    if xsave {
        cpu::set_xcr0(cpu::xcr0_supported());
    }
    if let Some(old) = from.and_then(|f| all_hosted.get_mut(f)) {
        old.fpu.save(xsave);
        old.loose = cpu::save_loose_regs();
        for &msr in &atoll_vmm::msr::CHANGED_WITHOUT_EXIT {
            old.msrs.save_from_processor(msr, cpu::read_guest_msr(msr));
        }
    }
    let Some(new) = all_hosted.get_mut(to) else {
        return;
    };
    new.fpu.restore(xsave);
    cpu::restore_loose_regs(&new.loose);
    cpu::set_xcr0(new.xcr0);
    for (msr, value) in new.msrs.processor_held() {
        cpu::load_guest_msr(msr, value);
    }
    if new.vcpu.load().is_err() {
        log::error!("VM '{}': VMPTRLD failed", new.vm.spec.name);
    }
}

/// When a blocked vCPU wants to run again by itself: its local APIC timer
/// (if halted with interrupts on) or its `wait` timeout.
fn wake_deadline(hosted: &HostedVcpu) -> Option<u64> {
    match hosted.vcpu.state {
        VcpuState::Halted if hosted.halted_interruptible => hosted.lapic.next_deadline(),
        VcpuState::Waiting => Some(hosted.wait_deadline).filter(|&d| d != u64::MAX),
        _ => None,
    }
}

fn runnable(hosted: &HostedVcpu) -> bool {
    !hosted.life.is_parked() && hosted.vm.is_running() && hosted.vcpu.state == VcpuState::Runnable
}

/// Applies the VM's requests to one of this CPU's vCPUs: a new generation
/// (restart) resets it; an ending VM parks it; posted interrupts, INIT and
/// SIPI reach its local APIC; a due timer or interrupt wakes it from HLT.
/// Returns whether it loaded the vCPU's VMCS (to reset it).
fn sync_with_vm(node: &Node, hosted: &mut HostedVcpu) -> bool {
    let mut loaded = false;
    if hosted.life.take_new_generation(&hosted.vm.life) {
        restart_vcpu(hosted);
        loaded = true;
    }
    let parking = hosted.life.park_if_ending(&hosted.vm.life);
    if parking != Parking::No {
        hosted.device_work = false;
        hosted.vcpu.state = VcpuState::Done;
        if parking == Parking::ParkedLast {
            hosted.vm.finish(node);
        }
        return loaded;
    }
    if hosted.life.is_parked() {
        return loaded;
    }
    if hosted.vcpu.id == 0 && console::has_input(hosted.vm.spec.global) {
        hosted.vm.take_console_input(node, 0);
    }
    loaded |= take_mailbox(node, hosted);
    let now = cpu::rdtsc();
    hosted.lapic.tick(now);
    if hosted.vcpu.state == VcpuState::Halted
        && hosted.halted_interruptible
        && hosted.lapic.pending().is_some()
    {
        hosted.vcpu.state = VcpuState::Runnable;
    }
    if hosted.vcpu.state == VcpuState::Waiting
        && (hosted.vm.has_notifications() || now >= hosted.wait_deadline)
    {
        crate::hypercalls::finish_wait(hosted);
    }
    let ept_generation = hosted.vm.ept_generation.load(Ordering::Acquire);
    if ept_generation != hosted.ept_generation {
        // A mapping was removed: drop what this CPU cached (SDM 29.4.3.1).
        vmx::invept_single(hosted.vm.eptp);
        hosted.ept_generation = ept_generation;
    }
    loaded
}

/// A restarted VM: this vCPU from scratch.
fn restart_vcpu(hosted: &mut HostedVcpu) {
    // The restarted guest builds new page tables in the same memory:
    // translations this CPU cached for the old incarnation (tagged with
    // the VM's VPID and EPT) must go first (SDM 29.4.3.3). Every CPU with a
    // vCPU of the VM does this for itself when the restart kick reaches it.
    vmx::invvpid_single(hosted.vm.vpid);
    vmx::invept_single(hosted.vm.eptp);
    let mode = start_mode(hosted.vm, hosted.vcpu.id);
    if hosted.vcpu.reset(mode).is_err() {
        log::error!("VM '{}': vCPU reset failed", hosted.vm.spec.name);
    }
    hosted.lapic = new_lapic(hosted.vcpu.id);
    hosted.vm.publish_recipient(hosted.vcpu.id, &hosted.lapic);
    hosted.msrs = GuestMsrs::default();
    hosted.xcr0 = XCR0_RESET;
    hosted.fpu.clear();
    hosted.loose = cpu::LooseRegs::default();
    hosted.device_work = false;
    prepare_boot_registers(hosted);
}

/// Moves what other vCPUs posted for this one into its local APIC
/// (interrupts) or its run state (INIT, then SIPI, in that order).
/// Returns whether it reset the vCPU (which loads its VMCS).
fn take_mailbox(node: &Node, hosted: &mut HostedVcpu) -> bool {
    let id = hosted.vcpu.id;
    let Some(requests) = hosted.vm.mailbox(id).and_then(|m| m.take()) else {
        return false;
    };
    for (vector, level) in requests.interrupts() {
        if level {
            hosted.lapic.raise_level(vector);
        } else {
            hosted.lapic.raise(vector);
        }
    }
    let mut reset = false;
    if requests.init {
        // INIT (SDM 10.4.7.3): the vCPU waits for a start-up IPI.
        let was_blocked = matches!(hosted.vcpu.state, VcpuState::WaitForSipi)
            || hosted.vcpu.state == VcpuState::Halted && !hosted.halted_interruptible;
        let _ = hosted.vcpu.load();
        let regs = hosted.vcpu.registers();
        reset_for_start_up(hosted, 0);
        hosted.vcpu.state = VcpuState::WaitForSipi;
        hosted.lapic = new_lapic(id);
        hosted.vm.publish_recipient(id, &hosted.lapic);
        reset = true;
        if !was_blocked {
            block(node, hosted, regs);
        }
    }
    if let Some(vector) = requests.sipi
        && hosted.vcpu.state == VcpuState::WaitForSipi
    {
        reset_for_start_up(hosted, vector);
        hosted.vcpu.state = VcpuState::Runnable;
        hosted.vm.life.unblock();
        reset = true;
    }
    reset
}

/// Resets a vCPU for INIT or a start-up IPI (real mode at `vector`'s
/// page). A failure is logged: the next entry then fails and stops the VM
/// with the VM-instruction error.
fn reset_for_start_up(hosted: &mut HostedVcpu, vector: u8) {
    if hosted.vcpu.reset(StartMode::RealMode { vector }).is_err() {
        log::error!(
            "VM '{}': vCPU {} reset for start-up failed",
            hosted.vm.spec.name,
            hosted.vcpu.id
        );
    }
}

/// Runs one vCPU until its slice (`turn`, a preemption-timer value) ends,
/// it blocks, or its VM ends.
fn run_turn(node: &Node, hosted: &mut HostedVcpu, ctx: &LoopContext, turn: u32) {
    for _ in 0..EXITS_PER_TURN {
        // An INIT taken here leaves the vCPU waiting for a start-up IPI:
        // it must not be entered until one comes.
        if take_mailbox(node, hosted) && hosted.vcpu.state != VcpuState::Runnable {
            return;
        }
        let now = cpu::rdtsc();
        hosted.lapic.tick(now);
        inject_pending_interrupt(hosted);
        let slice = hosted.lapic.next_deadline().map_or(turn, |deadline| {
            let ticks = deadline.saturating_sub(now) >> ctx.shift;
            u32::try_from(ticks).unwrap_or(u32::MAX).min(turn)
        });
        let entered = cpu::rdtsc();
        let exit = match hosted.vcpu.enter(slice) {
            Ok(exit) => exit,
            Err(failed) => {
                let reason = StopReason::EntryFailed {
                    instruction_error: failed.instruction_error,
                };
                let regs = hosted.vcpu.registers();
                hosted.vm.request_end(node, stopped(hosted, reason, regs));
                return;
            }
        };
        let exited = cpu::rdtsc();
        reinject_cut_short_event(&exit);
        let keep_going = handle_exit(node, hosted, &exit);
        hosted
            .vm
            .record_exit(exit.reason, exited - entered, cpu::rdtsc() - exited);
        if !keep_going || !hosted.vm.is_running() || hosted.vcpu.state != VcpuState::Runnable {
            return;
        }
    }
}

/// Queues again, for the next entry, an event whose delivery the exit cut
/// short (`atoll_vmm::vectoring`): an interrupt already taken from the
/// local APIC would otherwise be lost. An exception the exit handler
/// injects replaces it; a pending interrupt waits behind it (the
/// interrupt window).
fn reinject_cut_short_event(exit: &Exit) {
    let (info, error_code) = fields::idt_vectoring();
    let Some(again) = vectoring::reinjection(info, error_code, exit.instruction_len) else {
        return;
    };
    if let Some(len) = again.instruction_len {
        let _ = fields::set_entry_instruction_len(len);
    }
    let _ = fields::set_entry_interruption(again.entry_info, again.error_code);
}

/// Delivers the local APIC's highest pending interrupt if the guest can
/// take it now (RFLAGS.IF set, no STI/MOV SS blocking, no event already
/// being injected); otherwise asks for an exit as soon as it can
/// (interrupt-window exiting, SDM 25.6.2).
fn inject_pending_interrupt(hosted: &mut HostedVcpu) {
    let Some(vector) = hosted.lapic.pending() else {
        hosted.vcpu.set_interrupt_window(false);
        return;
    };
    let injecting = fields::entry_interruption() & vmcs::interruption::VALID != 0;
    let open = fields::guest_reg(GuestReg::Rflags) & vmcs::RFLAGS_IF != 0
        && fields::interruptibility() & vmcs::BLOCKING_STI_MOV_SS == 0;
    if injecting || !open {
        hosted.vcpu.set_interrupt_window(true);
        return;
    }
    // External interrupt, type 0, valid (SDM 26.6.1.1).
    let _ = fields::set_entry_interruption(vmcs::interruption::external_interrupt(vector), None);
    hosted.lapic.acknowledge(vector);
    hosted.vcpu.set_interrupt_window(false);
}

fn stopped(hosted: &HostedVcpu, reason: StopReason, regs: Registers) -> End {
    End::Stopped {
        reason,
        vcpu: hosted.vcpu.id,
        regs,
    }
}

/// Handles one exit; false when the vCPU should not be re-entered now.
fn handle_exit(node: &Node, hosted: &mut HostedVcpu, exit: &Exit) -> bool {
    let paging = exit.reason == ExitReason::EptViolation;
    let mut regs = hosted.vcpu.exit_registers(paging);
    let outcome = dispatch::dispatch(exit, &mut regs, &mut Env::new(node, hosted));
    let vm = hosted.vm;
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
        Outcome::Resume => write_back(node, hosted, &regs),
        Outcome::Inject(fault) => {
            crate::exit_env::report_fault(node, vm, hosted.vcpu.id, fault, &regs);
            inject(fault) && write_back(node, hosted, &regs)
        }
        // The slice ended, or a hypercall blocked the vCPU (its RIP and
        // result registers must still be written back).
        Outcome::Yield => {
            write_back(node, hosted, &regs);
            false
        }
        Outcome::Halt { interrupts_enabled } => {
            let _ = hosted.vcpu.set_registers(&regs);
            if interrupts_enabled && hosted.lapic.pending().is_some() {
                return true; // HLT with an interrupt waiting: it wakes at once
            }
            hosted.vcpu.state = VcpuState::Halted;
            hosted.halted_interruptible = interrupts_enabled;
            hosted.vm.show_prompt(node);
            if !interrupts_enabled {
                block(node, hosted, hosted.vcpu.registers());
            }
            false
        }
        Outcome::Init => {
            hosted.vcpu.state = VcpuState::WaitForSipi;
            block(node, hosted, hosted.vcpu.registers());
            false
        }
        Outcome::WriteCr { cr, value } => {
            write_cr(cr, value, hosted);
            write_back(node, hosted, &regs)
        }
        Outcome::SetXcr0(value) => {
            cpu::set_xcr0(value);
            hosted.xcr0 = value;
            write_back(node, hosted, &regs)
        }
        Outcome::PowerOff { status } => {
            let end = End::Exited {
                status,
                vcpu: hosted.vcpu.id,
            };
            vm.request_end(node, end);
            false
        }
        Outcome::Reboot => {
            vm.request_end(node, End::Rebooted);
            false
        }
        Outcome::Stop(reason) => {
            // The report shows the vCPU as it exited, paging registers too.
            vm.request_end(node, stopped(hosted, reason, hosted.vcpu.registers()));
            false
        }
    }
}

fn write_back(node: &Node, hosted: &mut HostedVcpu, regs: &Registers) -> bool {
    if hosted.vcpu.set_registers(regs).is_err() {
        let reason = StopReason::EntryFailed {
            instruction_error: 0,
        };
        hosted.vm.request_end(node, stopped(hosted, reason, *regs));
        return false;
    }
    true
}

/// A vCPU that nothing can wake but INIT or SIPI; when every vCPU of its
/// VM is so, the VM can never run again and is stopped.
fn block(node: &Node, hosted: &HostedVcpu, regs: Registers) {
    if hosted.vm.life.block() {
        hosted
            .vm
            .request_end(node, stopped(hosted, StopReason::HaltedForever, regs));
    }
}

/// Queues a hardware exception for the next entry (SDM 26.6.1.1: type 3,
/// deliver error code, valid).
fn inject(fault: Fault) -> bool {
    let info = vmcs::interruption::hardware_exception(fault.vector, fault.error_code.is_some());
    fields::set_entry_interruption(info, fault.error_code).is_ok()
}

/// Completes MOV to CR0/CR4: the hardware value obeys the fixed bits, the
/// guest reads back what it wrote. Turning paging on with EFER.LME set
/// enters IA-32e mode (SDM Vol. 3A, 10.8.5): EFER.LMA and the entry
/// control follow CR0.PG.
fn write_cr(cr: u8, value: u64, hosted: &HostedVcpu) {
    let fixed = hosted.vcpu.fixed();
    match cr {
        0 => {
            let _ = fields::set_guest_reg(GuestReg::Cr0, fixed.guest_cr0(value));
            let _ = fields::set_cr0_shadow(value);
            let efer = fields::guest_reg(GuestReg::Efer);
            let (lme, lma) = (vmcs::efer::LME, vmcs::efer::LMA);
            let long = value & vmcs::cr0::PG != 0 && efer & lme != 0;
            let efer = if long { efer | lma } else { efer & !lma };
            let _ = fields::set_guest_reg(GuestReg::Efer, efer);
            let entry = fields::entry_controls();
            let _ = fields::set_entry_controls(vmcs::entry_controls(entry, long));
        }
        _ => {
            let _ = fields::set_guest_reg(GuestReg::Cr4, fixed.guest_cr4(value));
            let _ = fields::set_cr4_shadow(value);
        }
    }
}
