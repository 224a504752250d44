//! Node bring-up mechanics: the hardware half of boot part 1's hand-over
//! and of part 2 (thesis 4.5.3 steps 2-3). `node.rs` decides; this module
//! touches memory by physical address, starts CPUs and switches stacks and
//! page tables.
//!
//! Everything here trusts the plan's boot axioms, which the planner checks
//! and its property tests pin: node memory (kernel memory included), the
//! trampoline pages, channels and doorbells are pairwise disjoint, inside
//! RAM, and clear of the image and boot modules. So a node may use its own
//! ranges as it likes without aliasing anything else.

use core::sync::atomic::Ordering;

use atoll_cluster::isolation::node_regions;
use atoll_cluster::plan::{NodePlan, Plan};
use atoll_platform::paging::{MapError, PageTables};

use super::gdt::CpuTables;
use super::heap::NodeHeap;
use super::hooks::{self, BootState, Node, NodeStart};
use super::kmem::{IST_STACK_BYTES, KernelLayout, KernelMemory};
use super::percpu::{self, PerCpu};
use super::status;
use super::trampoline::{StartArgs, Trampoline};
use super::{apic, paging, sections, sharedmem, time};

/// How long a starting CPU has to leave the trampoline.
/// Generous: under a loaded emulator a new CPU may wait long for host time.
const CPU_START_TIMEOUT_MS: u32 = 5000;
/// INIT-SIPI-SIPI sequences within that time, while the CPU shows no sign
/// of life.
const CPU_START_ATTEMPTS: u32 = 10;

/// Part 1: turns the boot CPU into the boot node's first CPU, on the
/// node's arrival stack (the top of its kernel memory).
pub fn enter_boot_node(plan: &NodePlan, start: &'static NodeStart) -> ! {
    // SAFETY: the top FIRST_STACK_BYTES of a node's kernel memory are its
    // first CPU's arrival stack (kmem.rs layout), used by nothing else; the
    // boot identity map covers all RAM; `node_entry` never returns.
    unsafe {
        paging::run_on_stack(
            plan.kernel_memory.end(),
            node_entry,
            start as *const NodeStart as u64,
        )
    }
}

/// Where a node's first CPU enters part 2 (from the trampoline, or from
/// `enter_boot_node`). `arg` is a `&'static NodeStart`.
extern "C" fn node_entry(arg: u64) -> ! {
    // SAFETY: part 1 passes the address of a leaked NodeStart in the boot
    // heap, which every node maps read-only for good.
    let start = unsafe { &*(arg as *const NodeStart) };
    hooks::node_main(start)
}

/// Where every other CPU enters, from the trampoline. `arg` is the CPU's
/// PerCpu, which its node's first CPU placed in node kernel memory.
extern "C" fn ap_entry(arg: u64) -> ! {
    percpu::clear();
    // SAFETY: the first CPU placed a fresh PerCpu for this CPU alone in node
    // kernel memory and does not touch it afterwards.
    let block = unsafe { &mut *(arg as *mut PerCpu) };
    let node = block.node;
    let slot = block.slot;
    percpu::install(block);
    // SAFETY: the node's tables (built by `build_node`) map the image, the
    // node's memory (this stack and the PerCpu block) and everything this
    // CPU touches, at the same physical addresses.
    unsafe { paging::activate(node.page_root) };
    hooks::ap_main(node, slot)
}

/// Gives this CPU its own GDT and TSS with IST stacks from node memory.
pub fn load_cpu_tables(node: &Node) {
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
}

/// Part 1: zeroes every channel and doorbell: a doorbell left non-zero by firmware
/// would look rung forever (and so never send its IPI).
pub fn clear_shared_memory(plan: &Plan) {
    let channels = plan.channels.iter().map(|c| c.range);
    let doorbells = plan.signals.iter().map(|s| s.doorbell);
    for range in channels.chain(doorbells) {
        // SAFETY: part 1, boot identity map (extended to all RAM); the
        // planner keeps channels and doorbells apart from everything else.
        unsafe { sharedmem::zero(range.start.0, range.len) };
    }
}

/// Why a CPU did not start.
#[derive(Debug)]
pub struct CpuStartError<'p> {
    node: &'p str,
    cpu: u32,
    apic_id: u32,
    reason: &'static str,
}

impl core::fmt::Display for CpuStartError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "CPU {} (APIC ID {}) of node '{}' did not start: {}",
            self.cpu, self.apic_id, self.node, self.reason
        )
    }
}

/// Sends INIT-SIPI-SIPI to `node`'s first CPU through its trampoline page.
/// (Errors borrow the plan: the boot heap is sealed, so part 1 cannot
/// allocate any more.)
pub fn start_first_cpu<'p>(
    node: &'p NodePlan,
    start: &'static NodeStart,
) -> Result<(), CpuStartError<'p>> {
    // SAFETY: the trampoline page belongs to this node, which has no CPU
    // running yet; the boot identity map covers it.
    let trampoline = unsafe { Trampoline::install(node.trampoline.start.0) };
    let args = StartArgs {
        stack_top: node.kernel_memory.end(),
        main: node_entry,
        arg: start as *const NodeStart as u64,
    };
    let (cpu, apic_id) = node.cpus.first().map_or((0, 0), |c| (c.index.0, c.apic_id));
    start_cpu(&trampoline, &args, &node.name, cpu, apic_id)
}

/// Starts one CPU through `trampoline` and waits until it has left it.
fn start_cpu<'p>(
    trampoline: &Trampoline,
    args: &StartArgs,
    node: &'p str,
    cpu: u32,
    apic_id: u32,
) -> Result<(), CpuStartError<'p>> {
    let fail = |reason| CpuStartError {
        node,
        cpu,
        apic_id,
        reason,
    };
    trampoline.prepare(args);
    // The new CPU must see the trampoline and its data before it runs them
    // (thesis 5.3: a fence before each CPU start publishes part 1's writes).
    core::sync::atomic::fence(Ordering::SeqCst);
    // INIT-SIPI-SIPI, repeated while the CPU has not even begun the
    // trampoline. QEMU TCG sometimes leaves the target in its firmware park
    // loop the first time (no stage mark appears); a CPU that has begun the
    // trampoline is never sent another INIT, which would reset it.
    for _ in 0..CPU_START_ATTEMPTS {
        if trampoline.stage() == 0 {
            apic::send_init(apic_id)
                .map_err(|_| fail("the local APIC did not accept the INIT IPI"))?;
            for _ in 0..2 {
                apic::send_startup(apic_id, trampoline.vector())
                    .map_err(|_| fail("the local APIC did not accept the start-up IPI"))?;
            }
        }
        for _ in 0..CPU_START_TIMEOUT_MS / CPU_START_ATTEMPTS {
            if trampoline.has_started() {
                trampoline.acknowledge();
                return Ok(());
            }
            time::idle_us(1000);
        }
    }
    Err(fail(match trampoline.stage() {
        0 => "it never ran the trampoline (10 INIT-SIPI-SIPI sequences in 5 s)",
        1 => "it stopped in the trampoline's real-mode code",
        _ => "it stopped in the trampoline's protected-mode code",
    }))
}

/// Builds the node's page tables and `Node` record in its kernel memory and
/// installs the first CPU's per-CPU block; returns with the node's tables
/// active.
pub fn build_node(
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
        .place(hooks::new_node(boot, index, heap, root, status, layout))
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

/// Maps what node `index` may touch, and nothing else
/// (`atoll_cluster::isolation::node_regions` decides what).
fn build_tables(
    kmem: &mut KernelMemory,
    boot: &BootState,
    index: usize,
    layout: &KernelLayout,
) -> Result<u64, MapError> {
    let mut tables = PageTables::new(kmem)?;
    let image = sections::layout();
    node_regions(&boot.plan, index, &image, layout, apic::base(), |r| {
        tables.identity_map(r.start, r.end - r.start, r.flags)
    })?;
    map_vm_images(&mut tables, &boot.plan, index)?;
    Ok(tables.root())
}

/// Maps, read-only, the guest images (boot modules) the node's VMs load,
/// page by page: two images may share a page, or two VMs an image.
fn map_vm_images<M: atoll_platform::paging::TableMemory>(
    tables: &mut PageTables<M>,
    plan: &Plan,
    index: usize,
) -> Result<(), MapError> {
    let names = plan
        .vms
        .iter()
        .filter(|vm| usize::from(vm.node.0) == index)
        .flat_map(|vm| {
            core::iter::once(&vm.kernel)
                .chain(vm.initrd.as_ref())
                .chain(&vm.modules)
        });
    for name in names {
        let Some(image) = super::images::all().iter().find(|i| &i.name == name) else {
            continue; // reported when the VM is built
        };
        let first = image.start & !0xfff;
        let end = image
            .start
            .saturating_add(image.len)
            .next_multiple_of(0x1000);
        for page in (first..end).step_by(0x1000) {
            if tables.translate(page).is_none() {
                tables.identity_map(page, 0x1000, atoll_platform::paging::Flags::READ_ONLY)?;
            }
        }
    }
    Ok(())
}

/// Starts the node's CPUs after the first, one at a time through the node's
/// own trampoline page.
pub fn start_other_cpus(node: &'static Node, plan: &NodePlan) {
    let page = plan.trampoline.start.0;
    // The boot CPU may still be watching this page for our arrival; reuse it
    // only once it has said it saw us (the boot node's first CPU is the boot
    // CPU: it never came through the page).
    // SAFETY: part 1 installed the trampoline in this node's page, which
    // the node's tables map read-write; this CPU has left it.
    let arrival = unsafe { Trampoline::existing(page) };
    let boot_node = node.index == usize::from(node.boot.plan.boot_node.0);
    for _ in 0..CPU_START_TIMEOUT_MS {
        if boot_node || arrival.acknowledged() {
            break;
        }
        time::idle_us(1000);
    }
    // SAFETY: as above; no CPU of the node runs in the page, and the boot
    // CPU no longer reads it.
    let trampoline = unsafe { Trampoline::install(page) };
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
            main: ap_entry,
            arg: block as *mut PerCpu as u64,
        };
        if let Err(e) = start_cpu(&trampoline, &args, &plan.name, cpu.index.0, cpu.apic_id) {
            hooks::report_error("cpu_start", &e);
        }
    }
    // Wait until every started CPU has finished its own set-up.
    let expected = plan.cpus.len() as u32;
    for _ in 0..CPU_START_TIMEOUT_MS {
        if node.status.cpus_up.load(Ordering::SeqCst) >= expected {
            return;
        }
        time::idle_us(1000);
    }
}
