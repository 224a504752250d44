//! `[[vm]]` and its `signal` entries: the shape of each VM, and how many
//! VMs a node runs.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use toml::Spanned;
use toml::de::DeValue;

use super::names::{NodeNames, owner, read_name};
use super::values::{
    at_least_one, at_most, read_cpus, read_keyword, read_notifications, within_mem_limit,
};
use crate::config::error::{ErrorKind, Located};
use crate::config::read::{Field, Reader};
use crate::config::schema::{
    Key, SIGNAL, SIGNAL_NOTIFICATIONS, SIGNAL_VM, VM, VM_CHANNELS, VM_CMDLINE, VM_DEVICES, VM_DISK,
    VM_INITRD, VM_KERNEL, VM_MEM, VM_MODULES, VM_NAME, VM_NODE, VM_ON_CRASH, VM_PIN, VM_PLATFORM,
    VM_SIGNAL, VM_VCPUS,
};
use crate::config::{
    MAX_CMDLINE_LEN, MAX_MEM_MIB, MAX_MODULES, MAX_NAME_LEN, MAX_PATH_LEN, MAX_VCPUS,
    MAX_VM_CHANNELS, MAX_VM_SIGNALS, MAX_VMS_PER_NODE, OnCrash, Platform, VmConfig, VmSignalConfig,
};
use crate::plan::{DEVICES, NodeId};

pub(super) fn read_vm(
    r: &mut Reader<'_>,
    nodes: &NodeNames,
    index: usize,
    value: &Spanned<DeValue<'_>>,
) -> Option<VmConfig> {
    let path = format!("vm[{index}]");
    let t = r.table(path.clone(), value, &VM)?;
    let errors_before = r.errors.len();
    let name = read_name(r, &t, &VM_NAME, "VM");
    // A valid name names the VM if it is refused.
    if let Some(n) = &name
        && r.errors.len() == errors_before
    {
        r.errors.vm_names.insert(index, n.value.clone());
    }
    let who = owner("VM", &path, name.as_ref());
    let node = r
        .required(&t, &VM_NODE, &who)
        .and_then(|f| r.string(&f))
        .and_then(|n| nodes.resolve(r, &n, &format!("{who} runs in")));
    let vcpus = r
        .required(&t, &VM_VCPUS, &who)
        .and_then(|f| r.integer(&f))
        .and_then(|n| {
            at_least_one(
                r,
                n,
                &format!("{who} has 0 vCPUs"),
                "a VM needs at least one vCPU: set vcpus = 1 or more",
            )
        })
        .and_then(|n| {
            at_most(
                r,
                n,
                u64::from(MAX_VCPUS),
                "vCPU count",
                "a VM's local APICs have 8-bit xAPIC IDs, 255 being broadcast",
            )
        })
        .and_then(|n| Some(Located::new(u16::try_from(n.value).ok()?, n.at)));
    let mem_mib = r
        .required(&t, &VM_MEM, &who)
        .and_then(|f| r.integer(&f))
        .and_then(|n| {
            at_least_one(
                r,
                n,
                &format!("{who} has 0 MiB of memory"),
                "give the VM memory, like `mem_mib = 512`",
            )
        })
        .filter(|n| within_mem_limit(r, n, "mem_mib", &who));
    let disk_mib = match r.optional(&t, &VM_DISK) {
        None => Ok(None),
        Some(f) => r
            .integer(&f)
            .and_then(|n| {
                at_least_one(
                    r,
                    n,
                    &format!("{who} has a disk of 0 MiB"),
                    "give the disk a size, like `disk_mib = 16`, or leave disk_mib out",
                )
            })
            .and_then(|n| at_most(r, n, MAX_MEM_MIB, "disk_mib", ""))
            .map(Some)
            .ok_or(()),
    };
    let kernel = r
        .required(&t, &VM_KERNEL, &who)
        .and_then(|f| r.short_string(&f, MAX_PATH_LEN, "the kernel path"))
        .and_then(|k| {
            if k.value.is_empty() {
                r.report(
                    &k.at,
                    ErrorKind::BadValue,
                    format!("the kernel path of {who} is empty"),
                    "name the guest kernel image, like `kernel = \"bzImage\"`".into(),
                );
                None
            } else {
                Some(k)
            }
        });
    let optional_string = |r: &mut Reader<'_>,
                           key: &'static Key,
                           max: usize,
                           what: &str|
     -> Result<Option<Located<String>>, ()> {
        match r.optional(&t, key) {
            None => Ok(None),
            Some(f) => r.short_string(&f, max, what).map(Some).ok_or(()),
        }
    };
    let initrd = optional_string(r, &VM_INITRD, MAX_PATH_LEN, "the initrd path");
    let cmdline = optional_string(r, &VM_CMDLINE, MAX_CMDLINE_LEN, "the cmdline");
    let optional_strings = |r: &mut Reader<'_>,
                            key: &'static Key,
                            max: usize,
                            why: &str,
                            max_len: usize,
                            what: &str|
     -> Result<Vec<Located<String>>, ()> {
        match r.optional(&t, key) {
            None => Ok(Vec::new()),
            Some(f) => r.strings(&f, max, why, max_len, what).ok_or(()),
        }
    };
    let modules = optional_strings(
        r,
        &VM_MODULES,
        MAX_MODULES,
        "a VM boots with at most 16 modules",
        MAX_PATH_LEN,
        "the module path",
    );
    let devices = optional_strings(
        r,
        &VM_DEVICES,
        DEVICES.len(),
        "each device once",
        MAX_NAME_LEN,
        "the device name",
    );
    let channels = optional_strings(
        r,
        &VM_CHANNELS,
        MAX_VM_CHANNELS,
        "a VM holds at most 64 channel handles",
        MAX_NAME_LEN,
        "the channel name",
    );
    let signals = match r.optional(&t, &VM_SIGNAL) {
        None => Ok(Vec::new()),
        Some(f) => r
            .array(&f, MAX_VM_SIGNALS, "a VM holds at most 64 signal handles")
            .and_then(|items| {
                let read: Vec<Option<VmSignalConfig>> =
                    items.iter().map(|item| read_vm_signal(r, item)).collect();
                read.into_iter().collect::<Option<Vec<_>>>()
            })
            .ok_or(()),
    };
    let pin = match r.optional(&t, &VM_PIN) {
        None => Ok(Vec::new()),
        Some(f) => r
            .array(&f, usize::from(MAX_VCPUS), "one CPU per vCPU")
            .and_then(|items| read_cpus(r, &items))
            .ok_or(()),
    };
    let on_crash = read_keyword(
        r,
        &t,
        &VM_ON_CRASH,
        &[("stop", OnCrash::Stop), ("restart", OnCrash::Restart)],
        &format!("of {who} is neither \"stop\" nor \"restart\""),
        "write on_crash = \"stop\" (the default) or on_crash = \"restart\"",
    );
    let platform = read_keyword(
        r,
        &t,
        &VM_PLATFORM,
        &[("minimal", Platform::Minimal), ("pc", Platform::Pc)],
        &format!("of {who} is neither \"minimal\" nor \"pc\""),
        "write platform = \"pc\" (IOAPIC and PC ports) or leave it out (\"minimal\")",
    );
    Some(VmConfig {
        name: name?,
        node: node?,
        vcpus: vcpus?,
        mem_mib: mem_mib?,
        kernel: kernel?,
        initrd: initrd.ok()?,
        cmdline: cmdline.ok()?,
        modules: modules.ok()?,
        devices: devices.ok()?,
        disk_mib: disk_mib.ok()?,
        pin: pin.ok()?,
        on_crash: on_crash.ok()?,
        platform: platform.ok()?,
        signals: signals.ok()?,
        channels: channels.ok()?,
        at: t.at.clone(),
    })
}

/// One `signal` entry of a `[[vm]]`: `{ vm = "...", notifications = [...] }`.
/// The VM name is resolved by the planner (VMs may be declared later).
pub(super) fn read_vm_signal(r: &mut Reader<'_>, item: &Field<'_, '_>) -> Option<VmSignalConfig> {
    let t = r.field_table(item, &SIGNAL)?;
    let path = t.path.clone();
    let vm = r
        .required(&t, &SIGNAL_VM, &path)
        .and_then(|f| r.short_string(&f, MAX_NAME_LEN, "the VM name"));
    let notifications = r
        .required(&t, &SIGNAL_NOTIFICATIONS, &path)
        .and_then(|f| read_notifications(r, &f, &path));
    Some(VmSignalConfig {
        vm: vm?,
        notifications: notifications?,
        at: t.at.clone(),
    })
}

/// A node runs at most [`MAX_VMS_PER_NODE`] VMs: the VMs past that are
/// the errors (each at its `node` key, so each is refused alone).
pub(super) fn check_vms_per_node(r: &mut Reader<'_>, nodes: &NodeNames, vms: &[Option<VmConfig>]) {
    let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for vm in vms.iter().flatten() {
        let count = per_node.entry(vm.node.value).or_insert(0);
        *count += 1;
        if *count > MAX_VMS_PER_NODE {
            problems.push((vm.node.at.clone(), nodes.name(vm.node.value)));
        }
    }
    for (at, node) in problems {
        r.report(
            &at,
            ErrorKind::BadValue,
            format!("node '{node}' has more than {MAX_VMS_PER_NODE} VMs"),
            format!("run at most {MAX_VMS_PER_NODE} VMs in a node: move this VM to another node"),
        );
    }
}
