//! The boot flow on the boot CPU: check the boot information, discover the
//! platform (memory map, ACPI MADT, CPUID and VMX capabilities), find the
//! cluster config module, report it all as events, then run the selected
//! self-test or power off.
//!
//! Every input here comes from outside Atoll (boot loader, firmware, the
//! user's command line and config). A problem with one is a clear `error`
//! event and a clean power-off with a non-zero status, never a hang.

use crate::arch::{self, phys::BootMemory};
use crate::console;
use atoll_platform::acpi::{Madt, SoftOff, Tables};
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
    match cmdline.get("selftest") {
        None => {}
        Some("panic") => panic!("selftest=panic: a deliberate panic to test the panic path"),
        Some("exception") => arch::cpu::raise_invalid_opcode(),
        Some(other) => fatal("cmdline", UnknownSelftest(other), soft_off),
    }

    find_config(&info, soft_off);
    power_off(0, "done", soft_off)
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

/// Finds the cluster config module and reports its size. Parsing it is the
/// cluster config's job (a later stage of the boot).
fn find_config(info: &BootInfo<'_>, soft_off: Option<SoftOff>) {
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
}

/// Reports a fatal input error and powers off with status 1.
fn fatal(kind: &str, error: impl Display, soft_off: Option<SoftOff>) -> ! {
    log::error!("{error}");
    console::event("error", |e| {
        e.field("kind", kind).field("msg", format_args!("{error}"))
    });
    power_off(1, "error", soft_off)
}

fn power_off(status: u8, reason: &str, soft_off: Option<SoftOff>) -> ! {
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
            "unknown self-test '{}'; known self-tests: panic exception",
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
