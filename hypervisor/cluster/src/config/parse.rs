//! From TOML text to [`ClusterConfig`]: shape checks per table, then the
//! checks across tables that need no hardware (unique names, CPUs claimed
//! twice, references to nodes, notifications granted twice).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ErrorKind, ErrorList, Located, Location, shown};
use super::read::{Field, Key, Reader, Section, Table, closest, sorted_entries, suggest};
use super::{
    ChannelConfig, ChannelGrant, ClusterConfig, CpuSelection, DEFAULT_KERNEL_MIB, IpiConfig,
    MAX_CHANNELS, MAX_CMDLINE_LEN, MAX_CPUS, MAX_IPIS, MAX_MEM_MIB, MAX_MODULES, MAX_NAME_LEN,
    MAX_NODES, MAX_PATH_LEN, MAX_VCPUS, MAX_VM_CHANNELS, MAX_VM_SIGNALS, MAX_VMS, MAX_VMS_PER_NODE,
    MIN_KERNEL_MIB, NOTIFICATIONS, NodeConfig, OnCrash, Platform, VmConfig, VmSignalConfig,
};
use crate::plan::{Access, DEVICES, NodeId};
use crate::topology::{CpuIndex, DomainId};

const NAME_MEANING: &str = "its name: lowercase letters, digits, '_' and '-'";

const NODE_NAME: Key = Key {
    name: "name",
    example: "name = \"db\"",
    meaning: NAME_MEANING,
};
const NODE_CPUS: Key = Key {
    name: "cpus",
    example: "cpus = [0, 1]",
    meaning: "these CPUs, numbered in MADT order",
};
const NODE_NUMA: Key = Key {
    name: "numa",
    example: "numa = 0",
    meaning: "all CPUs of this NUMA domain",
};
const NODE_COUNT: Key = Key {
    name: "count",
    example: "count = 2",
    meaning: "this many CPUs, chosen by the planner",
};
const NODE_MEM: Key = Key {
    name: "mem_mib",
    example: "mem_mib = 64",
    meaning: "the node's memory in MiB, kernel memory included",
};
const NODE_KERNEL: Key = Key {
    name: "kernel_mib",
    example: "kernel_mib = 8",
    meaning: "the node kernel's memory in MiB, a multiple of 2",
};
const NODE: Section = Section {
    header: "[[node]]",
    keys: &[
        NODE_NAME,
        NODE_CPUS,
        NODE_NUMA,
        NODE_COUNT,
        NODE_MEM,
        NODE_KERNEL,
    ],
};

const CHANNEL_NAME: Key = Key {
    name: "name",
    example: "name = \"db-log\"",
    meaning: NAME_MEANING,
};
const CHANNEL_SIZE: Key = Key {
    name: "size_kib",
    example: "size_kib = 64",
    meaning: "its size in KiB, a multiple of 4",
};
const CHANNEL_ACCESS: Key = Key {
    name: "access",
    example: "access = { db = \"rw\", log = \"r\" }",
    meaning: "which nodes map it, read-only (\"r\") or read-write (\"rw\")",
};
const CHANNEL: Section = Section {
    header: "[[channel]]",
    keys: &[CHANNEL_NAME, CHANNEL_SIZE, CHANNEL_ACCESS],
};

const IPI_FROM: Key = Key {
    name: "from",
    example: "from = \"db\"",
    meaning: "the node that sends",
};
const IPI_TO: Key = Key {
    name: "to",
    example: "to = \"log\"",
    meaning: "the node that receives",
};
const IPI_NOTIFICATIONS: Key = Key {
    name: "notifications",
    example: "notifications = [0, 1]",
    meaning: "the notifications (0 to 63) 'from' may raise in 'to'",
};
const IPI: Section = Section {
    header: "[[ipi]]",
    keys: &[IPI_FROM, IPI_TO, IPI_NOTIFICATIONS],
};

const VM_NAME: Key = Key {
    name: "name",
    example: "name = \"web\"",
    meaning: NAME_MEANING,
};
const VM_NODE: Key = Key {
    name: "node",
    example: "node = \"db\"",
    meaning: "the node the VM runs in",
};
const VM_VCPUS: Key = Key {
    name: "vcpus",
    example: "vcpus = 2",
    meaning: "its number of virtual CPUs",
};
const VM_MEM: Key = Key {
    name: "mem_mib",
    example: "mem_mib = 512",
    meaning: "its memory in MiB",
};
const VM_DISK: Key = Key {
    name: "disk_mib",
    example: "disk_mib = 16",
    meaning: "the size in MiB of its virtio-blk disk, kept in node memory",
};
const VM_KERNEL: Key = Key {
    name: "kernel",
    example: "kernel = \"bzImage\"",
    meaning: "the path of the guest kernel",
};
const VM_INITRD: Key = Key {
    name: "initrd",
    example: "initrd = \"initrd.img\"",
    meaning: "the path of the initial ramdisk",
};
const VM_CMDLINE: Key = Key {
    name: "cmdline",
    example: "cmdline = \"console=ttyS0\"",
    meaning: "the guest kernel command line",
};
const VM_MODULES: Key = Key {
    name: "modules",
    example: "modules = [\"extra.img\"]",
    meaning: "more boot modules",
};
const VM_DEVICES: Key = Key {
    name: "devices",
    example: "devices = [\"uart\", \"virtio-blk\"]",
    meaning: "the devices the VM gets",
};
const VM_PIN: Key = Key {
    name: "pin",
    example: "pin = [0, 1]",
    meaning: "the CPU each vCPU runs on",
};
const VM_ON_CRASH: Key = Key {
    name: "on_crash",
    example: "on_crash = \"restart\"",
    meaning: "\"stop\" or \"restart\"",
};
const VM_PLATFORM: Key = Key {
    name: "platform",
    example: "platform = \"pc\"",
    meaning: "\"minimal\" or \"pc\"",
};
const VM_SIGNAL: Key = Key {
    name: "signal",
    example: "signal = [{ vm = \"log\", notifications = [0] }]",
    meaning: "the IPI capabilities it holds: notifications it may raise in VMs of other nodes",
};
const VM_CHANNELS: Key = Key {
    name: "channels",
    example: "channels = [\"db-log\"]",
    meaning: "the channels it may map",
};
const SIGNAL_VM: Key = Key {
    name: "vm",
    example: "vm = \"log\"",
    meaning: "the VM that receives the notifications",
};
const SIGNAL_NOTIFICATIONS: Key = Key {
    name: "notifications",
    example: "notifications = [0, 1]",
    meaning: "the notifications (0 to 63) it may raise there",
};
const SIGNAL: Section = Section {
    header: "a `signal` entry { vm = ..., notifications = [...] }",
    keys: &[SIGNAL_VM, SIGNAL_NOTIFICATIONS],
};
const VM: Section = Section {
    header: "[[vm]]",
    keys: &[
        VM_NAME,
        VM_NODE,
        VM_VCPUS,
        VM_MEM,
        VM_KERNEL,
        VM_INITRD,
        VM_CMDLINE,
        VM_MODULES,
        VM_DEVICES,
        VM_DISK,
        VM_PIN,
        VM_ON_CRASH,
        VM_PLATFORM,
        VM_SIGNAL,
        VM_CHANNELS,
    ],
};

const TOP_LEVEL: [&str; 4] = ["node", "channel", "ipi", "vm"];

/// Most tables of a top-level section, and why.
fn section_limit(section: &str) -> (usize, &'static str) {
    match section {
        "node" => (MAX_NODES, "every node needs a CPU of its own; merge nodes"),
        "channel" => (MAX_CHANNELS, "merge channels"),
        "ipi" => (MAX_IPIS, "merge the [[ipi]] tables of each pair of nodes"),
        _ => (MAX_VMS, "merge VMs or split the cluster"),
    }
}

pub(super) fn parse(
    file: &str,
    text: &str,
    skip: &BTreeSet<usize>,
) -> Result<ClusterConfig, ErrorList> {
    let mut r = Reader::new(file, text);
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in &syntax {
            let at = r.locate(String::new(), e.span().unwrap_or(0..0));
            r.report(
                &at,
                ErrorKind::Syntax,
                format!("invalid TOML: {}", e.message()),
                "correct the TOML syntax here (see toml.io)".into(),
            );
        }
        return Err(r.errors);
    }
    let doc = doc.into_inner();
    let mut sections: BTreeMap<&str, Vec<&Spanned<DeValue<'_>>>> = BTreeMap::new();
    for (key, value) in sorted_entries(&doc) {
        let name: &str = key.get_ref();
        match TOP_LEVEL.iter().find(|t| **t == name) {
            Some(&section) => {
                if let Some(mut items) = array_of_tables(&mut r, section, value) {
                    let (max, why) = section_limit(section);
                    if items.len() > max {
                        let at = r.locate(section.into(), value.span());
                        r.report(
                            &at,
                            ErrorKind::BadValue,
                            format!(
                                "the config has {} [[{section}]] tables, more than the {max} Atoll accepts",
                                items.len()
                            ),
                            format!("keep at most {max} ({why})"),
                        );
                        items.truncate(max);
                    }
                    sections.insert(section, items);
                }
            }
            None => {
                let at = r.locate(name.to_string(), key.span());
                let is_table = match value.get_ref() {
                    DeValue::Table(_) => true,
                    DeValue::Array(items) => {
                        !items.is_empty() && items.iter().all(|i| i.get_ref().is_table())
                    }
                    _ => false,
                };
                let what = if is_table { "table" } else { "key" };
                let tables = "the top-level tables are [[node]], [[channel]], [[ipi]] and [[vm]]";
                r.report(
                    &at,
                    ErrorKind::UnknownKey,
                    format!("unknown top-level {what} '{}'", shown(name)),
                    match closest(name, &TOP_LEVEL) {
                        Some(close) => format!("did you mean [[{close}]]? {tables}"),
                        None => tables.into(),
                    },
                );
            }
        }
    }
    let section = |name: &str| sections.get(name).cloned().unwrap_or_default();

    let node_values = section("node");
    // `node` of the wrong type is already reported; absent or empty is not.
    let no_nodes = match sections.get("node") {
        Some(values) => values.is_empty(),
        None => !doc.iter().any(|(k, _)| k.get_ref() == "node"),
    };
    if no_nodes {
        let at = r.locate("node".into(), 0..0);
        r.report(
            &at,
            ErrorKind::Missing,
            "the config has no [[node]]".into(),
            "add at least one [[node]] with name, cpus (or numa or count) and mem_mib".into(),
        );
    }
    let nodes = read_nodes(&mut r, &node_values);
    let names = NodeNames::new(nodes.iter().map(|d| d.name.clone()).collect());
    let channels: Vec<Option<ChannelConfig>> = section("channel")
        .iter()
        .enumerate()
        .map(|(i, v)| read_channel(&mut r, &names, i, v))
        .collect();
    check_unique_names(
        &mut r,
        "channel",
        channels.iter().map(|c| c.as_ref().map(|c| &c.name)),
    );
    let ipis: Vec<Option<IpiConfig>> = section("ipi")
        .iter()
        .enumerate()
        .map(|(i, v)| read_ipi(&mut r, &names, i, v))
        .collect();
    check_ipi_duplicates(&mut r, &names, &ipis);
    // Skipped (refused) tables are not read at all: they leave no errors
    // and no names behind.
    let vms: Vec<Option<VmConfig>> = section("vm")
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .map(|(i, v)| read_vm(&mut r, &names, i, v))
        .collect();
    check_unique_names(
        &mut r,
        "VM",
        vms.iter().map(|v| v.as_ref().map(|v| &v.name)),
    );
    check_vms_per_node(&mut r, &names, &vms);

    if !r.errors.is_empty() {
        return Err(r.errors);
    }
    let config = (|| {
        Some(ClusterConfig {
            file: file.into(),
            nodes: nodes.into_iter().map(|d| d.node).collect::<Option<_>>()?,
            channels: channels.into_iter().collect::<Option<_>>()?,
            ipis: ipis.into_iter().collect::<Option<_>>()?,
            vms: vms.into_iter().collect::<Option<_>>()?,
        })
    })();
    match config {
        Some(c) if !c.nodes.is_empty() => Ok(c),
        // Every path that drops a table reports why; this is a guard, not
        // an expected outcome.
        _ => {
            let at = r.locate(String::new(), 0..0);
            r.report(
                &at,
                ErrorKind::Missing,
                "the config could not be read".into(),
                "report this as an Atoll bug, with the file".into(),
            );
            Err(r.errors)
        }
    }
}

/// A node runs at most [`MAX_VMS_PER_NODE`] VMs: the VMs past that are
/// the errors (each at its `node` key, so each is refused alone).
fn check_vms_per_node(r: &mut Reader<'_>, nodes: &NodeNames, vms: &[Option<VmConfig>]) {
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

/// The tables of a top-level `[[section]]` array.
fn array_of_tables<'t, 'i>(
    r: &mut Reader<'_>,
    section: &str,
    value: &'t Spanned<DeValue<'i>>,
) -> Option<Vec<&'t Spanned<DeValue<'i>>>> {
    match value.get_ref() {
        DeValue::Array(items) => Some(items.iter().collect()),
        other => {
            let at = r.locate(section.into(), value.span());
            r.report(
                &at,
                ErrorKind::WrongType,
                format!(
                    "{section} must be an array of tables, not {}",
                    super::read::article(other.type_str())
                ),
                format!("write each {section} as [[{section}]] (two brackets)"),
            );
            None
        }
    }
}

/// Reports a name that is empty, too long or has characters other than
/// `a-z 0-9 _ -`. The name is still used to resolve references, so one
/// bad character does not also make every reference an error.
fn check_name(r: &mut Reader<'_>, name: &Located<String>, what: &str) {
    let n = &name.value;
    let ok_chars = n
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    let problem = if n.is_empty() {
        Some(format!("the {what} name is empty"))
    } else if n.chars().count() > MAX_NAME_LEN {
        Some(format!(
            "the {what} name '{}' is longer than {MAX_NAME_LEN} characters",
            shown(n)
        ))
    } else if !ok_chars {
        Some(format!(
            "the {what} name '{}' has characters other than a-z, 0-9, '_' and '-'",
            shown(n)
        ))
    } else {
        None
    };
    if let Some(message) = problem {
        let mut example: String = n
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(MAX_NAME_LEN)
            .collect();
        if example.is_empty() {
            example = "db".into();
        }
        r.report(
            &name.at,
            ErrorKind::BadValue,
            message,
            format!(
                "use 1 to {MAX_NAME_LEN} lowercase letters, digits, '_' and '-', like \"{example}\""
            ),
        );
    }
}

/// A located integer narrowed to `u32`.
fn to_u32(r: &mut Reader<'_>, n: Located<u64>, what: &str) -> Option<Located<u32>> {
    at_most(r, n, u64::from(u32::MAX), what, "")
        .and_then(|n| Some(Located::new(u32::try_from(n.value).ok()?, n.at)))
}

/// A located integer that is at most `max`; else an error that names the
/// bound (and, in `why`, where it comes from).
fn at_most(
    r: &mut Reader<'_>,
    n: Located<u64>,
    max: u64,
    what: &str,
    why: &str,
) -> Option<Located<u64>> {
    if n.value <= max {
        return Some(n);
    }
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    };
    r.report(
        &n.at,
        ErrorKind::BadValue,
        format!("{what} {} is too large", n.value),
        format!("the largest {what} Atoll accepts is {max}{why}"),
    );
    None
}

/// `owner` in messages: `node 'db'` once the name is known, else the path.
fn owner(kind: &str, path: &str, name: Option<&Located<String>>) -> String {
    match name {
        Some(n) => format!("{kind} '{}'", shown(&n.value)),
        None => path.into(),
    }
}

fn read_name(
    r: &mut Reader<'_>,
    t: &Table<'_, '_>,
    key: &'static Key,
    kind: &str,
) -> Option<Located<String>> {
    let name = r
        .required(t, key, &t.path.clone())
        .and_then(|f| r.string(&f))?;
    check_name(r, &name, kind);
    Some(name)
}

/// What could be read of a node: its name and CPUs (for the checks across
/// nodes, which run even when another key of the node is wrong) and the
/// node itself when it is fully valid.
struct NodeDraft {
    name: Option<Located<String>>,
    cpus: Option<Located<CpuSelection>>,
    node: Option<NodeConfig>,
}

fn read_nodes(r: &mut Reader<'_>, values: &[&Spanned<DeValue<'_>>]) -> Vec<NodeDraft> {
    let drafts: Vec<NodeDraft> = values
        .iter()
        .enumerate()
        .map(|(i, v)| read_node(r, i, v))
        .collect();
    check_unique_names(r, "node", drafts.iter().map(|d| d.name.as_ref()));

    // CPUs and NUMA domains claimed by two nodes: the later claim is the
    // error, pointing back at the earlier one.
    let name_of = |i: usize| match drafts.get(i).and_then(|d| d.name.as_ref()) {
        Some(n) => format!("node '{}'", shown(&n.value)),
        None => format!("node[{i}]"),
    };
    let mut cpu_owner: BTreeMap<CpuIndex, usize> = BTreeMap::new();
    let mut domain_owner: BTreeMap<DomainId, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, draft) in drafts.iter().enumerate() {
        let Some(cpus) = &draft.cpus else { continue };
        match &cpus.value {
            CpuSelection::List(cpus) => {
                for cpu in cpus {
                    match cpu_owner.get(&cpu.value) {
                        Some(&first) if first != i => problems.push((
                            cpu.at.clone(),
                            format!(
                                "CPU {} is in {} and {}",
                                cpu.value.0,
                                name_of(first),
                                name_of(i)
                            ),
                            "a CPU belongs to one node".to_string(),
                        )),
                        _ => {
                            cpu_owner.insert(cpu.value, i);
                        }
                    }
                }
            }
            CpuSelection::Numa(d) => match domain_owner.get(d) {
                Some(&first) => problems.push((
                    cpus.at.clone(),
                    format!(
                        "NUMA domain {} is taken by {} and {}",
                        d.0,
                        name_of(first),
                        name_of(i)
                    ),
                    format!(
                        "a NUMA domain's CPUs belong to one node; give {} another domain, cpus or count",
                        name_of(i)
                    ),
                )),
                None => {
                    domain_owner.insert(*d, i);
                }
            },
            CpuSelection::Count(_) => {}
        }
    }
    for (at, message, fix) in problems {
        r.report(&at, ErrorKind::Conflict, message, fix);
    }
    drafts
}

fn read_node(r: &mut Reader<'_>, index: usize, value: &Spanned<DeValue<'_>>) -> NodeDraft {
    let path = format!("node[{index}]");
    let Some(t) = r.table(path.clone(), value, &NODE) else {
        return NodeDraft {
            name: None,
            cpus: None,
            node: None,
        };
    };
    let id = match u16::try_from(index) {
        Ok(id) if index < MAX_NODES => Some(NodeId(id)),
        _ => {
            r.report(
                &t.at,
                ErrorKind::BadValue,
                format!("the config has more than {MAX_NODES} nodes"),
                format!("merge nodes: Atoll runs at most {MAX_NODES}"),
            );
            None
        }
    };
    let name = read_name(r, &t, &NODE_NAME, "node");
    let who = owner("node", &path, name.as_ref());
    let cpus = read_selection(r, &t, &who);
    let mem_mib = r.required(&t, &NODE_MEM, &who).and_then(|f| r.integer(&f));
    let kernel_field = r.optional(&t, &NODE_KERNEL);
    let kernel_mib = kernel_field.as_ref().map(|f| r.integer(f));
    let mut ok = true;

    if let Some(mem) = &mem_mib {
        if mem.value == 0 {
            r.report(
                &mem.at,
                ErrorKind::BadValue,
                format!("{who} has 0 MiB of memory"),
                format!(
                    "give it memory for its kernel and guests, like `{}`",
                    NODE_MEM.example
                ),
            );
            ok = false;
        } else if mem.value > MAX_MEM_MIB {
            r.report(
                &mem.at,
                ErrorKind::BadValue,
                format!(
                    "mem_mib {} of {who} is above Atoll's limit of {MAX_MEM_MIB} MiB",
                    mem.value
                ),
                format!("set mem_mib to {MAX_MEM_MIB} or less"),
            );
            ok = false;
        }
    }
    if let Some(Some(k)) = &kernel_mib {
        if k.value > MAX_MEM_MIB {
            r.report(
                &k.at,
                ErrorKind::BadValue,
                format!(
                    "kernel_mib {} of {who} is above Atoll's limit of {MAX_MEM_MIB} MiB",
                    k.value
                ),
                format!("set kernel_mib to {MAX_MEM_MIB} or less"),
            );
            ok = false;
        } else if k.value < MIN_KERNEL_MIB {
            r.report(
                &k.at,
                ErrorKind::BadValue,
                format!("kernel_mib {} of {who} is below the minimum of {MIN_KERNEL_MIB}", k.value),
                "the node kernel needs at least one 2 MiB block for its heap, page tables and stacks: set kernel_mib = 2 or more".into(),
            );
            ok = false;
        } else if k.value % 2 != 0 {
            r.report(
                &k.at,
                ErrorKind::BadValue,
                format!("kernel_mib {} of {who} is not a multiple of 2", k.value),
                format!(
                    "kernel memory comes in 2 MiB blocks: use {} or {}",
                    k.value - 1,
                    k.value.saturating_add(1)
                ),
            );
            ok = false;
        }
    }
    if ok && let Some(mem) = &mem_mib {
        match &kernel_mib {
            Some(Some(k)) if k.value >= mem.value => r.report(
                &k.at,
                ErrorKind::BadValue,
                format!(
                    "kernel_mib {} leaves no guest memory in the {} MiB of {who}",
                    k.value, mem.value
                ),
                format!(
                    "set kernel_mib below mem_mib, or raise mem_mib above {}",
                    k.value
                ),
            ),
            None if DEFAULT_KERNEL_MIB >= mem.value => r.report(
                &mem.at,
                ErrorKind::BadValue,
                format!(
                    "mem_mib {} of {who} is all taken by the default {DEFAULT_KERNEL_MIB} MiB of kernel memory",
                    mem.value
                ),
                format!(
                    "raise mem_mib above {DEFAULT_KERNEL_MIB}, or set a smaller kernel_mib (at least {MIN_KERNEL_MIB})"
                ),
            ),
            _ => {}
        }
    }
    let node = (|| {
        if !ok {
            return None;
        }
        Some(NodeConfig {
            id: id?,
            name: name.clone()?,
            cpus: cpus.clone()?,
            mem_mib: mem_mib?,
            kernel_mib: match kernel_mib {
                None => None,
                Some(k) => Some(k?),
            },
            at: t.at.clone(),
        })
    })();
    NodeDraft { name, cpus, node }
}

/// Exactly one of `cpus`, `numa`, `count`.
fn read_selection(
    r: &mut Reader<'_>,
    t: &Table<'_, '_>,
    who: &str,
) -> Option<Located<CpuSelection>> {
    let mut present: Vec<(&'static Key, Field<'_, '_>)> = [&NODE_CPUS, &NODE_NUMA, &NODE_COUNT]
        .into_iter()
        .filter_map(|k| r.optional(t, k).map(|f| (k, f)))
        .collect();
    present.sort_by_key(|(_, f)| f.at.span.start);
    let mut present = present.into_iter();
    let Some((key, field)) = present.next() else {
        if ["cpus", "numa", "count"].iter().any(|k| t.misspelt(k)) {
            return None;
        }
        let mut at = t.at.clone();
        at.key = format!("{}.cpus", t.path);
        r.report(
            &at,
            ErrorKind::Missing,
            format!("{who} has no cpus, numa or count"),
            "add one: `cpus = [0, 1]` (these CPUs), `numa = 0` (all CPUs of NUMA domain 0) or `count = 2` (2 CPUs the planner picks)".into(),
        );
        return None;
    };
    if let Some((second, f2)) = present.next() {
        r.report(
            &f2.at,
            ErrorKind::Conflict,
            format!("{who} sets both {} and {}", key.name, second.name),
            "keep exactly one of cpus, numa and count".into(),
        );
        return None;
    }
    let selection = match key.name {
        "cpus" => CpuSelection::List(read_cpu_list(r, &field, who, "cpus")?),
        "numa" => {
            let d = r.integer(&field)?;
            CpuSelection::Numa(DomainId(to_u32(r, d, "NUMA domain")?.value))
        }
        _ => {
            let n = r.integer(&field)?;
            if n.value == 0 {
                r.report(
                    &n.at,
                    ErrorKind::BadValue,
                    format!("{who} asks for 0 CPUs"),
                    "a node needs at least one CPU: set count = 1 or more".into(),
                );
                return None;
            }
            let n = at_most(r, n, CPUS, "CPU count", CPUS_WHY)?;
            CpuSelection::Count(to_u32(r, n, "CPU count")?.value)
        }
    };
    Some(Located::new(selection, field.at))
}

/// A non-empty list of distinct CPU indices (a node's `cpus`).
fn read_cpu_list(
    r: &mut Reader<'_>,
    field: &Field<'_, '_>,
    who: &str,
    key: &str,
) -> Option<Vec<Located<CpuIndex>>> {
    let items = r.array(field, MAX_CPUS, CPUS_WHY)?;
    if items.is_empty() {
        r.report(
            &field.at,
            ErrorKind::BadValue,
            format!("{who} has an empty {key} list"),
            "list at least one CPU, like `cpus = [0, 1]`, or use count".into(),
        );
        return None;
    }
    let cpus = read_cpus(r, &items)?;
    let mut ok = true;
    let mut seen = BTreeSet::new();
    for cpu in &cpus {
        if !seen.insert(cpu.value) {
            r.report(
                &cpu.at,
                ErrorKind::Duplicate,
                format!("CPU {} is listed twice in {who}", cpu.value.0),
                "list each CPU once".into(),
            );
            ok = false;
        }
    }
    ok.then_some(cpus)
}

/// `MAX_CPUS` as a config value.
const CPUS: u64 = MAX_CPUS as u64;
const CPUS_WHY: &str = "Atoll uses at most 256 CPUs";

fn read_cpus(r: &mut Reader<'_>, items: &[Field<'_, '_>]) -> Option<Vec<Located<CpuIndex>>> {
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match r
            .integer(item)
            .and_then(|n| at_most(r, n, CPUS - 1, "CPU index", CPUS_WHY))
            .and_then(|n| to_u32(r, n, "CPU index"))
        {
            Some(n) => out.push(Located::new(CpuIndex(n.value), n.at)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Names of the nodes that have readable names, for resolving references.
struct NodeNames {
    names: Vec<Option<Located<String>>>,
    /// Name to node index (the first node of a name), for lookups in
    /// logarithmic time.
    index: BTreeMap<String, usize>,
}

impl NodeNames {
    fn new(names: Vec<Option<Located<String>>>) -> Self {
        let mut index = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            if let Some(n) = n {
                index.entry(n.value.clone()).or_insert(i);
            }
        }
        Self { names, index }
    }

    /// The name of node `id`, shown for a message; `?` if unreadable.
    fn name(&self, id: NodeId) -> String {
        self.names
            .get(usize::from(id.0))
            .and_then(Option::as_ref)
            .map_or_else(|| "?".to_string(), |n| shown(&n.value))
    }

    /// Every node's name is known: an unresolved reference is then a real
    /// error, not the echo of a node whose name could not be read.
    fn complete(&self) -> bool {
        self.names.iter().all(Option::is_some)
    }

    /// The node `name` refers to. `context` starts the message, e.g.
    /// "channel 'wal' gives access to".
    fn resolve(
        &self,
        r: &mut Reader<'_>,
        name: &Located<String>,
        context: &str,
    ) -> Option<Located<NodeId>> {
        let found = self.index.get(&name.value).copied();
        if let Some(id) = found.and_then(|i| u16::try_from(i).ok()) {
            return Some(Located::new(NodeId(id), name.at.clone()));
        }
        if self.complete() {
            let known: Vec<&str> = self
                .names
                .iter()
                .flatten()
                .map(|n| n.value.as_str())
                .collect();
            let fix = if known.is_empty() {
                format!("add a [[node]] named '{}'", shown(&name.value))
            } else {
                suggest(&name.value, &known, "the nodes", super::MAX_LISTED)
            };
            r.report(
                &name.at,
                ErrorKind::UnknownNode,
                format!(
                    "{context} node '{}', which does not exist",
                    shown(&name.value)
                ),
                fix,
            );
        }
        None
    }
}

/// Names unique within one kind (nodes, channels, VMs): the second use is
/// the error.
fn check_unique_names<'a>(
    r: &mut Reader<'_>,
    kind: &str,
    names: impl Iterator<Item = Option<&'a Located<String>>>,
) {
    let mut seen: BTreeMap<&str, &Location> = BTreeMap::new();
    let mut problems = Vec::new();
    for name in names.flatten() {
        match seen.get(name.value.as_str()) {
            Some(first) => problems.push((
                name.at.clone(),
                format!(
                    "{kind} name '{}' is already used by {} on line {}",
                    shown(&name.value),
                    first.key.trim_end_matches(".name"),
                    first.line
                ),
            )),
            None => {
                seen.insert(&name.value, &name.at);
            }
        }
    }
    for (at, message) in problems {
        r.report(
            &at,
            ErrorKind::Duplicate,
            message,
            format!("give each {kind} its own name"),
        );
    }
}

fn read_channel(
    r: &mut Reader<'_>,
    nodes: &NodeNames,
    index: usize,
    value: &Spanned<DeValue<'_>>,
) -> Option<ChannelConfig> {
    let path = format!("channel[{index}]");
    let t = r.table(path.clone(), value, &CHANNEL)?;
    let name = read_name(r, &t, &CHANNEL_NAME, "channel");
    let who = owner("channel", &path, name.as_ref());
    let size = r
        .required(&t, &CHANNEL_SIZE, &who)
        .and_then(|f| r.integer(&f))
        .and_then(|s| {
            let problem = if s.value == 0 {
                Some((
                    format!("{who} has size_kib = 0"),
                    "a channel needs at least one 4 KiB page: set size_kib to 4 or more, in steps of 4".to_string(),
                ))
            } else if s.value % 4 != 0 {
                let down = s.value - s.value % 4;
                let up = down.saturating_add(4);
                let hint = if down == 0 {
                    format!("use {up}")
                } else {
                    format!("use {down} or {up}")
                };
                Some((
                    format!("size_kib {} of {who} is not a multiple of 4", s.value),
                    format!("channels are made of 4 KiB pages: {hint}"),
                ))
            } else if s.value > MAX_MEM_MIB.saturating_mul(1024) {
                Some((
                    format!("size_kib {} of {who} is above Atoll's limit", s.value),
                    format!("set size_kib to {} or less", MAX_MEM_MIB.saturating_mul(1024)),
                ))
            } else {
                None
            };
            match problem {
                Some((message, fix)) => {
                    r.report(&s.at, ErrorKind::BadValue, message, fix);
                    None
                }
                None => Some(s),
            }
        });
    let access = r
        .required(&t, &CHANNEL_ACCESS, &who)
        .and_then(|f| read_access(r, nodes, &f, &who));
    Some(ChannelConfig {
        name: name?,
        size_kib: size?,
        access: access?,
        at: t.at.clone(),
    })
}

fn read_access(
    r: &mut Reader<'_>,
    nodes: &NodeNames,
    field: &Field<'_, '_>,
    who: &str,
) -> Option<Vec<ChannelGrant>> {
    let entries = r.map(field)?;
    if entries.len() > MAX_NODES {
        r.report(
            &field.at,
            ErrorKind::BadValue,
            format!(
                "{who} gives access to {} nodes, more than the {MAX_NODES} a config has",
                entries.len()
            ),
            "name each node of the channel once".into(),
        );
        return None;
    }
    let mut grants = Vec::with_capacity(entries.len());
    let mut ok = true;
    let context = format!("{who} gives access to");
    for (node, value) in &entries {
        let access = match value.value {
            DeValue::String(s) if s == "r" => Some(Access::Read),
            DeValue::String(s) if s == "rw" => Some(Access::ReadWrite),
            DeValue::String(s) => {
                r.report(
                    &value.at,
                    ErrorKind::BadValue,
                    format!(
                        "access \"{}\" of node '{}' to {who} is neither \"r\" nor \"rw\"",
                        shown(s),
                        shown(&node.value)
                    ),
                    "write \"r\" (read-only) or \"rw\" (read-write)".into(),
                );
                None
            }
            other => {
                r.report(
                    &value.at,
                    ErrorKind::WrongType,
                    format!(
                        "{} must be the string \"r\" or \"rw\", not {}",
                        value.at.key,
                        super::read::article(other.type_str())
                    ),
                    format!("write it like `{}`", CHANNEL_ACCESS.example),
                );
                None
            }
        };
        let id = nodes.resolve(r, node, &context);
        match (id, access) {
            (Some(id), Some(access)) => grants.push(ChannelGrant {
                node: id,
                access: Located::new(access, value.at.clone()),
            }),
            _ => ok = false,
        }
    }
    if entries.len() < 2 {
        let message = match entries.first() {
            Some((node, _)) => format!("{who} gives access only to node '{}'", shown(&node.value)),
            None => format!("{who} gives access to no node"),
        };
        r.report(
            &field.at,
            ErrorKind::BadValue,
            message,
            "a channel connects at least two nodes: add another node to access, like `access = { db = \"rw\", log = \"r\" }`".into(),
        );
        return None;
    }
    if ok && !grants.iter().any(|g| g.access.value == Access::ReadWrite) {
        r.report(
            &field.at,
            ErrorKind::BadValue,
            format!("no node may write {who}: every access is \"r\""),
            "give the node that produces the data \"rw\"".into(),
        );
        return None;
    }
    ok.then_some(grants)
}

fn read_ipi(
    r: &mut Reader<'_>,
    nodes: &NodeNames,
    index: usize,
    value: &Spanned<DeValue<'_>>,
) -> Option<IpiConfig> {
    let path = format!("ipi[{index}]");
    let t = r.table(path.clone(), value, &IPI)?;
    let from = r
        .required(&t, &IPI_FROM, &path)
        .and_then(|f| r.string(&f))
        .and_then(|n| nodes.resolve(r, &n, &format!("{path} comes from")));
    let to = r
        .required(&t, &IPI_TO, &path)
        .and_then(|f| r.string(&f))
        .and_then(|n| nodes.resolve(r, &n, &format!("{path} goes to")));
    let notifications = r
        .required(&t, &IPI_NOTIFICATIONS, &path)
        .and_then(|f| read_notifications(r, &f, &path));
    if let (Some(from), Some(to)) = (&from, &to)
        && from.value == to.value
    {
        let name = nodes.name(from.value);
        r.report(
            &to.at,
            ErrorKind::BadValue,
            format!("{path} goes from node '{name}' to itself"),
            "an ipi signals another node: set `to` to a different node".into(),
        );
        return None;
    }
    Some(IpiConfig {
        from: from?,
        to: to?,
        notifications: notifications?,
        at: t.at.clone(),
    })
}

fn read_notifications(
    r: &mut Reader<'_>,
    field: &Field<'_, '_>,
    path: &str,
) -> Option<Vec<Located<u8>>> {
    let items = r.array(
        field,
        usize::from(NOTIFICATIONS),
        "there are 64 notifications, 0 to 63",
    )?;
    if items.is_empty() {
        r.report(
            &field.at,
            ErrorKind::BadValue,
            format!("{path} grants no notifications"),
            "list at least one, like `notifications = [0]`".into(),
        );
        return None;
    }
    let mut out: Vec<Located<u8>> = Vec::with_capacity(items.len());
    let mut ok = true;
    let mut seen = 0u64;
    for item in &items {
        let Some(n) = r.integer(item) else {
            ok = false;
            continue;
        };
        match u8::try_from(n.value) {
            Ok(v) if v < NOTIFICATIONS => {
                let bit = 1u64.checked_shl(u32::from(v)).unwrap_or(0);
                if seen & bit != 0 {
                    r.report(
                        &n.at,
                        ErrorKind::Duplicate,
                        format!("notification {v} is listed twice in {path}"),
                        "list each notification once".into(),
                    );
                    ok = false;
                } else {
                    seen |= bit;
                    out.push(Located::new(v, n.at));
                }
            }
            _ => {
                r.report(
                    &n.at,
                    ErrorKind::BadValue,
                    format!("notification {} is out of range", n.value),
                    format!(
                        "notifications are numbered 0 to {} (the bits of the doorbell word)",
                        NOTIFICATIONS - 1
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Several `[[ipi]]` tables for the same ordered pair merge; granting the
/// same notification twice is a mistake (two senders would think they own
/// it), so it is reported at the second grant.
fn check_ipi_duplicates(r: &mut Reader<'_>, nodes: &NodeNames, ipis: &[Option<IpiConfig>]) {
    let name = |id: NodeId| nodes.name(id);
    let mut granted: BTreeMap<(NodeId, NodeId, u8), &Location> = BTreeMap::new();
    let mut problems = Vec::new();
    for ipi in ipis.iter().flatten() {
        let pair = (ipi.from.value, ipi.to.value);
        for n in &ipi.notifications {
            match granted.get(&(pair.0, pair.1, n.value)) {
                Some(first) => problems.push((
                    n.at.clone(),
                    format!(
                        "notification {} from node '{}' to node '{}' is already granted on line {}",
                        n.value,
                        name(pair.0),
                        name(pair.1),
                        first.line
                    ),
                )),
                None => {
                    granted.insert((pair.0, pair.1, n.value), &n.at);
                }
            }
        }
    }
    for (at, message) in problems {
        r.report(
            &at,
            ErrorKind::Duplicate,
            message,
            "grant each notification once per pair of nodes".into(),
        );
    }
}

fn read_vm(
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
        .and_then(|n| {
            if n.value > MAX_MEM_MIB {
                r.report(
                    &n.at,
                    ErrorKind::BadValue,
                    format!(
                        "mem_mib {} of {who} is above Atoll's limit of {MAX_MEM_MIB} MiB",
                        n.value
                    ),
                    format!("set mem_mib to {MAX_MEM_MIB} or less"),
                );
                None
            } else {
                Some(n)
            }
        });
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

/// A key whose value is one of a few words (`words`: the word and what
/// it means), located; any other word is a `BadValue` error saying
/// `KEY "VALUE" <mistake>` (the value escaped, as every echoed value is),
/// with `fix`.
fn read_keyword<T: Copy>(
    r: &mut Reader<'_>,
    t: &Table<'_, '_>,
    key: &'static Key,
    words: &[(&str, T)],
    mistake: &str,
    fix: &str,
) -> Result<Option<Located<T>>, ()> {
    let Some(f) = r.optional(t, key) else {
        return Ok(None);
    };
    let s = r.string(&f).ok_or(())?;
    if let Some(&(_, value)) = words.iter().find(|(word, _)| *word == s.value) {
        return Ok(Some(Located::new(value, s.at)));
    }
    let message = format!("{} \"{}\" {mistake}", key.name, shown(&s.value));
    r.report(&s.at, ErrorKind::BadValue, message, fix.into());
    Err(())
}

/// One `signal` entry of a `[[vm]]`: `{ vm = "...", notifications = [...] }`.
/// The VM name is resolved by the planner (VMs may be declared later).
fn read_vm_signal(r: &mut Reader<'_>, item: &Field<'_, '_>) -> Option<VmSignalConfig> {
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

fn at_least_one(
    r: &mut Reader<'_>,
    n: Located<u64>,
    message: &str,
    fix: &str,
) -> Option<Located<u64>> {
    if n.value == 0 {
        r.report(&n.at, ErrorKind::BadValue, message.into(), fix.into());
        None
    } else {
        Some(n)
    }
}
