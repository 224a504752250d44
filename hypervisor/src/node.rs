//! Nodes: the end of boot part 1 (starting each node's first CPU) and all
//! of part 2 (thesis 4.5.3 steps 2-3, 5.4.2), then each node's run loop.
//!
//! ```text
//!  part 1 (boot CPU, boot page tables)          part 2 (each node's first CPU)
//!  plan -> BootState (boot heap, then sealed)    arrive on a stack at the top
//!  for each other node:                          of kernel memory, boot tables
//!    copy trampoline to its page, fence,         build the node's page tables
//!    INIT-SIPI-SIPI its first CPU  ----------->  from kernel memory; Node record,
//!  then become the boot node's first CPU          heap, per-CPU block (GS); CR3
//!                                                start the node's other CPUs
//!                                                publish `Up` on the status board
//! ```
//!
//! From part 2 on a CPU touches only its node's memory, the channels and
//! doorbells its node holds, its node's status page, and the read-only
//! image (which contains the global boot state). Its page tables enforce it.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use atoll_cluster::plan::{NodePlan, Plan};
use atoll_platform::acpi::SoftOff;
use atoll_platform::event::HexRange;
use spin::{Mutex, Once};

use crate::arch::biglock::BigLock;
use crate::arch::heap::NodeHeap;
use crate::arch::kmem::{KernelLayout, KernelMemory};
use crate::arch::percpu::{self, PerCpu};
use crate::arch::status::{self, NodeState, StatusPage};
use crate::arch::{self, apic, cpu, idt, nodeboot, time};
use crate::vm::{Vm, VmBoard};
use crate::{console, selftest};

/// The global boot state: written once by part 1, then read-only for every
/// node (it lives in the boot heap, inside the image, which node page
/// tables map read-only).
pub struct BootState {
    pub plan: Plan,
    pub soft_off: Option<SoftOff>,
    pub selftest: selftest::Selftest,
    /// The VMX capabilities, when the processor can run VMs.
    pub vmx: Option<atoll_platform::vmx::VmxCaps>,
    /// `[[vm]]` tables refused at boot (`vm_refused`): they count as
    /// failed VMs in the power-off status.
    pub refused: u32,
}

/// What part 1 hands a node's first CPU: the only argument of part 2.
pub struct NodeStart {
    pub boot: &'static BootState,
    pub node: usize,
}

/// A node's kernel state, in its own kernel memory.
pub struct Node {
    pub index: usize,
    pub boot: &'static BootState,
    pub heap: NodeHeap,
    /// The node's own copy of its plan, in its heap.
    pub plan: Once<NodePlan>,
    /// The node's PML4 (CR3 of each of its CPUs).
    pub page_root: u64,
    pub status: &'static StatusPage,
    /// Kernel memory for per-CPU blocks and tables of CPUs still to start.
    pub kmem: Mutex<KernelMemory>,
    /// Where the CPUs' stacks and guard pages are.
    pub layout: KernelLayout,
    /// Notifications taken from doorbells, per sending node, waiting to be
    /// consumed (bit n = notification n).
    pub pending: [AtomicU64; status::MAX_NODES],
    /// The node's self-test state (node-local).
    pub test: selftest::NodeTest,
    /// Per CPU of the node (by slot): a kick is on its way to it
    /// (atoll_cluster::kick: at most one at a time).
    pub kick_pending: [AtomicBool; crate::arch::biglock::MAX_NODE_CPUS],
    /// The node's VMs, built in part 2 before the other CPUs start.
    pub vms: Once<Vec<&'static Vm>>,
    /// Node state that VM exits share across CPUs, under the node's big
    /// lock (thesis 4.5: one lock per node kernel).
    pub kernel: BigLock<NodeKernel>,
}

/// What the node lock guards.
#[derive(Default)]
pub struct NodeKernel {
    /// Each VM's devices, by the VM's index in the node.
    pub devices: Vec<VmBoard>,
}

impl Node {
    /// A fresh node record around the parts arch built for it
    /// (`arch::hooks::new_node`): no VMs, no plan copy, nothing pending.
    pub fn new(
        boot: &'static BootState,
        index: usize,
        heap: NodeHeap,
        page_root: u64,
        status: &'static StatusPage,
        layout: KernelLayout,
    ) -> Node {
        Node {
            index,
            boot,
            heap,
            plan: Once::new(),
            page_root,
            status,
            kmem: Mutex::new(KernelMemory::empty()),
            layout,
            pending: [const { AtomicU64::new(0) }; status::MAX_NODES],
            test: selftest::NodeTest::new(),
            kick_pending: [const { AtomicBool::new(false) }; crate::arch::biglock::MAX_NODE_CPUS],
            vms: Once::new(),
            kernel: BigLock::new(NodeKernel::default()),
        }
    }

    /// Runs `f` on the devices of the node's VM `local` with the node lock
    /// held. `None` if the lock refused this CPU (it already holds it: a
    /// bug) or there is no such VM; callers then act as if no device
    /// answered.
    pub fn with_devices<R>(&self, local: usize, f: impl FnOnce(&mut VmBoard) -> R) -> Option<R> {
        let slot = percpu::current().map_or(0, |c| c.slot);
        let mut guard = self.kernel.lock(slot, cpu::rdtsc).ok()?;
        guard.devices.get_mut(local).map(f)
    }

    /// Kicks the node's CPU `cpu` (MADT index) unless a kick is on its
    /// way to it already. Returns whether it sent one (`None`: no such CPU
    /// in the node).
    pub fn kick(&self, cpu: u32) -> Option<bool> {
        let plan = self.plan.get()?;
        let slot = plan.cpus.iter().position(|c| c.index.0 == cpu)?;
        let target = plan.cpus.get(slot)?;
        let flag = self.kick_pending.get(slot)?;
        if !atoll_cluster::kick::request(flag) {
            return Some(false);
        }
        let _ = apic::send_fixed(target.apic_id, idt::KICK_VECTOR);
        Some(true)
    }

    /// A VM of this node ended for good.
    pub fn vm_ended(&self, failed: bool) {
        if failed {
            self.status.vms_failed.fetch_add(1, Ordering::SeqCst);
        }
        self.status.vms_running.fetch_sub(1, Ordering::SeqCst);
    }

    /// Called by an idle CPU: the boot node's first CPU powers the machine
    /// off once every node's VMs have ended.
    pub fn idle_check(&self) {
        let first = percpu::current().is_some_and(|c| c.slot == 0);
        if first && self.index == usize::from(self.boot.plan.boot_node.0) {
            maybe_power_off(self);
        }
    }
}

/// How long the boot node waits for every node to come up.
const NODES_UP_TIMEOUT_MS: u32 = 10_000;

/// Ends part 1: starts every other node's first CPU, then turns the boot CPU
/// into its node's first CPU. Never returns.
pub fn start_cluster(boot: &'static BootState) -> ! {
    // Every node's NodeStart is written before the boot heap is sealed:
    // after that, part 1 writes nothing more to the global boot state.
    let starts: Vec<&'static NodeStart> = (0..boot.plan.nodes.len())
        .map(|node| &*alloc::boxed::Box::leak(alloc::boxed::Box::new(NodeStart { boot, node })))
        .collect();
    nodeboot::clear_shared_memory(&boot.plan);
    arch::heap::seal_boot_heap();
    // Read the APIC base now: every node maps the page, and the first read
    // fills a static, which only part 1 may write. The boot CPU's tick lets
    // it wait for starting CPUs halted rather than spinning.
    apic::base();
    let mode = apic::choose_mode(cpu::features().x2apic);
    log::info!("local APIC mode: {mode:?}");
    apic::init_local();
    apic::calibrate_timer();
    apic::start_periodic_timer(idt::TIMER_VECTOR);
    let boot_node = usize::from(boot.plan.boot_node.0);
    for (node, start) in boot.plan.nodes.iter().zip(&starts) {
        if start.node != boot_node
            && let Err(e) = nodeboot::start_first_cpu(node, start)
        {
            crate::boot::fatal("cpu_start", e, boot.soft_off);
        }
    }
    let (Some(node), Some(start)) = (boot.plan.nodes.get(boot_node), starts.get(boot_node)) else {
        crate::boot::fatal("plan", "the plan has no boot node", boot.soft_off);
    };
    nodeboot::enter_boot_node(node, start)
}

/// Part 2, on a node's first CPU, with only its `NodeStart` (its plan in
/// the global boot state) to go on.
pub fn node_main(start: &'static NodeStart) -> ! {
    percpu::clear();
    let boot = start.boot;
    let Some(plan) = boot.plan.nodes.get(start.node) else {
        stop_node_early("no plan for this node");
    };
    let node = match nodeboot::build_node(boot, start.node, plan) {
        Ok(node) => node,
        Err(e) => {
            console::event("error", |ev| {
                ev.field("kind", "node_tables")
                    .field("msg", format_args!("node '{}': {e}", plan.name))
            });
            stop_node_early("its page tables could not be built");
        }
    };
    node.plan.call_once(|| plan.clone());
    build_vms(node, plan);
    cpu_init(node, 0);
    nodeboot::start_other_cpus(node, plan);
    // Report first, then publish `Up`: the boot node may power off as soon
    // as every node is up, and this node's `node_up` line must be out.
    report_node_up(node, plan);
    node.status.set_state(NodeState::Up);
    if node.index == usize::from(boot.plan.boot_node.0) {
        coordinate(node)
    } else if boot.selftest == selftest::Selftest::None {
        run_vcpus_or_idle(node)
    } else {
        selftest::first_cpu_role(node)
    }
}

/// Builds the node's VMs (memory, EPT, loaded images) before its other
/// CPUs start, and counts them on the status board.
fn build_vms(node: &'static Node, plan: &NodePlan) {
    let specs = crate::vm::specs_for_node(&node.boot.plan, node.index);
    if specs.is_empty() {
        node.vms.call_once(Vec::new);
        return;
    }
    if node.boot.vmx.is_none() {
        console::event("error", |e| {
            e.field("kind", "vmx")
                .field(
                    "msg",
                    format_args!(
                        "node '{}' has VMs, but this processor lacks VMX with EPT, VPID and unrestricted guest (QEMU TCG has none); run it in Bochs (cargo xtask run), or boot a config without [[vm]] tables such as configs/core.toml",
                        plan.name
                    ),
                )
        });
        node.status.vms_failed.fetch_add(
            u32::try_from(specs.len()).unwrap_or(u32::MAX),
            Ordering::SeqCst,
        );
        node.vms.call_once(Vec::new);
        return;
    }
    let mut vms = Vec::with_capacity(specs.len());
    let mut devices = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = spec.name.clone();
        let (_, heap_free) = node.heap.usage();
        let built = Vm::build(vms.len(), spec, plan, &node.kmem, heap_free);
        match built {
            Ok(vm) => {
                devices.push(vm.new_devices());
                vms.push(&*alloc::boxed::Box::leak(alloc::boxed::Box::new(vm)));
            }
            Err(e) => {
                console::event("error", |ev| {
                    ev.field("kind", "vm_build")
                        .field("msg", format_args!("VM '{name}': {e}"))
                });
                node.status.vms_failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    if let Ok(mut kernel) = node.kernel.lock(0, cpu::rdtsc) {
        kernel.devices = devices;
    }
    node.status.vms_running.store(
        u32::try_from(vms.len()).unwrap_or(u32::MAX),
        Ordering::SeqCst,
    );
    for vm in &vms {
        vm.report_start(node);
    }
    node.vms.call_once(|| vms);
}

/// A CPU's life after set-up when no self-test runs: its vCPUs, or idling
/// (and, on the boot node's first CPU, powering off at the end).
fn run_vcpus_or_idle(node: &'static Node) -> ! {
    if let Some(caps) = node.boot.vmx {
        crate::sched::run_vcpus(node, &caps);
    }
    loop {
        node.idle_check();
        cpu::wait_for_interrupt();
    }
}

/// Per-CPU set-up shared by first and other CPUs, on the node's tables:
/// own GDT and TSS (IST stacks), IDT, local APIC and its tick.
pub fn cpu_init(node: &Node, slot: usize) {
    nodeboot::load_cpu_tables(node);
    idt::init();
    apic::init_local();
    apic::start_periodic_timer(idt::TIMER_VECTOR);
    let cpu = percpu::current();
    let (index, apic_id) = cpu.map_or((0, 0), |c| (c.cpu, c.apic_id));
    arch::shared::mark_running(apic_id);
    console::event("cpu_up", |e| {
        e.field("cpu", index)
            .field("apic_id", apic_id)
            .field("node", node.index)
            .field("slot", slot)
    });
    node.status.cpus_up.fetch_add(1, Ordering::SeqCst);
}

/// Every CPU but a node's first, on its node's tables (from the
/// trampoline through `nodeboot`).
pub fn ap_main(node: &'static Node, slot: usize) -> ! {
    cpu_init(node, slot);
    if node.boot.selftest == selftest::Selftest::None {
        run_vcpus_or_idle(node)
    }
    selftest::other_cpu_role(node, slot)
}

fn report_node_up(node: &Node, plan: &NodePlan) {
    let cpus: Vec<u32> = plan.cpus.iter().map(|c| c.index.0).collect();
    let apic_ids: Vec<u32> = plan.cpus.iter().map(|c| c.apic_id).collect();
    let mem: Vec<HexRange> = plan
        .memory
        .iter()
        .map(|r| HexRange(r.start.0, r.end()))
        .collect();
    let mem_mib: u64 = plan.memory.iter().map(|r| r.len).sum::<u64>() >> 20;
    let (heap_used, heap_free) = node.heap.usage();
    console::event("node_up", |e| {
        e.field("node", node.index)
            .field("name", plan.name.as_str())
            .field("cpus", cpus.as_slice())
            .field("apic_ids", apic_ids.as_slice())
            .field("mem", mem.as_slice())
            .field("mem_mib", mem_mib)
            .field(
                "kernel",
                HexRange(plan.kernel_memory.start.0, plan.kernel_memory.end()),
            )
            .field("domain", plan.domain.map(|d| d.0))
            .field("heap_bytes", heap_free + heap_used)
    });
}

/// The boot node's first CPU after its node is up: wait for every node,
/// run the self-test, power off.
fn coordinate(node: &'static Node) -> ! {
    let boot = node.boot;
    let nodes = boot.plan.nodes.len();
    let mut waited = 0;
    // A node that came up and stopped itself since (an isolation fault)
    // counts as up: only a node that never started is waited for.
    while (0..nodes).any(|i| status::page(i).is_none_or(|p| p.state() == NodeState::NotStarted)) {
        if waited >= NODES_UP_TIMEOUT_MS {
            crate::boot::fatal(
                "node_timeout",
                "not every node came up within 10 s",
                boot.soft_off,
            );
        }
        time::idle_us(1000);
        waited += 1;
    }
    log::info!("all {nodes} nodes are up");
    if boot.selftest == selftest::Selftest::None {
        run_vcpus_or_idle(node)
    }
    let status = selftest::coordinate(node);
    crate::boot::power_off(
        status,
        if status == 0 { "done" } else { "selftest" },
        boot.soft_off,
    )
}

/// Powers the machine off once every node's VMs have ended: status 0 if
/// each exited with status 0, 1 otherwise. A cluster without VMs ends at
/// once.
fn maybe_power_off(node: &Node) {
    let nodes = node.boot.plan.nodes.len();
    let pages = (0..nodes).filter_map(status::page);
    let running: u32 = pages
        .clone()
        .map(|p| p.vms_running.load(Ordering::SeqCst))
        .sum();
    if running > 0 {
        return;
    }
    let failed: u32 = pages
        .map(|p| p.vms_failed.load(Ordering::SeqCst))
        .sum::<u32>()
        .saturating_add(node.boot.refused);
    let status = u8::from(failed > 0);
    crate::boot::power_off(
        status,
        if failed > 0 { "vm_failed" } else { "done" },
        node.boot.soft_off,
    )
}

/// Interrupt dispatch, from the IDT's interrupt stubs.
pub fn on_interrupt(vector: u8) {
    let Some(cpu) = percpu::current() else {
        return;
    };
    match vector {
        idt::SIGNAL_VECTOR => crate::signals::take_doorbells(cpu.node),
        idt::STOP_VECTOR => {
            apic::eoi();
            cpu::halt_forever();
        }
        // A tick may have come early for a vCPU's timer (sched.rs).
        idt::TIMER_VECTOR => apic::restore_tick(),
        // A kick wakes the CPU (or ends its guest); its run loop looks at
        // the mailboxes next, after this clears the flag (kick.rs says
        // why that order loses nothing). The flag stays set until the
        // kick interrupt is taken, so however many requests are posted
        // meanwhile, one kick is in flight.
        idt::KICK_VECTOR => {
            if let Some(flag) = cpu.node.kick_pending.get(cpu.slot) {
                atoll_cluster::kick::take(flag);
            }
        }
        _ => {}
    }
}

/// A page fault: if the address belongs to another node, this is an
/// isolation fault: report it and stop this node. Otherwise return, and the
/// caller reports a panic.
pub fn on_page_fault(addr: u64, rip: u64, error_code: u64) {
    let Some(cpu) = percpu::current() else {
        return;
    };
    let node = cpu.node;
    let owner = node
        .boot
        .plan
        .nodes
        .iter()
        .position(|n| n.memory.iter().any(|r| r.start.0 <= addr && addr < r.end()));
    let Some(owner) = owner.filter(|&o| o != node.index) else {
        return;
    };
    console::event("isolation_fault", |e| {
        e.field("node", node.index)
            .field("cpu", cpu.cpu)
            .field("addr", atoll_platform::event::Hex(addr))
            .field("owner", owner)
            .field("rip", atoll_platform::event::Hex(rip))
            .field("write", error_code & 2 != 0)
    });
    arch::shared::ISOLATION_FAULTS.fetch_add(1, Ordering::SeqCst);
    stop_node(node, cpu)
}

/// Stops every CPU of `node`: the others by the stop IPI, this one halts.
fn stop_node(node: &Node, me: &PerCpu) -> ! {
    node.status.set_state(NodeState::Stopped);
    if let Some(plan) = node.plan.get() {
        for cpu in plan.cpus.iter().filter(|c| c.apic_id != me.apic_id) {
            let _ = apic::send_fixed(cpu.apic_id, idt::STOP_VECTOR);
        }
    }
    console::event("node_stopped", |e| {
        e.field("node", node.index)
            .field("reason", "isolation_fault")
    });
    cpu::halt_forever()
}

/// Stops a node whose part 2 failed before it had a `Node` record.
fn stop_node_early(reason: &str) -> ! {
    log::error!("node stopped during part 2: {reason}");
    cpu::halt_forever()
}
