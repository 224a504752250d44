//! Boot part 1 on the boot CPU (thesis 4.5.3 step 2, 5.4.1): check the boot
//! information, discover the platform (memory map, ACPI MADT and SRAT, CPUID
//! and VMX capabilities), parse the cluster config, check it against the
//! hardware and plan the nodes, then hand over to `node::start_cluster`.
//!
//! Every input here comes from outside Atoll (boot loader, firmware, the
//! user's command line and config). A problem with one is a clear `error`
//! event and a clean power-off with a non-zero status, never a hang.

use crate::arch::{self, phys::BootMemory};
use crate::console;
use crate::node::{self, BootState};
use crate::selftest::Selftest;
use alloc::vec::Vec;
use atoll_cluster::config::{check_size, utf8};
use atoll_cluster::plan::Plan;
use atoll_cluster::plan::admit::{Refusal, admit};
use atoll_cluster::topology::{Cpu, CpuIndex, DomainId, DomainMemory, PhysRange, Topology};
use atoll_platform::acpi::{Madt, PhysMemory, SoftOff, Tables};
use atoll_platform::cmdline::Cmdline;
use atoll_platform::event::Hex;
use atoll_platform::multiboot2::{BootInfo, MemoryKind};
use atoll_platform::vmx::VmxCaps;
use core::fmt::Display;

/// The multiboot2 module name of the cluster config (xtask's grub.cfg
/// passes it as the module's command line).
pub const CONFIG_MODULE: &str = "cluster.toml";

/// Runs the boot; never returns.
pub fn run(magic: u32, boot_info: &[u8], memory: &BootMemory) -> ! {
    let info = match BootInfo::parse(magic, boot_info) {
        Ok(info) => info,
        Err(e) => fatal("multiboot", e, None),
    };
    console::event("boot_start", |e| {
        e.field("version", env!("CARGO_PKG_VERSION"))
            .field("cmdline", info.cmdline())
    });
    log::info!(
        "Atoll {} booted by {}",
        env!("CARGO_PKG_VERSION"),
        info.bootloader_name().unwrap_or("an unnamed loader")
    );
    let usable_mib = report_memory(&info);

    let tables = Tables::new(memory, info.rsdp()).unwrap_or_else(|e| fatal("acpi", e, None));
    let soft_off = tables.soft_off().unwrap_or_else(|e| {
        log::warn!("no ACPI S5 power-off: {e}; falling back to emulator ports");
        None
    });
    let madt = tables.madt().unwrap_or_else(|e| fatal("acpi", e, soft_off));
    let features = arch::cpu::features();
    report_cpus(&madt, features.apic_id);
    let caps = arch::cpu::VmxMsrs::new(&features).map(|mut msrs| VmxCaps::read(&mut msrs));
    if let Some(caps) = &caps {
        report_vmx_caps(caps);
    }
    let caps = caps.unwrap_or_default();
    console::event("boot", |e| {
        e.field("cpus", madt.cpus.len())
            .field("ioapics", madt.ioapics.len())
            .field("mem_mib", usable_mib)
            .field("vmx", features.vmx)
            .field("ept", caps.ept())
            .field("vpid", caps.vpid())
            .field("unrestricted_guest", caps.unrestricted_guest())
            .field("x2apic", features.x2apic)
            .field("vendor", features.vendor.as_str())
    });

    let cmdline = Cmdline(info.cmdline());
    if let Some(key) = cmdline.first_unknown_key() {
        fatal("cmdline", UnknownKey(key), soft_off);
    }
    let selftest = match cmdline.get("selftest") {
        None => Selftest::None,
        Some("panic") => panic!("selftest=panic: a deliberate panic to test the panic path"),
        Some("exception") => arch::cpu::raise_invalid_opcode(),
        Some(name) => Selftest::from_name(name)
            .unwrap_or_else(|| fatal("cmdline", UnknownSelftest(name), soft_off)),
    };

    let config_text = find_config(&info, memory, soft_off);
    let topology = discover_topology(&info, &madt, &tables, features.apic_id, boot_info, soft_off);
    // Errors only inside [[vm]] tables refuse those VMs; any other error
    // stops the boot (atoll_cluster::plan::admit).
    let admitted = admit(CONFIG_MODULE, config_text, &topology)
        .unwrap_or_else(|errors| config_errors(&errors, soft_off));
    report_refusals(&admitted.refused);
    let refused = u32::try_from(admitted.refused.len()).unwrap_or(u32::MAX);
    let plan = admitted.plan;
    if plan.nodes.len() > arch::status::MAX_NODES {
        fatal(
            "config",
            format_args!(
                "{CONFIG_MODULE}: {} nodes planned, but this build of Atoll runs at most {} (its node status board); merge nodes until there are at most {}",
                plan.nodes.len(),
                arch::status::MAX_NODES,
                arch::status::MAX_NODES
            ),
            soft_off,
        );
    }
    report_plan(&plan);
    let tsc_per_us = arch::time::calibrate();
    log::info!("TSC: {tsc_per_us} ticks per microsecond");
    let ram_end = topology.ram.iter().map(PhysRange::end).max().unwrap_or(0);
    arch::paging::extend_boot_map(ram_end, arch::heap::boot_page);
    arch::images::record(
        info.modules()
            .map(|m| (alloc::string::String::from(m.name), m.start.0, m.len())),
    );
    let vmx = vmx_ready(caps, features.vmx);
    let boot = alloc::boxed::Box::leak(alloc::boxed::Box::new(BootState {
        plan,
        soft_off,
        selftest,
        vmx,
        refused,
    }));
    node::start_cluster(boot)
}

/// The VMX capabilities when every feature VMs need is there: EPT with a
/// 4-level write-back walk, VPID, unrestricted guest, single-context
/// INVEPT and INVVPID.
fn vmx_ready(caps: VmxCaps, vmx: bool) -> Option<VmxCaps> {
    let ready = caps.ept() && caps.vpid() && caps.unrestricted_guest() && caps.invalidation();
    (vmx && ready).then_some(caps)
}

/// The machine as the planner sees it.
fn discover_topology(
    info: &BootInfo<'_>,
    madt: &Madt,
    tables: &Tables<'_, BootMemory>,
    boot_apic_id: u32,
    boot_info: &[u8],
    soft_off: Option<SoftOff>,
) -> Topology {
    let srat = tables.srat().unwrap_or_else(|e| fatal("acpi", e, soft_off));
    let slit = tables.slit().unwrap_or_else(|e| fatal("acpi", e, soft_off));
    // The SRAT may list CPUs the MADT does not enable: join by APIC ID. A CPU
    // the SRAT does not place (or no SRAT at all) is in domain 0.
    let domain_of = |apic_id: u32| {
        srat.iter()
            .flat_map(|s| &s.cpus)
            .find(|a| a.apic_id == apic_id)
            .map_or(DomainId(0), |a| DomainId(a.domain.0))
    };
    let cpus: Vec<Cpu> = madt
        .cpus
        .iter()
        .enumerate()
        .map(|(i, c)| Cpu {
            index: CpuIndex(i as u32),
            apic_id: c.apic_id,
            domain: domain_of(c.apic_id),
        })
        .collect();
    // Hot-pluggable ranges are where memory may appear later, not RAM.
    let domain_memory: Vec<DomainMemory> = srat
        .iter()
        .flat_map(|s| &s.memory)
        .filter(|m| !m.hot_pluggable)
        .map(|m| DomainMemory {
            range: PhysRange::new(m.base.0, m.len),
            domain: DomainId(m.domain.0),
        })
        .collect();
    report_numa(&cpus, &domain_memory, slit.as_ref().map(|s| s.localities()));
    let xapic_only = !arch::cpu::features().x2apic;
    if let Some(cpu) = cpus.iter().find(|c| xapic_only && c.apic_id > MAX_XAPIC_ID) {
        fatal(
            "topology",
            format_args!(
                "CPU {} has APIC ID {}, which needs x2APIC, but this processor has none (xAPIC addresses APIC IDs up to {MAX_XAPIC_ID})",
                cpu.index.0, cpu.apic_id
            ),
            soft_off,
        );
    }
    let ram = info
        .memory_map()
        .filter(|r| r.kind == MemoryKind::Available)
        .map(|r| PhysRange::new(r.base.0, r.len))
        .collect();
    let image = arch::sections::layout();
    let mut reserved = alloc::vec![
        PhysRange::new(0, 0x1000),
        PhysRange::new(image.start, image.end - image.start),
        PhysRange::new(boot_info.as_ptr() as u64, boot_info.len() as u64),
    ];
    reserved.extend(info.modules().map(|m| PhysRange::new(m.start.0, m.len())));
    Topology {
        boot_cpu: cpus
            .iter()
            .find(|c| c.apic_id == boot_apic_id)
            .map(|c| c.index),
        cpus,
        domain_memory,
        distances: slit.map(|s| s.matrix().to_vec()),
        ram,
        reserved,
    }
}

/// Reports the NUMA domains found (`numa` event).
fn report_numa(cpus: &[Cpu], memory: &[DomainMemory], slit_localities: Option<usize>) {
    let domains: alloc::collections::BTreeSet<u32> = cpus
        .iter()
        .map(|c| c.domain.0)
        .chain(memory.iter().map(|m| m.domain.0))
        .collect();
    let ranges: Vec<atoll_platform::event::HexRange> = memory
        .iter()
        .map(|m| atoll_platform::event::HexRange(m.range.start.0, m.range.end()))
        .collect();
    let range_domains: Vec<u32> = memory.iter().map(|m| m.domain.0).collect();
    console::event("numa", |e| {
        e.field("srat", !memory.is_empty())
            .field("domains", domains.len())
            .field("ranges", ranges.as_slice())
            .field("range_domains", range_domains.as_slice())
            .field("slit_localities", slit_localities)
    });
}

/// The highest APIC ID xAPIC mode can address (255 is the broadcast ID).
const MAX_XAPIC_ID: u32 = 254;

fn report_plan(plan: &Plan) {
    console::event("plan", |e| {
        e.field("nodes", plan.nodes.len())
            .field("boot_node", plan.boot_node.0)
            .field("channels", plan.channels.len())
            .field("signals", plan.signals.len())
    });
    for node in &plan.nodes {
        let cpus: Vec<u32> = node.cpus.iter().map(|c| c.index.0).collect();
        log::info!(
            "node {} '{}': CPUs {:?}, {} MiB in {} range(s), kernel memory {:#x}-{:#x}",
            node.id.0,
            node.name,
            cpus,
            node.memory.iter().map(|r| r.len).sum::<u64>() >> 20,
            node.memory.len(),
            node.kernel_memory.start.0,
            node.kernel_memory.end()
        );
    }
    for channel in &plan.channels {
        log::info!(
            "channel '{}': {:#x}-{:#x}",
            channel.name,
            channel.range.start.0,
            channel.range.end()
        );
    }
    for signal in &plan.signals {
        log::info!(
            "signal node {} -> node {}: notifications {:#x}, doorbell {:#x}",
            signal.from.0,
            signal.to.0,
            signal.notifications,
            signal.doorbell.start.0
        );
    }
}

/// Reports each VM the boot leaves out (`vm_refused`).
fn report_refusals(refused: &[Refusal]) {
    for r in refused {
        log::warn!("VM '{}' refused: {}", r.name, r.error);
        console::event("vm_refused", |e| {
            e.field("vm", r.name.as_str())
                .field("msg", format_args!("{}", r.error))
        });
    }
}

/// Reports every config error (each as an `error` event with kind
/// `config`) and powers off.
fn config_errors(errors: &[atoll_cluster::config::ConfigError], soft_off: Option<SoftOff>) -> ! {
    for error in errors {
        log::error!("{error}");
        console::event("error", |e| {
            e.field("kind", "config")
                .field("msg", format_args!("{error}"))
        });
    }
    power_off(1, "error", soft_off)
}

/// Sums the memory map and reports it; returns the usable MiB.
fn report_memory(info: &BootInfo<'_>) -> u64 {
    let available = || {
        info.memory_map()
            .filter(|r| r.kind == MemoryKind::Available)
    };
    let usable: u64 = available().map(|r| r.len).fold(0, u64::saturating_add);
    let highest = available().map(|r| r.end()).max().unwrap_or(0);
    let usable_mib = usable >> 20;
    console::event("memory", |e| {
        e.field("regions", info.memory_map().count())
            .field("usable_mib", usable_mib)
            .field("highest", Hex(highest))
    });
    log::info!("memory: {usable_mib} MiB usable, highest address {highest:#x}");
    usable_mib
}

fn report_cpus(madt: &Madt, bsp_apic_id: u32) {
    for cpu in &madt.cpus {
        console::event("cpu_found", |e| {
            e.field("apic_id", cpu.apic_id)
                .field("uid", cpu.uid)
                .field("x2apic", cpu.x2apic)
                .field("bsp", cpu.apic_id == bsp_apic_id)
        });
    }
    for ioapic in &madt.ioapics {
        console::event("ioapic_found", |e| {
            e.field("id", ioapic.id)
                .field("address", Hex(ioapic.address.0))
                .field("gsi_base", ioapic.gsi_base)
        });
    }
    log::info!(
        "ACPI MADT: {} CPUs, {} I/O APICs, boot CPU has APIC ID {bsp_apic_id}",
        madt.cpus.len(),
        madt.ioapics.len()
    );
}

fn report_vmx_caps(caps: &VmxCaps) {
    console::event("vmx_caps", |e| {
        e.field("basic", Hex(caps.basic))
            .field("pinbased", Hex(caps.pinbased))
            .field("procbased", Hex(caps.procbased))
            .field("procbased2", Hex(caps.procbased2))
            .field("exit", Hex(caps.exit))
            .field("entry", Hex(caps.entry))
            .field("misc", Hex(caps.misc))
            .field("ept_vpid", Hex(caps.ept_vpid))
            .field("feature_control", Hex(caps.feature_control))
    });
    log::info!(
        "VMX: EPT {}, VPID {}, unrestricted guest {}",
        caps.ept(),
        caps.vpid(),
        caps.unrestricted_guest()
    );
}

/// Finds the cluster config module, reports its size and returns its text.
fn find_config<'m>(
    info: &BootInfo<'_>,
    memory: &'m BootMemory,
    soft_off: Option<SoftOff>,
) -> &'m str {
    let Some(module) = info.module(CONFIG_MODULE) else {
        fatal("config_missing", ConfigMissing, soft_off);
    };
    if module.is_empty() {
        fatal("config_empty", ConfigEmpty, soft_off);
    }
    console::event("config", |e| {
        e.field("name", module.name).field("bytes", module.len())
    });
    log::info!("cluster config: {} bytes at {}", module.len(), module.start);
    let len = usize::try_from(module.len()).unwrap_or(usize::MAX);
    // Before anything is read: the config is parsed in the boot heap,
    // which holds the document of a file up to this size.
    if let Err(e) = check_size(CONFIG_MODULE, len) {
        fatal("config", e, soft_off);
    }
    let Some(bytes) = memory.bytes(module.start, len) else {
        fatal(
            "config",
            format_args!(
                "{CONFIG_MODULE}: the module at {} is not readable memory",
                module.start
            ),
            soft_off,
        );
    };
    utf8(CONFIG_MODULE, bytes).unwrap_or_else(|e| fatal("config", e, soft_off))
}

/// Reports a fatal input error and powers off with status 1.
pub fn fatal(kind: &str, error: impl Display, soft_off: Option<SoftOff>) -> ! {
    log::error!("{error}");
    console::event("error", |e| {
        e.field("kind", kind).field("msg", format_args!("{error}"))
    });
    power_off(1, "error", soft_off)
}

pub fn power_off(status: u8, reason: &str, soft_off: Option<SoftOff>) -> ! {
    log::info!("powering off (status {status})");
    console::event("poweroff", |e| {
        e.field("status", status).field("reason", reason)
    });
    arch::power::power_off(soft_off, status);
    log::error!("the machine did not power off; halting");
    arch::cpu::halt_forever()
}

struct UnknownKey<'a>(&'a str);
impl Display for UnknownKey<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "unknown command line key '{}'; known keys:", self.0)?;
        atoll_platform::cmdline::KNOWN_KEYS
            .iter()
            .try_for_each(|k| write!(f, " {k}"))
    }
}

struct UnknownSelftest<'a>(&'a str);
impl Display for UnknownSelftest<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "unknown self-test '{}'; known self-tests: panic exception ipi isolation lock overflow node-panic",
            self.0
        )
    }
}

struct ConfigMissing;
impl Display for ConfigMissing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "no cluster config: the boot loader passed no module named '{CONFIG_MODULE}'; \
             add `module2 /boot/cluster.toml {CONFIG_MODULE}` to grub.cfg (cargo xtask run does this)"
        )
    }
}

struct ConfigEmpty;
impl Display for ConfigEmpty {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "the cluster config module '{CONFIG_MODULE}' is empty; give a config with at least one [[node]]"
        )
    }
}
