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

use atoll_cluster::plan::{Access, NodePlan, Plan};
use atoll_platform::acpi::SoftOff;
use atoll_platform::event::HexRange;
use atoll_platform::paging::{Flags, MapError, PageTables, TableMemory};
use spin::{Mutex, Once};

use crate::arch::gdt::CpuTables;
use crate::arch::heap::NodeHeap;
use crate::arch::kmem::{GUARD_BYTES, IST_STACK_BYTES, KernelLayout, KernelMemory};
use crate::arch::percpu::{self, PerCpu};
use crate::arch::status::{self, NodeState, StatusPage};
use crate::arch::trampoline::{StartArgs, Trampoline};
use crate::arch::{self, apic, cpu, idt, image, paging, time};
use crate::{console, selftest};

/// The global boot state: written once by part 1, then read-only for every
/// node (it lives in the boot heap, inside the image, which node page
/// tables map read-only).
pub struct BootState {
    pub plan: Plan,
    pub soft_off: Option<SoftOff>,
    pub selftest: selftest::Selftest,
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
    /// Set by the first CPU once every CPU of the node is up.
    pub all_up: AtomicBool,
    /// Notifications taken from doorbells, per sending node, waiting to be
    /// consumed (bit n = notification n).
    pub pending: [AtomicU64; status::MAX_NODES],
    /// The node's self-test state (node-local).
    pub test: selftest::NodeTest,
}

/// How long a starting CPU has to leave the trampoline.
const CPU_START_TIMEOUT_MS: u32 = 500;
/// How long the boot node waits for every node to come up.
const NODES_UP_TIMEOUT_MS: u32 = 10_000;
/// The APIC timer period in APIC clock ticks: a wake-up tick for waits.
const TICK_BUS_CYCLES: u32 = 1_000_000;

/// Ends part 1: starts every other node's first CPU, then turns the boot CPU
/// into its node's first CPU. Never returns.
pub fn start_cluster(boot: &'static BootState) -> ! {
    // Every node's NodeStart is written before the boot heap is sealed:
    // after that, part 1 writes nothing more to the global boot state.
    let starts: Vec<&'static NodeStart> = (0..boot.plan.nodes.len())
        .map(|node| &*alloc::boxed::Box::leak(alloc::boxed::Box::new(NodeStart { boot, node })))
        .collect();
    clear_shared_memory(&boot.plan);
    arch::heap::seal_boot_heap();
    // Read the APIC base now: every node maps the page, and the first read
    // fills a static, which only part 1 may write.
    apic::base();
    let boot_node = usize::from(boot.plan.boot_node.0);
    for (node, start) in boot.plan.nodes.iter().zip(&starts) {
        if start.node != boot_node {
            if let Err(e) = start_first_cpu(node, start) {
                crate::boot::fatal("cpu_start", e, boot.soft_off);
            }
        }
    }
    let (Some(node), Some(start)) = (boot.plan.nodes.get(boot_node), starts.get(boot_node)) else {
        crate::boot::fatal("plan", "the plan has no boot node", boot.soft_off);
    };
    // SAFETY: the top of the boot node's kernel memory is reserved for its
    // first CPU's arrival stack; the boot identity map covers all RAM.
    unsafe {
        paging::run_on_stack(
            node.kernel_memory.end(),
            node_main,
            *start as *const NodeStart as u64,
        )
    }
}

/// Zeroes every channel and doorbell: a doorbell left non-zero by firmware
/// would look rung forever (and so never send its IPI).
fn clear_shared_memory(plan: &Plan) {
    let channels = plan.channels.iter().map(|c| c.range);
    let doorbells = plan.signals.iter().map(|s| s.doorbell);
    for range in channels.chain(doorbells) {
        // SAFETY: part 1, boot identity map (extended to all RAM); the
        // planner keeps channels and doorbells apart from everything else.
        unsafe { arch::sharedmem::zero(range.start.0, range.len) };
    }
}

/// Why a CPU did not start.
#[derive(Debug)]
pub struct CpuStartError {
    node: alloc::string::String,
    cpu: u32,
    apic_id: u32,
    reason: &'static str,
}

impl core::fmt::Display for CpuStartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "CPU {} (APIC ID {}) of node '{}' did not start: {}",
            self.cpu, self.apic_id, self.node, self.reason
        )
    }
}

/// Sends INIT-SIPI-SIPI to `node`'s first CPU through its trampoline page.
fn start_first_cpu(node: &NodePlan, start: &'static NodeStart) -> Result<(), CpuStartError> {
    // SAFETY: the trampoline page belongs to this node, which has no CPU
    // running yet; the boot identity map covers it.
    let trampoline = unsafe { Trampoline::install(node.trampoline.start.0) };
    let args = StartArgs {
        stack_top: node.kernel_memory.end(),
        main: node_main,
        arg: start as *const NodeStart as u64,
    };
    let (cpu, apic_id) = node.cpus.first().map_or((0, 0), |c| (c.index.0, c.apic_id));
    start_cpu(&trampoline, &args, &node.name, cpu, apic_id)
}

/// Starts one CPU through `trampoline` and waits until it has left it.
fn start_cpu(
    trampoline: &Trampoline,
    args: &StartArgs,
    node: &str,
    cpu: u32,
    apic_id: u32,
) -> Result<(), CpuStartError> {
    let fail = |reason| CpuStartError {
        node: node.into(),
        cpu,
        apic_id,
        reason,
    };
    trampoline.prepare(args);
    // The new CPU must see the trampoline and its data before it runs them
    // (thesis 5.3: a fence before each CPU start publishes part 1's writes).
    core::sync::atomic::fence(Ordering::SeqCst);
    apic::start_cpu(apic_id, trampoline.vector())
        .map_err(|_| fail("the local APIC did not accept the start-up IPI"))?;
    for _ in 0..CPU_START_TIMEOUT_MS {
        if trampoline.has_started() {
            return Ok(());
        }
        time::delay_us(1000);
    }
    Err(fail(
        "it did not reach the trampoline's 64-bit code within 500 ms",
    ))
}

/// Part 2, on a node's first CPU. `arg` is a `&'static NodeStart`.
extern "C" fn node_main(arg: u64) -> ! {
    // SAFETY: part 1 passes the address of a leaked, 'static NodeStart in
    // the boot heap, which stays mapped (read-only) for every node.
    let start = unsafe { &*(arg as *const NodeStart) };
    percpu::clear();
    let boot = start.boot;
    let Some(plan) = boot.plan.nodes.get(start.node) else {
        stop_node_early("no plan for this node");
    };
    let node = match build_node(boot, start.node, plan) {
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
    cpu_init(node, 0);
    start_other_cpus(node, plan);
    node.all_up.store(true, Ordering::SeqCst);
    node.status.set_state(NodeState::Up);
    report_node_up(node, plan);
    if node.index == usize::from(boot.plan.boot_node.0) {
        coordinate(node)
    } else {
        selftest::first_cpu_role(node)
    }
}

/// Builds the node's page tables and `Node` record in its kernel memory and
/// installs the first CPU's per-CPU block; returns with the node's tables
/// active.
fn build_node(
    boot: &'static BootState,
    index: usize,
    plan: &NodePlan,
) -> Result<&'static Node, MapError> {
    let kernel = plan.kernel_memory;
    let no_room = MapError::BadRange {
        start: kernel.start.0,
        len: kernel.len,
    };
    let layout = KernelLayout::new(kernel.start.0, kernel.end(), plan.cpus.len()).ok_or(no_room)?;
    // SAFETY: kernel memory is this node's alone (the plan keeps node memory
    // disjoint), identity-mapped by the boot tables, and nothing else runs
    // in it; the bump range is disjoint from the heap and the stacks.
    let mut kmem = unsafe { KernelMemory::new(layout.bump.0, layout.bump.1) };
    let root = build_tables(&mut kmem, boot, index, &layout)?;
    let status = status::page(index).ok_or(MapError::OutOfFrames)?;
    let (heap_start, heap_end) = layout.heap;
    // SAFETY: the heap range is node kernel memory that the bump allocator
    // and the stacks do not use.
    let heap = unsafe { NodeHeap::new(heap_start, heap_end - heap_start) };
    let node = kmem
        .place(Node {
            index,
            boot,
            heap,
            plan: Once::new(),
            page_root: root,
            status,
            kmem: Mutex::new(KernelMemory::empty()),
            layout,
            all_up: AtomicBool::new(false),
            pending: [const { AtomicU64::new(0) }; status::MAX_NODES],
            test: selftest::NodeTest::new(),
        })
        .ok_or(MapError::OutOfFrames)?;
    let cpu0 = plan.cpus.first().map_or((0, 0), |c| (c.index.0, c.apic_id));
    let block = kmem
        .place(percpu::new_block(cpu0.0, cpu0.1, 0, node))
        .ok_or(MapError::OutOfFrames)?;
    *node.kmem.lock() = kmem;
    percpu::install(block);
    // SAFETY: the node tables map the image (code executable), this node's
    // kernel memory (which holds the current stack) and everything part 2
    // touches next, all at their physical addresses.
    unsafe { paging::activate(root) };
    Ok(node)
}

/// Maps what node `index` may touch, and nothing else.
fn build_tables(
    kmem: &mut KernelMemory,
    boot: &BootState,
    index: usize,
    layout: &KernelLayout,
) -> Result<u64, MapError> {
    let plan = &boot.plan;
    let me = plan.nodes.get(index).ok_or(MapError::OutOfFrames)?;
    let mut tables = PageTables::new(kmem)?;
    let img = image::layout();
    let ((board_start, board_end), own_status) = status::layout(index);
    let own_status = own_status.ok_or(MapError::OutOfFrames)?;
    // The image: the multiboot2 header page and data read-only, code
    // executable, `.shared` writable, the status board read-only except the
    // node's own page.
    let pieces = [
        (img.start, img.text.0, Flags::READ_ONLY),
        (img.text.0, img.text.1, Flags::CODE),
        (img.text.1, img.shared.0, Flags::READ_ONLY),
        (img.shared.0, img.shared.1, Flags::READ_WRITE),
        (img.shared.1, board_start, Flags::READ_ONLY),
        (board_start, own_status, Flags::READ_ONLY),
        (own_status, own_status + 4096, Flags::READ_WRITE),
        (own_status + 4096, board_end, Flags::READ_ONLY),
        (board_end, img.end, Flags::READ_ONLY),
    ];
    for (start, end, flags) in pieces {
        if end > start {
            tables.identity_map(start, end - start, flags)?;
        }
    }
    for range in &me.memory {
        map_around(&mut tables, (range.start.0, range.end()), layout)?;
    }
    tables.identity_map(me.trampoline.start.0, me.trampoline.len, Flags::READ_WRITE)?;
    for &(channel, access) in &me.channels {
        let Some(ch) = plan.channels.get(channel) else {
            continue;
        };
        let flags = match access {
            Access::Read => Flags::READ_ONLY,
            Access::ReadWrite => Flags::READ_WRITE,
        };
        tables.identity_map(ch.range.start.0, ch.range.len, flags)?;
    }
    for signal in &plan.signals {
        if signal.from == me.id || signal.to == me.id {
            tables.identity_map(
                signal.doorbell.start.0,
                signal.doorbell.len,
                Flags::READ_WRITE,
            )?;
        }
    }
    tables.identity_map(apic::base(), 4096, Flags::DEVICE)?;
    Ok(tables.root())
}

/// Maps `[start, end)` read-write, leaving out the stacks' guard pages.
fn map_around<M: TableMemory>(
    tables: &mut PageTables<M>,
    (start, end): (u64, u64),
    layout: &KernelLayout,
) -> Result<(), MapError> {
    let mut from = start;
    for guard in layout.guards().filter(|&g| start <= g && g < end) {
        if guard > from {
            tables.identity_map(from, guard - from, Flags::READ_WRITE)?;
        }
        from = guard + GUARD_BYTES;
    }
    if end > from {
        tables.identity_map(from, end - from, Flags::READ_WRITE)?;
    }
    Ok(())
}

/// Per-CPU set-up shared by first and other CPUs, on the node's tables:
/// own GDT and TSS (IST stacks), IDT, local APIC and its tick.
fn cpu_init(node: &Node, slot: usize) {
    let tables = {
        let mut kmem = node.kmem.lock();
        let double_fault = kmem.stack(IST_STACK_BYTES);
        let nmi = kmem.stack(IST_STACK_BYTES);
        double_fault
            .zip(nmi)
            .and_then(|(df, nmi)| kmem.place(CpuTables::new(df, nmi)))
    };
    match tables {
        Some(tables) => tables.load(),
        None => log::error!(
            "node {}: no kernel memory for CPU tables; no IST stacks",
            node.index
        ),
    }
    idt::init();
    apic::init_local();
    apic::start_periodic_timer(idt::TIMER_VECTOR, TICK_BUS_CYCLES);
    let cpu = percpu::current();
    let (index, apic_id) = cpu.map_or((0, 0), |c| (c.cpu, c.apic_id));
    console::event("cpu_up", |e| {
        e.field("cpu", index)
            .field("apic_id", apic_id)
            .field("node", node.index)
            .field("slot", slot)
    });
    node.status.cpus_up.fetch_add(1, Ordering::SeqCst);
}

/// Starts the node's CPUs after the first, one at a time through the node's
/// own trampoline page.
fn start_other_cpus(node: &'static Node, plan: &NodePlan) {
    // SAFETY: the trampoline page is this node's (mapped read-write in its
    // tables) and no CPU of the node runs in it: the first CPU left it.
    let trampoline = unsafe { Trampoline::install(plan.trampoline.start.0) };
    for (slot, cpu) in plan.cpus.iter().enumerate().skip(1) {
        let prepared = {
            let mut kmem = node.kmem.lock();
            let block = kmem.place(percpu::new_block(cpu.index.0, cpu.apic_id, slot, node));
            node.layout.stack_top(slot).zip(block)
        };
        let Some((stack_top, block)) = prepared else {
            log::error!(
                "node '{}': no kernel memory left to start CPU {}",
                plan.name,
                cpu.index.0
            );
            break;
        };
        let args = StartArgs {
            stack_top,
            main: ap_main,
            arg: block as *mut PerCpu as u64,
        };
        if let Err(e) = start_cpu(&trampoline, &args, &plan.name, cpu.index.0, cpu.apic_id) {
            console::event("error", |ev| {
                ev.field("kind", "cpu_start")
                    .field("msg", format_args!("{e}"))
            });
        }
    }
    // Wait until every started CPU has finished its own set-up.
    let expected = plan.cpus.len() as u32;
    for _ in 0..CPU_START_TIMEOUT_MS {
        if node.status.cpus_up.load(Ordering::SeqCst) >= expected {
            return;
        }
        time::delay_us(1000);
    }
}

/// Entry of every CPU but a node's first, from the trampoline. `arg` is the
/// CPU's `&'static mut PerCpu`, prepared by its node's first CPU in node
/// memory.
extern "C" fn ap_main(arg: u64) -> ! {
    percpu::clear();
    // SAFETY: the node's first CPU passes a fresh PerCpu it placed in node
    // kernel memory for this CPU alone; it does not touch it afterwards.
    let block = unsafe { &mut *(arg as *mut PerCpu) };
    let node = block.node;
    let slot = block.slot;
    percpu::install(block);
    // SAFETY: the node's tables map the image, the node's memory (this
    // stack and the PerCpu block) and everything this CPU touches.
    unsafe { paging::activate(node.page_root) };
    cpu_init(node, slot);
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
    while (0..nodes).any(|i| status::page(i).is_none_or(|p| p.state() != NodeState::Up)) {
        if waited >= NODES_UP_TIMEOUT_MS {
            crate::boot::fatal(
                "node_timeout",
                "not every node came up within 10 s",
                boot.soft_off,
            );
        }
        time::delay_us(1000);
        waited += 1;
    }
    log::info!("all {nodes} nodes are up");
    let status = selftest::coordinate(node);
    crate::boot::power_off(
        status,
        if status == 0 { "done" } else { "selftest" },
        boot.soft_off,
    )
}

/// Interrupt dispatch, from the IDT's interrupt stubs.
pub fn on_interrupt(vector: u8) {
    let Some(cpu) = percpu::current() else {
        return;
    };
    match vector {
        idt::SIGNAL_VECTOR => selftest::take_doorbells(cpu.node),
        idt::STOP_VECTOR => {
            apic::eoi();
            cpu::halt_forever();
        }
        _ => {} // the timer tick only wakes the CPU
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
