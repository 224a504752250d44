//! The cluster config parser on arbitrary text, and the planner on every
//! config it accepts, over two small fixed machines (four CPUs in two
//! NUMA domains with 512 MiB; two CPUs without an SRAT with 256 MiB).
//!
//! Neither may panic. Beyond that:
//! - every error names the file, a line inside the text and column 1 or
//!   more, has a message and a fix, and the errors come sorted by
//!   position, at most `MAX_ERRORS` of them and then one "and N more";
//!   no message holds a control character (names and values are
//!   escaped);
//! - every located value of an accepted config has a span inside the text,
//!   on a character boundary, whose line and column are where the span
//!   starts;
//! - parsing is deterministic, and so is planning;
//! - a plan honours the config: one node per `[[node]]` in order, each with
//!   CPUs of the machine that no other node has, the boot CPU first in the
//!   boot node, the memory asked for in page-aligned RAM, kernel memory
//!   inside it, and node memory, channels and doorbells disjoint; each VM
//!   inside its node's memory, clear of its kernel memory, with one CPU of
//!   its node per vCPU.
//!
//! Input: the config file's bytes, read as the hypervisor and
//! `check-config` read them (`config::utf8`): bytes that are not UTF-8
//! must give one error at the line and column of the first bad byte.
#![no_main]

use atoll_cluster::config::{
    ClusterConfig, ConfigError, CpuSelection, ErrorKind, Location, MAX_ERRORS, utf8,
};
use atoll_cluster::plan::{Plan, plan};
use atoll_cluster::topology::{PhysRange, Topology};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::sync::OnceLock;

const FILE: &str = "fuzz.toml";
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

fn machines() -> &'static [Topology; 2] {
    static MACHINES: OnceLock<[Topology; 2]> = OnceLock::new();
    MACHINES.get_or_init(|| {
        ["cpus=4,numa=2,mem-mib=512", "cpus=2,mem-mib=256,boot-cpu=1"]
            .map(|spec| Topology::from_spec(spec).expect("a valid machine spec"))
    })
}

/// 1-based line and character column of byte `offset`.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line as u32, column as u32)
}

fn check_errors(errors: &[ConfigError], text: &str) {
    assert!(!errors.is_empty(), "an error result without errors");
    // At most MAX_ERRORS, then one "and N more" line.
    let (located, more) = match errors.split_last() {
        Some((last, rest)) if last.kind == ErrorKind::More => (rest, Some(last)),
        _ => (errors, None),
    };
    assert!(located.len() <= MAX_ERRORS, "{} errors", located.len());
    assert!(more.is_none() || located.len() == MAX_ERRORS);
    let lines = text.split('\n').count() as u32;
    for e in errors {
        assert_eq!(e.file, FILE);
        assert!(!e.message.is_empty() && !e.fix.is_empty(), "{e}");
        // Names and values from the file are escaped in messages: nothing
        // reaches the operator's terminal as a control character.
        assert!(!e.to_string().chars().any(char::is_control), "{e:?}");
    }
    for e in located {
        assert_ne!(e.kind, ErrorKind::More);
        assert!(e.line >= 1 && e.line <= lines, "line out of the text: {e}");
        assert!(e.column >= 1, "{e}");
        let prefix = format!("{FILE}:{}:{}: ", e.line, e.column);
        assert!(e.to_string().starts_with(&prefix), "{e}");
    }
    assert!(
        located
            .windows(2)
            .all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column)),
        "errors out of order"
    );
}

/// Bytes that are not UTF-8: one error, at the line and column of the
/// first bad byte.
fn check_not_utf8(e: &ConfigError, data: &[u8]) {
    let good = std::str::from_utf8(data).unwrap_err().valid_up_to();
    let prefix = std::str::from_utf8(&data[..good]).unwrap();
    assert_eq!((e.line, e.column), line_column(prefix, good), "{e}");
    check_errors(std::slice::from_ref(e), prefix);
}

fn check_location(at: &Location, text: &str) {
    let span = &at.span;
    assert!(span.start <= span.end && span.end <= text.len(), "{at:?}");
    assert!(text.is_char_boundary(span.start), "{at:?}");
    assert_eq!(
        line_column(text, span.start),
        (at.line, at.column),
        "{at:?}"
    );
}

/// Every location an accepted config holds.
fn check_locations(config: &ClusterConfig, text: &str) {
    let mut all: Vec<&Location> = Vec::new();
    for n in &config.nodes {
        all.extend([&n.at, &n.name.at, &n.cpus.at, &n.mem_mib.at]);
        all.extend(n.kernel_mib.as_ref().map(|k| &k.at));
        if let CpuSelection::List(list) = &n.cpus.value {
            all.extend(list.iter().map(|c| &c.at));
        }
    }
    for c in &config.channels {
        all.extend([&c.at, &c.name.at, &c.size_kib.at]);
        all.extend(c.access.iter().flat_map(|g| [&g.node.at, &g.access.at]));
    }
    for i in &config.ipis {
        all.extend([&i.at, &i.from.at, &i.to.at]);
        all.extend(i.notifications.iter().map(|n| &n.at));
    }
    for v in &config.vms {
        all.extend([&v.at, &v.name.at, &v.node.at, &v.vcpus.at, &v.mem_mib.at]);
        all.extend([&v.kernel.at]);
        all.extend(v.initrd.iter().chain(&v.cmdline).map(|s| &s.at));
        all.extend(
            v.modules
                .iter()
                .chain(&v.devices)
                .chain(&v.channels)
                .map(|s| &s.at),
        );
        all.extend(v.disk_mib.as_ref().map(|d| &d.at));
        all.extend(v.pin.iter().map(|p| &p.at));
        all.extend(v.on_crash.as_ref().map(|o| &o.at));
        for s in &v.signals {
            all.extend([&s.at, &s.vm.at]);
            all.extend(s.notifications.iter().map(|n| &n.at));
        }
    }
    for at in all {
        check_location(at, text);
    }
}

fn inside_ram(r: &PhysRange, t: &Topology) -> bool {
    t.ram.iter().any(|ram| ram.contains(r))
}

fn check_plan(config: &ClusterConfig, t: &Topology, p: &Plan) {
    assert_eq!(p.nodes.len(), config.nodes.len());
    let mut cpus = BTreeSet::new();
    // (range, what) of everything that must not overlap.
    let mut owned: Vec<(PhysRange, String)> = Vec::new();
    for (i, (n, c)) in p.nodes.iter().zip(&config.nodes).enumerate() {
        assert_eq!(usize::from(n.id.0), i);
        assert_eq!(n.name, c.name.value);
        assert!(!n.cpus.is_empty(), "node {} has no CPU", n.name);
        for cpu in &n.cpus {
            assert!(cpus.insert(cpu.index), "CPU {:?} in two nodes", cpu.index);
            assert_eq!(t.cpu(cpu.index), Some(cpu));
        }
        if let CpuSelection::Count(k) = c.cpus.value {
            assert_eq!(n.cpus.len() as u64, u64::from(k));
        }
        let total: u64 = n.memory.iter().map(|r| r.len).sum();
        assert_eq!(total, c.mem_mib.value * MIB, "node {} memory", n.name);
        for r in &n.memory {
            assert!(r.start.0 % PAGE == 0 && r.len % PAGE == 0 && r.len > 0);
            assert!(inside_ram(r, t), "{r:?} outside RAM");
            owned.push((*r, format!("node {}", n.name)));
        }
        assert!(n.memory.iter().any(|r| r.contains(&n.kernel_memory)));
        assert_eq!(n.kernel_memory.len, c.kernel_mib() * MIB);
    }
    let boot = p.node(p.boot_node).and_then(|n| n.cpus.first());
    assert_eq!(boot.map(|c| c.index), Some(t.boot_cpu_or_default()));
    for ch in &p.channels {
        assert!(inside_ram(&ch.range, t));
        owned.push((ch.range, format!("channel {}", ch.name)));
    }
    for s in &p.signals {
        assert!(s.from != s.to && inside_ram(&s.doorbell, t));
        owned.push((s.doorbell, format!("doorbell {:?}", (s.from, s.to))));
    }
    owned.sort_by_key(|(r, _)| r.start);
    for w in owned.windows(2) {
        assert!(!w[0].0.overlaps(&w[1].0), "{} overlaps {}", w[0].1, w[1].1);
    }
    let mut vm_memory: Vec<PhysRange> = Vec::new();
    for vm in &p.vms {
        let node = p.node(vm.node).expect("a VM's node exists");
        assert!(node.memory.iter().any(|r| r.contains(&vm.memory)));
        assert!(!vm.memory.overlaps(&node.kernel_memory));
        assert!(vm_memory.iter().all(|m| !m.overlaps(&vm.memory)));
        vm_memory.push(vm.memory);
        assert_eq!(vm.vcpu_cpus.len() as u64, u64::from(vm.vcpus));
        for cpu in &vm.vcpu_cpus {
            assert!(node.cpus.iter().any(|c| c.index == *cpu));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = match utf8(FILE, data) {
        Ok(text) => text,
        Err(e) => return check_not_utf8(&e, data),
    };
    let parsed = ClusterConfig::parse(FILE, text);
    assert_eq!(
        parsed,
        ClusterConfig::parse(FILE, text),
        "not deterministic"
    );
    let config = match parsed {
        Ok(config) => config,
        Err(errors) => return check_errors(&errors, text),
    };
    assert!(!config.nodes.is_empty());
    check_locations(&config, text);
    for machine in machines() {
        let planned = plan(&config, machine);
        assert_eq!(planned, plan(&config, machine), "not deterministic");
        match planned {
            Ok(p) => check_plan(&config, machine, &p),
            Err(errors) => check_errors(&errors, text),
        }
    }
});
