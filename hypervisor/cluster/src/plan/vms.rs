//! Fitting each `[[vm]]` into its node: its memory is a 2 MiB aligned,
//! contiguous range of the node's memory outside the node's kernel memory
//! (first fit, in config order), its vCPUs run on the node's CPUs (the
//! `pin` list, or round robin over the node's CPUs in order, counting on
//! from the node's previous unpinned vCPU), and its devices are named ones.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{Access, ChannelPlan, NodePlan, Problems};
use crate::config::{
    ClusterConfig, ErrorKind, Located, OnCrash, Platform, Signal, VmConfig, listed, shown,
};
use crate::plan::NodeId;
use crate::topology::{CpuIndex, PhysRange};

/// VM memory alignment: EPT maps it with 2 MiB pages.
pub const VM_ALIGN: u64 = 2 << 20;
const MIB: u64 = 1 << 20;

/// The devices a VM may have (`devices = [...]`); the first three when the
/// key is left out. The others only when listed: `testdev`, an MMIO
/// scratch page for tests and benchmarks; `virtio-blk`, a disk of
/// `disk_mib` in node memory; `virtio-console`, a second console.
pub const DEVICES: [&str; 6] = [
    "uart",
    "debug-exit",
    "fw-cfg",
    "testdev",
    "virtio-blk",
    "virtio-console",
];
const DEFAULT_DEVICES: usize = 3;

/// A VM's share of its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPlan {
    /// The VM's `name` from the config.
    pub name: String,
    /// The node it runs in.
    pub node: NodeId,
    /// 1 to [`crate::config::MAX_VCPUS`].
    pub vcpus: u16,
    /// Its RAM: guest-physical 0 maps to `memory.start`.
    pub memory: PhysRange,
    /// The CPU each vCPU runs on (one entry per vCPU).
    pub vcpu_cpus: Vec<CpuIndex>,
    /// Whether `vcpu_cpus` came from `pin` (else round robin).
    pub pinned: bool,
    /// Path of the guest kernel image (a boot module's name).
    pub kernel: String,
    /// The initial ramdisk (Linux boot protocol), if any.
    pub initrd: Option<String>,
    /// Paths of further boot modules, in order.
    pub modules: Vec<String>,
    /// The guest's command line (empty when the config sets none).
    pub cmdline: String,
    /// Names from [`DEVICES`].
    pub devices: Vec<String>,
    /// The node memory holding its virtio-blk disk, if it has one.
    pub disk: Option<PhysRange>,
    /// What happens when it crashes.
    pub on_crash: OnCrash,
    /// Its platform (a bzImage kernel gets the PC platform whatever this
    /// says: the hypervisor decides that when it loads the image).
    pub platform: Platform,
    /// IPI capabilities, by handle (index).
    pub signals: Vec<VmSignalPlan>,
    /// Channels it may map, by handle: index into `Plan::channels`, and
    /// its node's access.
    pub channels: Vec<(usize, Access)>,
}

/// The right to raise `notifications` in VM `target` (an index into
/// `Plan::vms`) on node `node`, through the node-to-node IPI capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSignalPlan {
    /// The receiving VM: an index into `Plan::vms`.
    pub target: usize,
    /// The receiving VM's node.
    pub node: NodeId,
    /// Bit n set: notification n may be raised.
    pub notifications: u64,
}

/// Plans every VM of `config` into `nodes`. VMs with errors are left out
/// (the errors go to `problems`).
pub(super) fn place(
    config: &ClusterConfig,
    nodes: &[NodePlan],
    channels: &[ChannelPlan],
    problems: &mut Problems<'_>,
) -> Vec<VmPlan> {
    let mut free: Vec<Vec<PhysRange>> = nodes.iter().map(guest_memory).collect();
    let mut next_cpu = alloc::vec![0usize; nodes.len()];
    let mut out = Vec::new();
    // Looked up once per signal entry: built once, not per lookup.
    let granted = config.signals();
    let vm_index: BTreeMap<&str, usize> = config
        .vms
        .iter()
        .enumerate()
        .rev()
        .map(|(i, v)| (v.name.value.as_str(), i))
        .collect();
    for vm in &config.vms {
        let Some(node) = nodes.get(usize::from(vm.node.value.0)) else {
            continue;
        };
        let index = usize::from(node.id.0);
        let cpus = vcpu_cpus(vm, node, next_cpu.get_mut(index), problems);
        let devices = devices(vm, problems);
        let signals = signals(config, &vm_index, &granted, vm, problems);
        let vm_channels = vm_channels(vm, node, channels, problems);
        let memory = free
            .get_mut(index)
            .and_then(|free| memory(vm, node, free, problems));
        let disk = devices
            .as_ref()
            .and_then(|d| disk(vm, d, node, free.get_mut(index)?, problems));
        if let (
            Some((vcpu_cpus, pinned)),
            Some(devices),
            Some(memory),
            Some(disk),
            Some(signals),
            Some(channels),
        ) = (cpus, devices, memory, disk, signals, vm_channels)
        {
            out.push(VmPlan {
                name: vm.name.value.clone(),
                node: node.id,
                vcpus: vm.vcpus.value,
                memory,
                vcpu_cpus,
                pinned,
                kernel: vm.kernel.value.clone(),
                initrd: vm.initrd.as_ref().map(|i| i.value.clone()),
                modules: vm.modules.iter().map(|m| m.value.clone()).collect(),
                cmdline: vm
                    .cmdline
                    .as_ref()
                    .map_or_else(String::new, |c| c.value.clone()),
                devices,
                disk,
                on_crash: vm.on_crash(),
                platform: vm.platform(),
                signals,
                channels,
            });
        }
    }
    check_routes(config, &vm_index, problems);
    out
}

/// Resolves a VM's `signal` entries: the target VM exists, lives on
/// another node, and an `[[ipi]]` from this VM's node to that node grants
/// every notification.
fn signals(
    config: &ClusterConfig,
    vm_index: &BTreeMap<&str, usize>,
    granted: &[Signal],
    vm: &VmConfig,
    problems: &mut Problems<'_>,
) -> Option<Vec<VmSignalPlan>> {
    let mut out = Vec::new();
    let mut ok = true;
    let from = vm.node.value;
    for s in &vm.signals {
        let Some(&target) = vm_index.get(s.vm.value.as_str()) else {
            ok = false;
            problems.error(
                &s.vm.at,
                ErrorKind::BadValue,
                format!(
                    "VM '{}' signals VM '{}', which no [[vm]] declares",
                    vm.name.value,
                    shown(&s.vm.value)
                ),
                format!(
                    "name one of the VMs: {}",
                    listed(config.vms.iter().map(|v| v.name.value.as_str()))
                ),
            );
            continue;
        };
        let to = config.vms.get(target).map_or(from, |t| t.node.value);
        if to == from {
            ok = false;
            problems.error(
                &s.vm.at,
                ErrorKind::BadValue,
                format!(
                    "VM '{}' signals VM '{}' on its own node '{}'; signal capabilities reach VMs on other nodes",
                    vm.name.value,
                    s.vm.value,
                    config.node_name(from)
                ),
                "move one of the VMs to another node, or drop this signal entry".into(),
            );
            continue;
        }
        let granted: u64 = granted
            .iter()
            .filter(|g| g.from == from && g.to == to)
            .fold(0, |m, g| m | g.notifications);
        let missing = s.mask() & !granted;
        if missing != 0 {
            ok = false;
            let list: Vec<String> = (0..64)
                .filter(|b| missing & (1 << b) != 0)
                .map(|b| format!("{b}"))
                .collect();
            problems.error(
                &s.at,
                ErrorKind::BadValue,
                format!(
                    "VM '{}' may raise notifications {} in VM '{}', but no [[ipi]] from node '{}' to node '{}' grants them",
                    vm.name.value,
                    list.join(", "),
                    s.vm.value,
                    config.node_name(from),
                    config.node_name(to)
                ),
                format!(
                    "add an [[ipi]] with from = \"{}\", to = \"{}\", notifications = [{}]",
                    config.node_name(from),
                    config.node_name(to),
                    list.join(", ")
                ),
            );
            continue;
        }
        out.push(VmSignalPlan {
            target,
            node: to,
            notifications: s.mask(),
        });
    }
    ok.then_some(out)
}

/// A notification from one node to another must reach one VM: two VMs of
/// a node may not both receive notification n from the same node.
fn check_routes(
    config: &ClusterConfig,
    vm_index: &BTreeMap<&str, usize>,
    problems: &mut Problems<'_>,
) {
    let mut routes: Vec<(NodeId, NodeId, u64, usize)> = Vec::new();
    for vm in &config.vms {
        for s in &vm.signals {
            let Some(&target) = vm_index.get(s.vm.value.as_str()) else {
                continue;
            };
            let to = config
                .vms
                .get(target)
                .map_or(vm.node.value, |t| t.node.value);
            let clash = routes.iter().find(|&&(f, t, mask, other)| {
                f == vm.node.value && t == to && mask & s.mask() != 0 && other != target
            });
            if let Some(&(_, _, mask, other)) = clash {
                let both = mask & s.mask();
                let other_name = config.vms.get(other).map_or("?", |v| v.name.value.as_str());
                problems.error(
                    &s.at,
                    ErrorKind::Conflict,
                    format!(
                        "notification {} from node '{}' would reach both VM '{other_name}' and VM '{}'",
                        both.trailing_zeros(),
                        config.node_name(vm.node.value),
                        s.vm.value
                    ),
                    "give each receiving VM its own notification numbers".into(),
                );
            }
            routes.push((vm.node.value, to, s.mask(), target));
        }
    }
}

/// Resolves a VM's `channels`: each exists and its node holds it.
fn vm_channels(
    vm: &VmConfig,
    node: &NodePlan,
    channels: &[ChannelPlan],
    problems: &mut Problems<'_>,
) -> Option<Vec<(usize, Access)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for c in &vm.channels {
        let held = channels
            .iter()
            .position(|p| p.name == c.value)
            .and_then(|i| node.channels.iter().find(|(ci, _)| *ci == i).copied());
        match held {
            Some(grant) => out.push(grant),
            None => {
                ok = false;
                let names: Vec<&str> = node
                    .channels
                    .iter()
                    .filter_map(|(i, _)| channels.get(*i).map(|p| p.name.as_str()))
                    .collect();
                problems.error(
                    &c.at,
                    ErrorKind::BadValue,
                    format!(
                        "VM '{}' maps channel '{}', which node '{}' does not hold",
                        vm.name.value,
                        shown(&c.value),
                        node.name
                    ),
                    if names.is_empty() {
                        format!(
                            "declare a [[channel]] whose access includes node '{}'",
                            node.name
                        )
                    } else {
                        format!(
                            "choose a channel of node '{}': {}",
                            node.name,
                            listed(names.into_iter())
                        )
                    },
                );
            }
        }
    }
    ok.then_some(out)
}

/// The node's memory minus its kernel memory, 2 MiB aligned inward.
fn guest_memory(node: &NodePlan) -> Vec<PhysRange> {
    let kernel = node.kernel_memory;
    let mut out = Vec::new();
    for r in &node.memory {
        let pieces = [
            (r.start.0, r.end().min(kernel.start.0)),
            (r.start.0.max(kernel.end()), r.end()),
        ];
        for (start, end) in pieces {
            let start = start.next_multiple_of(VM_ALIGN);
            let end = end & !(VM_ALIGN - 1);
            if start < end {
                out.push(PhysRange::new(start, end - start));
            }
        }
    }
    out
}

/// First fit of `mem_mib` in the node's free guest memory.
fn memory(
    vm: &VmConfig,
    node: &NodePlan,
    free: &mut [PhysRange],
    problems: &mut Problems<'_>,
) -> Option<PhysRange> {
    first_fit(vm, &vm.mem_mib, "mem_mib", node, free, problems)
}

/// The disk's node memory: `Some(None)` for a VM without `virtio-blk`;
/// `disk_mib` and `virtio-blk` come together.
fn disk(
    vm: &VmConfig,
    devices: &[String],
    node: &NodePlan,
    free: &mut [PhysRange],
    problems: &mut Problems<'_>,
) -> Option<Option<PhysRange>> {
    let has_blk = devices.iter().any(|d| d == "virtio-blk");
    match (&vm.disk_mib, has_blk) {
        (None, false) => Some(None),
        (Some(mib), true) => first_fit(vm, mib, "disk_mib", node, free, problems).map(Some),
        (None, true) => {
            let at = vm.devices.iter().find(|d| d.value == "virtio-blk");
            problems.error(
                at.map_or(&vm.at, |d| &d.at),
                ErrorKind::BadValue,
                format!(
                    "VM '{}' has a virtio-blk device but no disk_mib for its disk",
                    vm.name.value
                ),
                "add `disk_mib = 16` (or another even size) to the VM".into(),
            );
            None
        }
        (Some(mib), false) => {
            problems.error(
                &mib.at,
                ErrorKind::BadValue,
                format!(
                    "VM '{}' sets disk_mib but has no virtio-blk device to hold the disk",
                    vm.name.value
                ),
                "add \"virtio-blk\" to devices, or remove disk_mib".into(),
            );
            None
        }
    }
}

/// First fit of `mib` (the value of `key`) in the node's free memory, in
/// whole 2 MiB blocks.
fn first_fit(
    vm: &VmConfig,
    size: &Located<u64>,
    key: &str,
    node: &NodePlan,
    free: &mut [PhysRange],
    problems: &mut Problems<'_>,
) -> Option<PhysRange> {
    let mib = size.value;
    if !mib.is_multiple_of(2) {
        problems.error(
            &size.at,
            ErrorKind::BadValue,
            format!(
                "VM '{}' asks for {mib} MiB, but VM memory comes in 2 MiB blocks",
                vm.name.value
            ),
            format!("set {key} to {} or {}", mib - 1, mib + 1),
        );
        return None;
    }
    let bytes = mib.checked_mul(MIB)?;
    let Some(slot) = free.iter_mut().find(|r| r.len >= bytes) else {
        let left: u64 = free.iter().map(|r| r.len).sum::<u64>() / MIB;
        let largest = free.iter().map(|r| r.len).max().unwrap_or(0) / MIB;
        problems.error(
            &size.at,
            ErrorKind::OutOfMemory,
            format!(
                "VM '{}' needs {mib} MiB, but node '{}' has {left} MiB of guest memory left (at most {largest} MiB in one piece)",
                vm.name.value, node.name
            ),
            format!(
                "raise mem_mib of node '{}' or shrink {key} of the VM to {largest} MiB or less",
                node.name
            ),
        );
        return None;
    };
    let range = PhysRange::new(slot.start.0, bytes);
    *slot = PhysRange::new(slot.start.0 + bytes, slot.len - bytes);
    Some(range)
}

/// The CPU of each vCPU, and whether they were pinned.
fn vcpu_cpus(
    vm: &VmConfig,
    node: &NodePlan,
    next: Option<&mut usize>,
    problems: &mut Problems<'_>,
) -> Option<(Vec<CpuIndex>, bool)> {
    let node_cpus: Vec<CpuIndex> = node.cpus.iter().map(|c| c.index).collect();
    if vm.pin.is_empty() {
        let next = next?;
        let n = node_cpus.len().max(1);
        let cpus = (0..vm.vcpus.value)
            .filter_map(|_| {
                let cpu = node_cpus.get(*next % n).copied();
                *next += 1;
                cpu
            })
            .collect();
        return Some((cpus, false));
    }
    let mut ok = true;
    if vm.pin.len() != usize::from(vm.vcpus.value) {
        ok = false;
        problems.error(
            vm.pin.first().map_or(&vm.at, |p| &p.at),
            ErrorKind::BadValue,
            format!(
                "VM '{}' has {} vCPU(s), but pin lists {} CPU(s)",
                vm.name.value,
                vm.vcpus.value,
                vm.pin.len()
            ),
            "list one CPU per vCPU in pin, or leave pin out to let the node schedule them".into(),
        );
    }
    for p in &vm.pin {
        if !node_cpus.contains(&p.value) {
            ok = false;
            let mut list: Vec<u32> = node_cpus.iter().map(|c| c.0).collect();
            list.sort_unstable();
            let list = super::fmt::index_set(&list);
            problems.error(
                &p.at,
                ErrorKind::BadValue,
                format!(
                    "VM '{}' pins a vCPU to CPU {}, which is not a CPU of node '{}'",
                    vm.name.value, p.value.0, node.name
                ),
                format!("pin to CPUs of node '{}': {list}", node.name),
            );
        }
    }
    ok.then(|| (vm.pin.iter().map(|p| p.value).collect(), true))
}

/// The device names, checked; all devices when none are listed.
fn devices(vm: &VmConfig, problems: &mut Problems<'_>) -> Option<Vec<String>> {
    if vm.devices.is_empty() {
        return Some(
            DEVICES
                .iter()
                .take(DEFAULT_DEVICES)
                .map(|d| String::from(*d))
                .collect(),
        );
    }
    let mut ok = true;
    for d in &vm.devices {
        if !DEVICES.contains(&d.value.as_str()) {
            ok = false;
            problems.error(
                &d.at,
                ErrorKind::BadValue,
                format!(
                    "VM '{}' asks for device '{}', which Atoll does not have",
                    vm.name.value,
                    shown(&d.value)
                ),
                format!("choose from {}", DEVICES.join(", ")),
            );
        }
    }
    ok.then(|| vm.devices.iter().map(|d| d.value.clone()).collect())
}
