//! `cargo xtask check-config FILE [--topology SPEC]`.
//!
//! Without `--topology` the config is checked alone: the language, names,
//! references, and everything else that does not depend on the machine.
//! With a topology spec (see `Topology::from_spec`, e.g.
//! `cpus=4,numa=2,mem-mib=1024`) it is also planned on that machine, and the
//! plan is printed node by node, as the hypervisor would carry it out.

use anyhow::{Context, Result};
use atoll_cluster::config::{ClusterConfig, ConfigError};
use atoll_cluster::plan::{Plan, plan};
use atoll_cluster::topology::{PhysRange, Topology};
use std::fmt::Write;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// Checks `file`; prints a verdict (or the plan) and returns whether it
/// passed.
pub fn check(file: &Path, topology: Option<&str>) -> Result<bool> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file.display().to_string();
    match verdict(&name, &bytes, topology) {
        Ok(report) => {
            print!("{report}");
            Ok(true)
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            Ok(false)
        }
    }
}

/// The report for a good config, or every error line for a bad one.
fn verdict(name: &str, bytes: &[u8], topology: Option<&str>) -> Result<String, Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        vec![format!(
            "{name}: not UTF-8 at byte {}; save the file as UTF-8",
            e.valid_up_to()
        )]
    })?;
    let lines = |errors: Vec<ConfigError>| -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    };
    let config = ClusterConfig::parse(name, text).map_err(lines)?;
    let Some(spec) = topology else {
        return Ok(format!(
            "{name}: ok: {}, {}, {}, {} (checked alone; \
             add --topology SPEC, e.g. cpus=4,numa=1,mem-mib=512, to plan it on a machine)\n",
            count(config.nodes.len(), "node"),
            count(config.channels.len(), "channel"),
            count(config.ipis.len(), "ipi"),
            count(config.vms.len(), "vm")
        ));
    };
    let machine = Topology::from_spec(spec).map_err(|e| vec![e.to_string()])?;
    let plan = plan(&config, &machine).map_err(lines)?;
    Ok(format!(
        "{name}: ok on {spec}\n\n{}",
        render(&config, &plan)
    ))
}

/// "1 node", "2 nodes".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn range(r: &PhysRange) -> String {
    format!("{:#010x}-{:#010x}", r.start.0, r.end())
}

fn size(bytes: u64) -> String {
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// "0-3, 6": CPU indices with runs collapsed.
fn cpu_set(mut cpus: Vec<u32>) -> String {
    cpus.sort_unstable();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(&first) = cpus.get(i) {
        let mut last = first;
        while cpus.get(i + 1) == Some(&(last + 1)) {
            last += 1;
            i += 1;
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
        i += 1;
    }
    parts.join(", ")
}

/// Notification numbers of a bit mask: "0, 1".
fn bits(mask: u64) -> String {
    (0..64)
        .filter(|b| mask & (1 << b) != 0)
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plan as a block per node, then channels and signals.
fn render(config: &ClusterConfig, plan: &Plan) -> String {
    let mut out = String::new();
    let name = |id| config.node_name(id);
    for node in &plan.nodes {
        let boot = if node.id == plan.boot_node {
            " (boot node)"
        } else {
            ""
        };
        let _ = writeln!(out, "node {} '{}'{boot}", node.id.0, node.name);
        let first = node.cpus.first().map_or(0, |c| c.index.0);
        let _ = writeln!(
            out,
            "  cpus        {} (first: {first})",
            cpu_set(node.cpus.iter().map(|c| c.index.0).collect())
        );
        let domain = node
            .domain
            .map_or("any (not tied to one domain)".into(), |d| d.0.to_string());
        let _ = writeln!(out, "  domain      {domain}");
        let _ = writeln!(out, "  memory      {} total", size(node.memory_bytes()));
        for r in &node.memory {
            let _ = writeln!(out, "              {}  {}", range(r), size(r.len));
        }
        let _ = writeln!(
            out,
            "  kernel      {}  {}",
            range(&node.kernel_memory),
            size(node.kernel_memory.len)
        );
        let _ = writeln!(
            out,
            "  trampoline  {}  (SIPI vector {:#04x})",
            range(&node.trampoline),
            node.trampoline.start.0 >> 12
        );
        let channels: Vec<String> = node
            .channels
            .iter()
            .filter_map(|&(i, access)| {
                let c = plan.channels.get(i)?;
                Some(format!("{} ({})", c.name, access.as_str()))
            })
            .collect();
        let _ = writeln!(out, "  channels    {}", none_or(channels.join(", ")));
        let mut signals: Vec<String> = Vec::new();
        for s in plan.signals.iter().filter(|s| s.from == node.id) {
            signals.push(format!("to '{}': {}", name(s.to), bits(s.notifications)));
        }
        for s in plan.signals.iter().filter(|s| s.to == node.id) {
            signals.push(format!(
                "from '{}': {}",
                name(s.from),
                bits(s.notifications)
            ));
        }
        let _ = writeln!(out, "  signals     {}", none_or(signals.join("; ")));
        for vm in plan.vms.iter().filter(|vm| vm.node == node.id) {
            let cpus: Vec<String> = vm.vcpu_cpus.iter().map(|c| c.0.to_string()).collect();
            let how = if vm.pinned { "pinned" } else { "round robin" };
            let _ = writeln!(
                out,
                "  vm '{}'  {} vCPU(s) on CPUs {} ({how}), {}  {}, kernel {}, devices {}",
                vm.name,
                vm.vcpus,
                cpus.join(", "),
                range(&vm.memory),
                size(vm.memory.len),
                vm.kernel,
                vm.devices.join(", ")
            );
        }
        out.push('\n');
    }
    if !plan.channels.is_empty() {
        let _ = writeln!(out, "channels");
        for c in &plan.channels {
            let grants: Vec<String> = c
                .grants
                .iter()
                .map(|(n, a)| format!("{} {}", name(*n), a.as_str()))
                .collect();
            let _ = writeln!(
                out,
                "  {:<16} {}  {:>8}  {}",
                c.name,
                range(&c.range),
                size(c.range.len),
                grants.join(", ")
            );
        }
        out.push('\n');
    }
    if !plan.signals.is_empty() {
        let _ = writeln!(out, "signals");
        for s in &plan.signals {
            let _ = writeln!(
                out,
                "  {:<16} notifications {:<10} doorbell {}",
                format!("{} -> {}", name(s.from), name(s.to)),
                bits(s.notifications),
                range(&s.doorbell)
            );
        }
    }
    out
}

fn none_or(s: String) -> String {
    if s.is_empty() { "none".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "[[node]]\nname = \"a\"\ncpus = [0, 1]\nmem_mib = 64\n\
        [[node]]\nname = \"b\"\ncount = 2\nmem_mib = 64\n\
        [[channel]]\nname = \"ab\"\nsize_kib = 8\naccess = { a = \"rw\", b = \"r\" }\n\
        [[ipi]]\nfrom = \"a\"\nto = \"b\"\nnotifications = [0, 3]\n";

    #[test]
    fn without_topology_the_config_is_checked_alone() {
        let report = verdict("c.toml", CONFIG.as_bytes(), None).unwrap();
        assert!(report.starts_with("c.toml: ok: 2 nodes, 1 channel, 1 ipi, 0 vms (checked alone;"));
    }

    #[test]
    fn with_a_topology_the_plan_is_printed_per_node() {
        let report = verdict("c.toml", CONFIG.as_bytes(), Some("cpus=4,mem-mib=512")).unwrap();
        assert!(report.contains("node 0 'a' (boot node)\n  cpus        0-1 (first: 0)\n"));
        assert!(report.contains("node 1 'b'\n  cpus        2-3 (first: 2)\n"));
        assert!(report.contains("  channels    ab (r)\n"));
        assert!(report.contains("  signals     from 'a': 0, 3\n"));
        assert!(report.contains("  memory      64 MiB total\n"));
        assert!(report.contains("  kernel      0x00600000-0x00e00000  8 MiB\n"));
    }

    #[test]
    fn errors_are_every_error_line() {
        let errors = verdict("c.toml", b"[[node]]\nname = \"a\"\n", None).unwrap_err();
        assert_eq!(
            errors,
            [
                "c.toml:1:1: node 'a' has no cpus, numa or count; add one: `cpus = [0, 1]` (these CPUs), `numa = 0` (all CPUs of NUMA domain 0) or `count = 2` (2 CPUs the planner picks)",
                "c.toml:1:1: node 'a' has no mem_mib; add `mem_mib = 64` (the node's memory in MiB, kernel memory included)",
            ]
        );
        let errors = verdict("c.toml", CONFIG.as_bytes(), Some("cpus=3,mem-mib=512")).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("c.toml:7:9: node 'b' asks for 2 CPUs but only 1 is free"));
        let errors = verdict("c.toml", CONFIG.as_bytes(), Some("cpus=0")).unwrap_err();
        assert!(errors[0].contains("cpus=0 is out of range"));
    }

    #[test]
    fn non_utf8_and_empty_files_fail() {
        assert!(verdict("c.toml", b"a\xffb", None).unwrap_err()[0].contains("byte 1"));
        assert!(verdict("c.toml", b"", None).unwrap_err()[0].contains("no [[node]]"));
    }

    #[test]
    fn cpu_sets_and_bits_read_well() {
        assert_eq!(cpu_set(vec![3, 0, 1, 2, 6]), "0-3, 6");
        assert_eq!(bits(0b1001), "0, 3");
    }
}
