//! Which VMs a boot refuses, and when a config stays fatal.

use super::*;
use alloc::string::ToString;

const NODES: &str = "[[node]]\nname = \"a\"\ncpus = [0, 1]\nmem_mib = 64\n\
    [[node]]\nname = \"b\"\ncpus = [2, 3]\nmem_mib = 64\n\
    [[ipi]]\nfrom = \"a\"\nto = \"b\"\nnotifications = [0]\n";

fn vm(name: &str, node: &str, extra: &str) -> String {
    alloc::format!(
        "[[vm]]\nname = \"{name}\"\nnode = \"{node}\"\nvcpus = 1\nmem_mib = 4\nkernel = \"hello\"\n{extra}"
    )
}

fn machine() -> Topology {
    Topology::from_spec("cpus=4,numa=1,mem-mib=512").unwrap()
}

fn admitted(vms: &[String]) -> Admitted {
    let text = alloc::format!("{NODES}{}", vms.concat());
    admit("c.toml", &text, &machine()).unwrap()
}

fn names(a: &Admitted) -> (Vec<&str>, Vec<&str>) {
    (
        a.config.vms.iter().map(|v| v.name.value.as_str()).collect(),
        a.refused.iter().map(|r| r.name.as_str()).collect(),
    )
}

#[test]
fn a_clean_config_refuses_nothing() {
    let a = admitted(&[vm("x", "a", ""), vm("y", "b", "")]);
    assert_eq!(names(&a), (alloc::vec!["x", "y"], alloc::vec![]));
    assert!(a.errors.is_empty());
    assert_eq!(a.plan.vms.len(), 2);
}

#[test]
fn a_vm_with_a_parse_error_is_refused_and_the_rest_planned() {
    let a = admitted(&[
        vm("ok", "b", ""),
        vm("big", "a", "").replace("vcpus = 1", "vcpus = 100000"),
    ]);
    assert_eq!(names(&a), (alloc::vec!["ok"], alloc::vec!["big"]));
    assert_eq!(a.plan.vms.len(), 1);
    let r = &a.refused[0];
    assert_eq!(r.index, 1);
    assert_eq!(r.error.key, "vm[1].vcpus");
    assert!(
        r.error
            .to_string()
            .starts_with("c.toml:22:9: vCPU count 100000 is too large"),
        "{}",
        r.error
    );
    assert_eq!(a.errors, core::slice::from_ref(&r.error));
}

#[test]
fn a_vm_with_a_planning_error_is_refused_and_its_memory_goes_to_others() {
    // `hog` asks for more than node a has; `after` fits only once it is
    // refused. `pins` has 2 vCPUs and 1 pinned CPU.
    let a = admitted(&[
        vm("hog", "a", "").replace("mem_mib = 4", "mem_mib = 100"),
        vm("pins", "a", "pin = [0]\n").replace("vcpus = 1", "vcpus = 2"),
        vm("after", "a", "").replace("mem_mib = 4", "mem_mib = 50"),
    ]);
    assert_eq!(
        names(&a),
        (alloc::vec!["after"], alloc::vec!["hog", "pins"])
    );
    assert!(a.refused[1].error.message.contains("pin lists 1 CPU(s)"));
    assert_eq!(a.errors.len(), 2);
}

#[test]
fn a_vm_without_a_valid_name_is_named_by_its_table() {
    // A terminal title sequence (ESC ] 0 ; ... BEL), written as TOML escapes.
    let a = admitted(&[vm("Bad\\u001b]0;x\\u0007", "a", ""), vm("ok", "b", "")]);
    assert_eq!(names(&a), (alloc::vec!["ok"], alloc::vec!["vm[0]"]));
    let message = a.refused[0].error.to_string();
    assert!(message.contains("'Bad\\u{1b}]0;x\\u{7}'"), "{message}");
    assert!(!message.contains('\u{1b}'), "{message}");
}

#[test]
fn vms_that_signal_a_refused_vm_are_refused_too() {
    let a = admitted(&[
        vm("rx", "b", "bogus = 1\n"),
        vm(
            "tx",
            "a",
            "signal = [{ vm = \"rx\", notifications = [0] }]\n",
        ),
        vm("other", "a", ""),
    ]);
    assert_eq!(names(&a), (alloc::vec!["other"], alloc::vec!["rx", "tx"]));
    assert_eq!(
        a.refused[1].error.message,
        "VM 'tx' signals VM 'rx', which is refused"
    );
}

#[test]
fn a_duplicate_name_refuses_the_second_vm_only() {
    let a = admitted(&[
        vm("rx", "b", ""),
        vm("rx", "b", ""),
        vm(
            "tx",
            "a",
            "signal = [{ vm = \"rx\", notifications = [0] }]\n",
        ),
    ]);
    assert_eq!(names(&a), (alloc::vec!["rx", "tx"], alloc::vec!["rx"]));
    assert_eq!(a.refused[0].index, 1);
    assert_eq!(a.plan.vms.len(), 2);
}

#[test]
fn an_error_outside_the_vms_stays_fatal_and_lists_every_error() {
    let text = alloc::format!(
        "{NODES}[[channel]]\nname = \"c\"\nsize_kib = 3\naccess = {{ a = \"rw\", b = \"r\" }}\n{}",
        vm("big", "a", "").replace("vcpus = 1", "vcpus = 100000")
    );
    let errors = admit("c.toml", &text, &machine()).unwrap_err();
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["channel[0].size_kib", "vm[0].vcpus"]);
    // Planning errors outside VMs too: 3 CPUs asked of a 2-CPU machine.
    let two = Topology::from_spec("cpus=2,numa=1,mem-mib=512").unwrap();
    let errors = admit(
        "c.toml",
        &alloc::format!("{NODES}{}", vm("x", "a", "")),
        &two,
    )
    .unwrap_err();
    assert!(
        errors.iter().all(|e| vm_index_of(e).is_none()),
        "{errors:?}"
    );
}

fn vm_index_of(e: &ConfigError) -> Option<usize> {
    crate::config::vm_table(&e.key)
}

#[test]
fn many_bad_vms_are_all_refused_and_the_errors_capped() {
    let vms: Vec<String> = (0..60)
        .map(|i| vm(&alloc::format!("v{i}"), "a", "").replace("vcpus = 1", "vcpus = 0"))
        .chain([vm("ok", "b", "")])
        .collect();
    let a = admitted(&vms);
    assert_eq!(a.refused.len(), 60);
    assert_eq!(a.config.vms.len(), 1);
    assert_eq!(a.errors.len(), crate::config::MAX_ERRORS + 1);
    assert_eq!(
        a.errors.last().unwrap().to_string(),
        "c.toml: and 40 more errors; correct the errors above and check again"
    );
}
