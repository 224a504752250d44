//! Device work in slices (vmm/DESIGN.md, "Device work in slices"): a
//! virtio-blk notification only records work; the hypervisor serves it one
//! bounded slice at a time, taking the node lock for each slice only, so
//! the node's other vCPUs (which need the lock for their own device
//! accesses) wait at most one slice, never a whole request.
//!
//! Who runs the slices: the exit that made the work runs the first one
//! (so a small request completes before the guest resumes); if work
//! remains, the hosted vCPU is marked and its CPU runs one slice per pass
//! of its loop (sched.rs), whether the vCPU runs, polls or halts waiting
//! for the completion interrupt. While a hosted vCPU has work, this CPU's vCPU
//! turns are cut to [`TURN_US`] so slices come often.

use atoll_vmm::virtio::budget::{self, Budget};

use crate::arch::guestram::GuestRam;
use crate::arch::{cpu, time};
use crate::console;
use crate::node::Node;
use crate::sched::HostedVcpu;
use crate::vm::{Vm, VmBoard};

/// The longest a vCPU runs between two slices of its CPU's device work
/// (microseconds): as long as a slice may take, so devices and vCPUs share
/// the CPU about evenly while work is pending.
pub const TURN_US: u64 = budget::SLICE_US;

/// One slice of `board`'s device work over the VM's RAM, with the node
/// lock already held; the time it takes is counted on the board. Returns
/// whether work remains.
pub fn slice_locked(board: &mut VmBoard, ram: GuestRam) -> bool {
    let start = cpu::rdtsc();
    let ticks = time::tsc_per_us().saturating_mul(budget::SLICE_US);
    let mut budget = Budget::new(budget::SLICE_BYTES, ticks, cpu::rdtsc);
    let mut ram = ram;
    let more = board.work(&mut ram, &mut budget);
    board.slices.record(cpu::rdtsc().saturating_sub(start));
    more
}

/// One slice for the VM of `hosted` (its CPU's loop): takes the node lock
/// for the slice only, then delivers the interrupts a completion raised.
pub fn run_slice(node: &Node, hosted: &mut HostedVcpu) {
    let ram = hosted.vm.ram;
    let (more, messages) = node
        .with_devices(hosted.vm.local, |board| {
            (slice_locked(board, ram), board.take_messages())
        })
        .unwrap_or((false, alloc::vec::Vec::new()));
    hosted.device_work = more;
    hosted.vm.post_interrupts(node, hosted.vcpu.id, &messages);
}

/// The `device_work` event for a VM with a virtio-blk disk, when it ends.
pub fn report(vm: &Vm, node: &Node) {
    let figures = node
        .with_devices(vm.local, |board| Some((board.blk_stats()?, board.slices)))
        .flatten();
    let Some(((requests, failed, request_max), slices)) = figures else {
        return;
    };
    console::event("device_work", |e| {
        e.field("vm", vm.spec.name.as_str())
            .field("node", node.index)
            .field("requests", requests)
            .field("failed", failed)
            .field("request_max_ticks", request_max)
            .field("slices", slices.count)
            .field("slice_max_ticks", slices.max_ticks)
            .field("slice_ticks", slices.total_ticks)
    });
}
