//! Inter-node signals (thesis 4.5.6): the sending side of the IPI
//! capability (a doorbell bit, and an IPI only when the doorbell was
//! empty) and the receiving side (the signal interrupt takes the doorbells
//! and hands each notification to the VM the plan routes it to).

use core::sync::atomic::Ordering;

use atoll_cluster::doorbell::Doorbell;
use atoll_cluster::plan::NodeId;

use crate::arch::status::{self, NodeState};
use crate::arch::{apic, idt, sharedmem};
use crate::node::Node;

/// The interrupt handler's part: take every doorbell rung for this node and
/// record the notifications, per sender (thesis 4.5.6: the IPI becomes a
/// notification on the receiving side).
pub fn take_doorbells(node: &Node) {
    let me = NodeId(node.index as u16);
    for signal in node.boot.plan.signals.iter().filter(|s| s.to == me) {
        let Some(word) = sharedmem::doorbell_word(node.index, signal) else {
            continue;
        };
        let bits = Doorbell::new(word).take();
        if let Some(pending) = node.pending.get(usize::from(signal.from.0)) {
            pending.fetch_or(bits, Ordering::AcqRel);
        }
        deliver_to_vms(node, signal.from, bits);
    }
}

/// Raises `notification` in node `to`, if this node holds the capability
/// (decode, then perform: every check comes before the doorbell write).
/// Sends the IPI only when the doorbell was empty (coalescing); returns
/// whether it did.
pub fn signal(node: &Node, to: usize, notification: u32) -> Result<bool, &'static str> {
    let plan = &node.boot.plan;
    let from = NodeId(node.index as u16);
    let cap = plan
        .signals
        .iter()
        .find(|s| s.from == from && usize::from(s.to.0) == to)
        .ok_or("no IPI capability for that node")?;
    let bit = atoll_cluster::doorbell::check(cap.notifications, notification)
        .map_err(|_| "notification not allowed by the capability")?;
    let word = sharedmem::doorbell_word(node.index, cap).ok_or("doorbell not mapped")?;
    let target = plan
        .nodes
        .get(to)
        .and_then(|n| n.cpus.first())
        .ok_or("target node has no CPU")?;
    // An interrupt sent to a CPU that has not been started yet (or was
    // stopped) is not just lost: some platforms then fail to start it.
    if status::page(to).is_none_or(|p| p.state() != NodeState::Up) {
        return Err("the target node is not up");
    }
    if !Doorbell::new(word).raise(bit) {
        return Ok(false);
    }
    apic::send_fixed(target.apic_id, idt::SIGNAL_VECTOR).map_err(|_| "IPI not delivered")?;
    Ok(true)
}

/// Routes notifications `bits` from node `from` to this node's VMs that
/// hold them (`Plan::receiver`); notifications no VM receives stay with
/// the node (the self-tests read them).
fn deliver_to_vms(node: &Node, from: NodeId, bits: u64) {
    let Some(vms) = node.vms.get() else { return };
    let me = NodeId(node.index as u16);
    let mut rest = bits;
    while rest != 0 {
        let n = rest.trailing_zeros() as u8;
        rest &= rest - 1;
        let Some(target) = node.boot.plan.receiver(from, me, n) else {
            continue;
        };
        if let Some(vm) = vms.iter().find(|vm| vm.spec.global == target) {
            vm.notify(node, 1 << n);
        }
    }
}
