//! `[[node]]`: a node's name, CPUs (exactly one of `cpus`, `numa`,
//! `count`) and memory; and the CPUs or NUMA domains two nodes both claim.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use toml::Spanned;
use toml::de::DeValue;

use super::names::{check_unique_names, owner, read_name};
use super::values::{at_most, read_cpus, to_u32, within_mem_limit};
use crate::config::error::{ErrorKind, Located, shown};
use crate::config::read::{Field, Reader, Table};
use crate::config::schema::{
    CPUS, CPUS_WHY, Key, NODE, NODE_COUNT, NODE_CPUS, NODE_KERNEL, NODE_MEM, NODE_NAME, NODE_NUMA,
};
use crate::config::{
    CpuSelection, DEFAULT_KERNEL_MIB, MAX_CPUS, MAX_NODES, MIN_KERNEL_MIB, NodeConfig,
};
use crate::plan::NodeId;
use crate::topology::{CpuIndex, DomainId};

/// What could be read of a node: its name and CPUs (for the checks across
/// nodes, which run even when another key of the node is wrong) and the
/// node itself when it is fully valid.
pub(super) struct NodeDraft {
    pub(super) name: Option<Located<String>>,
    pub(super) cpus: Option<Located<CpuSelection>>,
    pub(super) node: Option<NodeConfig>,
}

pub(super) fn read_nodes(r: &mut Reader<'_>, values: &[&Spanned<DeValue<'_>>]) -> Vec<NodeDraft> {
    let drafts: Vec<NodeDraft> = values
        .iter()
        .enumerate()
        .map(|(i, v)| read_node(r, i, v))
        .collect();
    check_unique_names(r, "node", drafts.iter().map(|d| d.name.as_ref()));
    check_claims(r, &drafts);
    drafts
}

/// CPUs and NUMA domains claimed by two nodes: the later claim is the
/// error, pointing back at the earlier one.
fn check_claims(r: &mut Reader<'_>, drafts: &[NodeDraft]) {
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
}

pub(super) fn read_node(
    r: &mut Reader<'_>,
    index: usize,
    value: &Spanned<DeValue<'_>>,
) -> NodeDraft {
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
        } else if !within_mem_limit(r, mem, "mem_mib", &who) {
            ok = false;
        }
    }
    if let Some(Some(k)) = &kernel_mib {
        if !within_mem_limit(r, k, "kernel_mib", &who) {
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
pub(super) fn read_selection(
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
pub(super) fn read_cpu_list(
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
