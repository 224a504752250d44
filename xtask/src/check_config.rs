//! `cargo xtask check-config FILE [--topology SPEC]`.
//!
//! The config is checked and planned as the hypervisor would at boot
//! (`atoll_cluster::plan::admit`): on the machine a topology spec
//! describes (see `Topology::from_spec`, e.g. `cpus=4,numa=2,mem-mib=1024`),
//! or, without `--topology`, on the machine `cargo xtask run` boots by
//! default. Whatever the hypervisor would reject at boot is reported here
//! first; the plan is printed node by node. Errors inside `[[vm]]` tables
//! only are still errors (non-zero exit), and the report names the VMs
//! the hypervisor would refuse while booting the rest.
//!
//! Only a regular file of at most `MAX_CONFIG_BYTES` is read: a FIFO, a
//! device or a directory is refused without reading it.

use anyhow::Result;
use atoll_cluster::config::{
    ClusterConfig, ConfigError, ErrorKind, Location, MAX_CONFIG_BYTES, check_size, listed, utf8,
};
use atoll_cluster::plan::Plan;
use atoll_cluster::plan::admit::{Admitted, admit};
use atoll_cluster::topology::{PhysRange, Topology};
use std::fmt::Write;
use std::io::Read;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// Checks `file`; prints a verdict (or the plan) and returns whether it
/// passed.
pub fn check(file: &Path, topology: Option<&str>) -> Result<bool> {
    let name = file.display().to_string();
    let report = read(file, &name)
        .map_err(|e| vec![e.to_string()])
        .and_then(|bytes| verdict(&name, &bytes, topology));
    match report {
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

/// The bytes of `file` if it is a regular file of at most
/// [`MAX_CONFIG_BYTES`]. The file is opened without blocking (a FIFO with
/// no writer would block an ordinary open) and checked on the open file,
/// so nothing can swap it between the check and the read.
fn read(file: &Path, name: &str) -> Result<Vec<u8>, ConfigError> {
    let error = |message: String, fix: &str| {
        ConfigError::new(
            name,
            &Location::start_of_file(),
            ErrorKind::File,
            message,
            fix.into(),
        )
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        /// `O_NONBLOCK` of Linux's <fcntl.h>.
        const O_NONBLOCK: i32 = 0o4000;
        options.custom_flags(O_NONBLOCK);
    }
    let mut f = options.open(file).map_err(|e| {
        error(
            format!("cannot open the file: {e}"),
            "give the path of a config file",
        )
    })?;
    let meta = f.metadata().map_err(|e| {
        error(
            format!("cannot look at the file: {e}"),
            "give the path of a config file",
        )
    })?;
    if !meta.is_file() {
        return Err(error(
            format!(
                "not a regular file (it is {})",
                file_kind(&meta.file_type())
            ),
            "give the path of a config file; check-config reads only regular files",
        ));
    }
    check_size(name, usize::try_from(meta.len()).unwrap_or(usize::MAX))?;
    let mut bytes = Vec::new();
    // One byte more than the limit: a file that grew since is caught too.
    f.by_ref()
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            error(
                format!("cannot read the file: {e}"),
                "give the path of a readable config file",
            )
        })?;
    check_size(name, bytes.len())?;
    Ok(bytes)
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a plain file"
    }
}

/// The machine `check-config` plans on without `--topology`: the one
/// `cargo xtask run` boots by default.
pub fn default_machine() -> String {
    format!(
        "cpus={},numa={},mem-mib={}",
        crate::DEFAULT_CPUS,
        crate::DEFAULT_NUMA,
        crate::DEFAULT_MEM_MIB
    )
}

/// The report for a good config, or every error line for a bad one.
fn verdict(name: &str, bytes: &[u8], topology: Option<&str>) -> Result<String, Vec<String>> {
    let text = utf8(name, bytes).map_err(|e| vec![e.to_string()])?;
    let (spec, machine_words) = match topology {
        Some(spec) => (spec.to_string(), format!("on {spec}")),
        None => {
            let spec = default_machine();
            let words = format!(
                "on the default machine: {spec} (what `cargo xtask run` boots; --topology SPEC plans on another)"
            );
            (spec, words)
        }
    };
    let machine = Topology::from_spec(&spec).map_err(|e| vec![e.to_string()])?;
    let lines = |errors: Vec<ConfigError>| -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    };
    let admitted = admit(name, text, &machine).map_err(|errors| {
        let mut out = lines(errors);
        // Errors of planning depend on the machine: say which.
        if ClusterConfig::parse(name, text).is_ok() {
            out.push(format!("{name}: planned {machine_words}"));
        }
        out
    })?;
    if !admitted.refused.is_empty() {
        return Err(refusals(name, &admitted, &machine_words, lines));
    }
    let config = &admitted.config;
    Ok(format!(
        "{name}: ok: {}, {}, {}, {}, planned {machine_words}\n\n{}",
        count(config.nodes.len(), "node"),
        count(config.channels.len(), "channel"),
        count(config.ipis.len(), "ipi"),
        count(config.vms.len(), "vm"),
        render(config, &admitted.plan)
    ))
}

/// The errors of a config whose errors are all inside `[[vm]]` tables, and
/// what the hypervisor would do with it.
fn refusals(
    name: &str,
    admitted: &Admitted,
    machine_words: &str,
    lines: impl Fn(Vec<ConfigError>) -> Vec<String>,
) -> Vec<String> {
    let mut out = lines(admitted.errors.clone());
    let names: Vec<&str> = admitted.refused.iter().map(|r| r.name.as_str()).collect();
    let (vm, them) = if names.len() == 1 {
        ("VM", "it")
    } else {
        ("VMs", "them")
    };
    out.push(format!(
        "{name}: the hypervisor would refuse {vm} {} (its `vm_refused` event names why) and boot the rest without {them}, planned {machine_words}",
        listed(names.into_iter())
    ));
    out
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
    fn without_topology_the_config_is_planned_on_the_default_machine() {
        let report = verdict("c.toml", CONFIG.as_bytes(), None).unwrap();
        assert!(
            report.starts_with(
                "c.toml: ok: 2 nodes, 1 channel, 1 ipi, 0 vms, planned on the default machine: cpus=4,numa=1,mem-mib=512 (what `cargo xtask run` boots;"
            ),
            "{report}"
        );
        assert!(report.contains("node 1 'b'\n  cpus        2-3 (first: 2)\n"));
        // 3 CPUs are more than the default machine has.
        let big = CONFIG.replace("count = 2", "count = 3");
        let errors = verdict("c.toml", big.as_bytes(), None).unwrap_err();
        assert!(
            errors[0].starts_with("c.toml:7:9: node 'b' asks for 3 CPUs"),
            "{errors:?}"
        );
        assert!(
            errors[1]
                .starts_with("c.toml: planned on the default machine: cpus=4,numa=1,mem-mib=512"),
            "{errors:?}"
        );
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
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[1], "c.toml: planned on cpus=3,mem-mib=512");
        assert!(errors[0].starts_with("c.toml:7:9: node 'b' asks for 2 CPUs but only 1 is free"));
        let errors = verdict("c.toml", CONFIG.as_bytes(), Some("cpus=0")).unwrap_err();
        assert!(errors[0].contains("cpus=0 is out of range"));
    }

    #[test]
    fn non_utf8_and_empty_files_fail() {
        let errors = verdict("c.toml", b"[[node]]\nname = \"\xc3\xa9a\xffb\"\n", None).unwrap_err();
        assert_eq!(
            errors,
            [
                "c.toml:2:11: the file is not UTF-8 text (byte 20 is not valid UTF-8); save the config as UTF-8"
            ]
        );
        assert!(verdict("c.toml", b"", None).unwrap_err()[0].contains("no [[node]]"));
    }

    const VMS: &str = "[[node]]\nname = \"a\"\ncpus = [0, 1]\nmem_mib = 64\n\
        [[vm]]\nname = \"small\"\nnode = \"a\"\nvcpus = 1\nmem_mib = 4\nkernel = \"hello\"\n\
        [[vm]]\nname = \"big\"\nnode = \"a\"\nvcpus = 100000\nmem_mib = 4\nkernel = \"hello\"\n";

    #[test]
    fn vm_errors_fail_and_name_the_vms_the_hypervisor_would_refuse() {
        let errors = verdict("c.toml", VMS.as_bytes(), None).unwrap_err();
        assert_eq!(
            errors,
            [
                "c.toml:14:9: vCPU count 100000 is too large; the largest vCPU count Atoll accepts is 255 (a VM's local APICs have 8-bit xAPIC IDs, 255 being broadcast)",
                "c.toml: the hypervisor would refuse VM 'big' (its `vm_refused` event names why) and boot the rest without it, planned on the default machine: cpus=4,numa=1,mem-mib=512 (what `cargo xtask run` boots; --topology SPEC plans on another)",
            ]
        );
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("atoll-check-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = temp("read");
        let err = read(&dir, "d").unwrap_err().to_string();
        assert_eq!(
            err,
            "d:1:1: not a regular file (it is a directory); give the path of a config file; check-config reads only regular files"
        );
        let err = read(Path::new("/dev/zero"), "z").unwrap_err().to_string();
        assert!(err.contains("not a regular file (it is a device)"), "{err}");
        let big = dir.join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES + 1]).unwrap();
        let err = read(&big, "big.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "big.toml:1:1: the config is {} bytes, more than the {MAX_CONFIG_BYTES} Atoll reads; split the cluster, or shorten the config (comments and blank lines count too)",
                MAX_CONFIG_BYTES + 1
            )
        );
        std::fs::write(&big, b"# ok\n").unwrap();
        assert_eq!(read(&big, "big.toml").unwrap(), b"# ok\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = temp("fifo");
        let fifo = dir.join("f.toml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            // No mkfifo on this host: nothing to test.
            return;
        }
        // A blocking open would never return: no one writes the FIFO.
        let err = read(&fifo, "f.toml").unwrap_err().to_string();
        assert!(err.contains("not a regular file (it is a FIFO)"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cpu_sets_and_bits_read_well() {
        assert_eq!(cpu_set(vec![3, 0, 1, 2, 6]), "0-3, 6");
        assert_eq!(bits(0b1001), "0, 3");
    }
}
