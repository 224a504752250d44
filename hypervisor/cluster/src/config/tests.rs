//! The model the parser builds, and errors that need more than one line to
//! pin (several errors at once, locations of values, merges).

use super::*;
use alloc::string::ToString;
use alloc::vec;

const FULL: &str = r#"
[[node]]
name = "db"
cpus = [1, 0]
mem_mib = 256
kernel_mib = 16

[[node]]
name = "log"
count = 1
mem_mib = 64

[[node]]
name = "far"
numa = 1
mem_mib = 64

[[channel]]
name = "wal"
size_kib = 64
access = { log = "r", db = "rw" }

[[ipi]]
from = "db"
to = "log"
notifications = [0, 5]

[[ipi]]
from = "db"
to = "log"
notifications = [63]

[[ipi]]
from = "log"
to = "db"
notifications = [1]

[[vm]]
name = "postgres"
node = "db"
vcpus = 2
mem_mib = 128
kernel = "bzImage"
initrd = "initrd.img"
cmdline = "console=ttyS0"
modules = ["a.img", "b.img"]
devices = ["serial", "virtio-blk"]
pin = [0, 1]
on_crash = "restart"
platform = "pc"

[[vm]]
name = "logger"
node = "log"
vcpus = 1
mem_mib = 32
kernel = "bzImage"
"#;

fn errors(text: &str) -> Vec<String> {
    ClusterConfig::parse("c.toml", text)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_full_config_becomes_the_model() {
    let c = ClusterConfig::parse("c.toml", FULL).unwrap();
    assert_eq!(c.file, "c.toml");
    assert_eq!(c.nodes.len(), 3);
    let db = &c.nodes[0];
    assert_eq!(db.id, NodeId(0));
    assert_eq!(db.name.value, "db");
    // Lists keep the file's order; the planner sorts.
    match &db.cpus.value {
        CpuSelection::List(cpus) => {
            let v: Vec<u32> = cpus.iter().map(|c| c.value.0).collect();
            assert_eq!(v, [1, 0]);
            assert_eq!((cpus[0].at.line, cpus[0].at.column), (4, 9));
            assert_eq!(cpus[1].at.key, "node[0].cpus[1]");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(db.kernel_mib(), 16);
    assert_eq!(c.nodes[1].cpus.value, CpuSelection::Count(1));
    assert_eq!(c.nodes[1].kernel_mib(), DEFAULT_KERNEL_MIB);
    assert_eq!(c.nodes[1].kernel_at().key, "node[1].mem_mib");
    assert_eq!(c.nodes[2].cpus.value, CpuSelection::Numa(DomainId(1)));
    assert_eq!(c.nodes[2].at.line, 13);

    let wal = &c.channels[0];
    assert_eq!(wal.size_bytes(), 64 * 1024);
    // Grants in file order, not the parser's key order.
    let grants: Vec<(u16, Access)> = wal
        .access
        .iter()
        .map(|g| (g.node.value.0, g.access.value))
        .collect();
    assert_eq!(grants, [(1, Access::Read), (0, Access::ReadWrite)]);
    assert_eq!(wal.access[0].node.at.key, "channel[0].access.log");

    assert_eq!(c.ipis.len(), 3);
    assert_eq!(
        c.signals(),
        [
            Signal {
                from: NodeId(0),
                to: NodeId(1),
                notifications: (1 << 0) | (1 << 5) | (1 << 63),
            },
            Signal {
                from: NodeId(1),
                to: NodeId(0),
                notifications: 1 << 1,
            },
        ]
    );

    let vm = &c.vms[0];
    assert_eq!(vm.node.value, NodeId(0));
    assert_eq!(vm.vcpus.value, 2);
    assert_eq!(vm.initrd.as_ref().unwrap().value, "initrd.img");
    assert_eq!(vm.cmdline.as_ref().unwrap().value, "console=ttyS0");
    assert_eq!(vm.modules.len(), 2);
    assert_eq!(vm.devices[1].value, "virtio-blk");
    assert_eq!(vm.pin[1].value, CpuIndex(1));
    assert_eq!(vm.on_crash(), OnCrash::Restart);
    assert_eq!(c.vms[1].on_crash(), OnCrash::Stop);
    assert_eq!(vm.platform(), Platform::Pc);
    assert_eq!(c.vms[1].platform(), Platform::Minimal, "the default");
    assert!(c.vms[1].initrd.is_none() && c.vms[1].pin.is_empty());

    assert_eq!(c.node_id("far"), Some(NodeId(2)));
    assert_eq!(c.node_name(NodeId(1)), "log");
    assert_eq!(c.node_name(NodeId(9)), "?");
}

#[test]
fn parsing_is_deterministic() {
    assert_eq!(
        ClusterConfig::parse("c.toml", FULL),
        ClusterConfig::parse("c.toml", FULL)
    );
}

#[test]
fn inline_tables_work_like_headers() {
    let c = ClusterConfig::parse(
        "c.toml",
        "node = [{ name = \"a\", count = 1, mem_mib = 16 }, { name = \"b\", count = 1, mem_mib = 16 }]\n",
    )
    .unwrap();
    assert_eq!(c.nodes[1].name.value, "b");
    assert_eq!(c.nodes[1].at.column, 50);
}

#[test]
fn every_error_is_reported_in_file_order() {
    let e = errors(
        "[[node]]\nname = \"a\"\ncpus = [0]\nmem_mib = \"x\"\nextra = 1\n\n\
         [[node]]\nname = \"a\"\ncpus = [0]\nmem_mib = 8\n",
    );
    assert_eq!(
        e,
        [
            "c.toml:4:11: node[0].mem_mib must be an integer, not a string; write it like `mem_mib = 64`",
            "c.toml:5:1: unknown key 'extra' in node[0]; the keys of [[node]] are 'name', 'cpus', 'numa', 'count', 'mem_mib' and 'kernel_mib'",
            "c.toml:8:8: node name 'a' is already used by node[0] on line 2; give each node its own name",
            "c.toml:9:9: CPU 0 is in node 'a' and node 'a'; a CPU belongs to one node",
            "c.toml:10:11: mem_mib 8 of node 'a' is all taken by the default 8 MiB of kernel memory; raise mem_mib above 8, or set a smaller kernel_mib (at least 2)",
        ]
    );
}

#[test]
fn a_node_whose_name_cannot_be_read_does_not_make_references_errors() {
    // The second node's name is a number; the channel names it. Only the
    // name is an error, not the reference.
    let e = errors(
        "[[node]]\nname = \"a\"\ncount = 1\nmem_mib = 16\n\
         [[node]]\nname = 2\ncount = 1\nmem_mib = 16\n\
         [[channel]]\nname = \"c\"\nsize_kib = 4\naccess = { a = \"rw\", b = \"r\" }\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("c.toml:6:8: node[1].name must be a string"));
}

#[test]
fn errors_carry_key_kind_and_fix() {
    let e = ClusterConfig::parse(
        "c.toml",
        "[[node]]\nname = \"a\"\ncpus = [0]\nmem_mib = 64\nkernel_mib = 3\n",
    )
    .unwrap_err();
    assert_eq!(e.len(), 1);
    let e = &e[0];
    assert_eq!(e.file, "c.toml");
    assert_eq!((e.line, e.column), (5, 14));
    assert_eq!(e.key, "node[0].kernel_mib");
    assert_eq!(e.kind, ErrorKind::BadValue);
    assert_eq!(e.message, "kernel_mib 3 of node 'a' is not a multiple of 2");
    assert_eq!(e.fix, "kernel memory comes in 2 MiB blocks: use 2 or 4");
}

#[test]
fn syntax_errors_stop_the_checks_and_say_where() {
    let e = ClusterConfig::parse("c.toml", "[[node]]\nname = \"a\nmem_mib = 1\n").unwrap_err();
    assert!(e.iter().all(|e| e.kind == ErrorKind::Syntax), "{e:?}");
    assert_eq!(e[0].line, 2);
}

#[test]
fn values_out_of_integer_range_are_errors_not_wraps() {
    let e = errors("[[node]]\nname = \"a\"\ncpus = [4294967296]\nmem_mib = 64\n");
    assert_eq!(
        e,
        [
            "c.toml:3:9: CPU index 4294967296 is too large; the largest CPU index Atoll accepts is 255 (Atoll uses at most 256 CPUs)"
        ]
    );
    let e = errors("[[node]]\nname = \"a\"\ncount = 1\nmem_mib = 9223372036854775807\n");
    assert!(
        e[0].contains("is above Atoll's limit of 16777216 MiB"),
        "{e:?}"
    );
}

#[test]
fn names_are_checked_for_length_and_characters() {
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let e = errors(&alloc::format!(
        "[[node]]\nname = \"{long}\"\ncount = 1\nmem_mib = 16\n[[node]]\nname = \"\"\ncount = 1\nmem_mib = 16\n"
    ));
    assert!(e[0].contains("is longer than 32 characters"), "{e:?}");
    assert!(e[1].contains("the node name is empty"), "{e:?}");
}

#[test]
fn mask_ignores_nothing_in_range() {
    let at = Location::start_of_file();
    let ipi = IpiConfig {
        from: Located::new(NodeId(0), at.clone()),
        to: Located::new(NodeId(1), at.clone()),
        notifications: vec![Located::new(0, at.clone()), Located::new(63, at.clone())],
        at,
    };
    assert_eq!(ipi.mask(), 1 | (1 << 63));
}

#[test]
fn an_empty_node_array_is_no_nodes() {
    assert_eq!(
        errors("node = []\n"),
        [
            "c.toml:1:1: the config has no [[node]]; add at least one [[node]] with name, cpus (or numa or count) and mem_mib"
        ]
    );
    // A `node` of the wrong type is one error, not two.
    assert_eq!(errors("node = 3\n").len(), 1);
}
