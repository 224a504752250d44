//! The key schema: every table of the config language and every key it
//! holds, with the example and meaning its error fixes quote, and the
//! limits on how many tables a config may have. The readers in `tables/`
//! take their keys from here; the language reference is in `DESIGN.md`.

/// A key the language has, with an example and a description used in fixes.
pub(super) struct Key {
    pub name: &'static str,
    /// Whether a table must set it.
    pub presence: Presence,
    /// A complete line, e.g. `cpus = [0, 1]`.
    pub example: &'static str,
    /// What the key means, for the "add it" fix of a missing key.
    pub meaning: &'static str,
}

/// Whether a table must set a key. The readers ask for a required key
/// with `Reader::required` (which reports it missing) and for the others
/// with `Reader::optional`; both assert that they agree with this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Presence {
    Required,
    Optional,
    /// One of `cpus`, `numa` and `count`: a node sets exactly one.
    OneOfCpus,
}

/// A kind of table (`[[node]]`, ...) and the keys it may hold.
pub(super) struct Section {
    /// How the table is written, e.g. `[[node]]`.
    pub header: &'static str,
    pub keys: &'static [Key],
}

impl Section {
    pub(super) fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.name == name)
    }
}

use super::{MAX_CHANNELS, MAX_CPUS, MAX_IPIS, MAX_NODES, MAX_VMS};

pub(super) const NAME_MEANING: &str = "its name: lowercase letters, digits, '_' and '-'";

pub(super) const NODE_NAME: Key = Key {
    name: "name",
    presence: Presence::Required,
    example: "name = \"db\"",
    meaning: NAME_MEANING,
};
pub(super) const NODE_CPUS: Key = Key {
    name: "cpus",
    presence: Presence::OneOfCpus,
    example: "cpus = [0, 1]",
    meaning: "these CPUs, numbered in MADT order",
};
pub(super) const NODE_NUMA: Key = Key {
    name: "numa",
    presence: Presence::OneOfCpus,
    example: "numa = 0",
    meaning: "all CPUs of this NUMA domain",
};
pub(super) const NODE_COUNT: Key = Key {
    name: "count",
    presence: Presence::OneOfCpus,
    example: "count = 2",
    meaning: "this many CPUs, chosen by the planner",
};
pub(super) const NODE_MEM: Key = Key {
    name: "mem_mib",
    presence: Presence::Required,
    example: "mem_mib = 64",
    meaning: "the node's memory in MiB, kernel memory included",
};
pub(super) const NODE_KERNEL: Key = Key {
    name: "kernel_mib",
    presence: Presence::Optional,
    example: "kernel_mib = 8",
    meaning: "the node kernel's memory in MiB, a multiple of 2",
};
pub(super) const NODE: Section = Section {
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

pub(super) const CHANNEL_NAME: Key = Key {
    name: "name",
    presence: Presence::Required,
    example: "name = \"db-log\"",
    meaning: NAME_MEANING,
};
pub(super) const CHANNEL_SIZE: Key = Key {
    name: "size_kib",
    presence: Presence::Required,
    example: "size_kib = 64",
    meaning: "its size in KiB, a multiple of 4",
};
pub(super) const CHANNEL_ACCESS: Key = Key {
    name: "access",
    presence: Presence::Required,
    example: "access = { db = \"rw\", log = \"r\" }",
    meaning: "which nodes map it, read-only (\"r\") or read-write (\"rw\")",
};
pub(super) const CHANNEL: Section = Section {
    header: "[[channel]]",
    keys: &[CHANNEL_NAME, CHANNEL_SIZE, CHANNEL_ACCESS],
};

pub(super) const IPI_FROM: Key = Key {
    name: "from",
    presence: Presence::Required,
    example: "from = \"db\"",
    meaning: "the node that sends",
};
pub(super) const IPI_TO: Key = Key {
    name: "to",
    presence: Presence::Required,
    example: "to = \"log\"",
    meaning: "the node that receives",
};
pub(super) const IPI_NOTIFICATIONS: Key = Key {
    name: "notifications",
    presence: Presence::Required,
    example: "notifications = [0, 1]",
    meaning: "the notifications (0 to 63) 'from' may raise in 'to'",
};
pub(super) const IPI: Section = Section {
    header: "[[ipi]]",
    keys: &[IPI_FROM, IPI_TO, IPI_NOTIFICATIONS],
};

pub(super) const VM_NAME: Key = Key {
    name: "name",
    presence: Presence::Required,
    example: "name = \"web\"",
    meaning: NAME_MEANING,
};
pub(super) const VM_NODE: Key = Key {
    name: "node",
    presence: Presence::Required,
    example: "node = \"db\"",
    meaning: "the node the VM runs in",
};
pub(super) const VM_VCPUS: Key = Key {
    name: "vcpus",
    presence: Presence::Required,
    example: "vcpus = 2",
    meaning: "its number of virtual CPUs",
};
pub(super) const VM_MEM: Key = Key {
    name: "mem_mib",
    presence: Presence::Required,
    example: "mem_mib = 512",
    meaning: "its memory in MiB",
};
pub(super) const VM_DISK: Key = Key {
    name: "disk_mib",
    presence: Presence::Optional,
    example: "disk_mib = 16",
    meaning: "the size in MiB of its virtio-blk disk, kept in node memory",
};
pub(super) const VM_KERNEL: Key = Key {
    name: "kernel",
    presence: Presence::Required,
    example: "kernel = \"bzImage\"",
    meaning: "the path of the guest kernel",
};
pub(super) const VM_INITRD: Key = Key {
    name: "initrd",
    presence: Presence::Optional,
    example: "initrd = \"initrd.img\"",
    meaning: "the path of the initial ramdisk",
};
pub(super) const VM_CMDLINE: Key = Key {
    name: "cmdline",
    presence: Presence::Optional,
    example: "cmdline = \"console=ttyS0\"",
    meaning: "the guest kernel command line",
};
pub(super) const VM_MODULES: Key = Key {
    name: "modules",
    presence: Presence::Optional,
    example: "modules = [\"extra.img\"]",
    meaning: "more boot modules",
};
pub(super) const VM_DEVICES: Key = Key {
    name: "devices",
    presence: Presence::Optional,
    example: "devices = [\"uart\", \"virtio-blk\"]",
    meaning: "the devices the VM gets",
};
pub(super) const VM_PIN: Key = Key {
    name: "pin",
    presence: Presence::Optional,
    example: "pin = [0, 1]",
    meaning: "the CPU each vCPU runs on",
};
pub(super) const VM_ON_CRASH: Key = Key {
    name: "on_crash",
    presence: Presence::Optional,
    example: "on_crash = \"restart\"",
    meaning: "\"stop\" or \"restart\"",
};
pub(super) const VM_PLATFORM: Key = Key {
    name: "platform",
    presence: Presence::Optional,
    example: "platform = \"pc\"",
    meaning: "\"minimal\" or \"pc\"",
};
pub(super) const VM_SIGNAL: Key = Key {
    name: "signal",
    presence: Presence::Optional,
    example: "signal = [{ vm = \"log\", notifications = [0] }]",
    meaning: "the IPI capabilities it holds: notifications it may raise in VMs of other nodes",
};
pub(super) const VM_CHANNELS: Key = Key {
    name: "channels",
    presence: Presence::Optional,
    example: "channels = [\"db-log\"]",
    meaning: "the channels it may map",
};
pub(super) const SIGNAL_VM: Key = Key {
    name: "vm",
    presence: Presence::Required,
    example: "vm = \"log\"",
    meaning: "the VM that receives the notifications",
};
pub(super) const SIGNAL_NOTIFICATIONS: Key = Key {
    name: "notifications",
    presence: Presence::Required,
    example: "notifications = [0, 1]",
    meaning: "the notifications (0 to 63) it may raise there",
};
pub(super) const SIGNAL: Section = Section {
    header: "a `signal` entry { vm = ..., notifications = [...] }",
    keys: &[SIGNAL_VM, SIGNAL_NOTIFICATIONS],
};
pub(super) const VM: Section = Section {
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

/// A top-level array of tables (`[[node]]` is `node`) and how many tables
/// a config may have of it.
pub(super) struct TopLevel {
    pub name: &'static str,
    pub max: usize,
    /// Where the limit comes from, or how to stay within it (the fix).
    pub why: &'static str,
}

/// Every top-level table, in the order the readers take them.
pub(super) const TOP_LEVEL: [TopLevel; 4] = [
    TopLevel {
        name: "node",
        max: MAX_NODES,
        why: "every node needs a CPU of its own; merge nodes",
    },
    TopLevel {
        name: "channel",
        max: MAX_CHANNELS,
        why: "merge channels",
    },
    TopLevel {
        name: "ipi",
        max: MAX_IPIS,
        why: "merge the [[ipi]] tables of each pair of nodes",
    },
    TopLevel {
        name: "vm",
        max: MAX_VMS,
        why: "merge VMs or split the cluster",
    },
];

/// `MAX_CPUS` as a config value (bounds `count`, `cpus` and `pin`).
pub(super) const CPUS: u64 = MAX_CPUS as u64;
/// The reason given when a CPU count or index is too large.
pub(super) const CPUS_WHY: &str = "Atoll uses at most 256 CPUs";

#[cfg(test)]
mod tests {
    use super::*;

    const SECTIONS: [&Section; 5] = [&NODE, &CHANNEL, &IPI, &VM, &SIGNAL];

    #[test]
    fn every_example_sets_its_own_key_and_names_are_unique() {
        for section in SECTIONS {
            for (i, key) in section.keys.iter().enumerate() {
                let prefix = alloc::format!("{} = ", key.name);
                assert!(key.example.starts_with(&prefix), "{}", key.example);
                assert!(!key.meaning.is_empty(), "{}", key.name);
                assert!(
                    section
                        .keys
                        .get(..i)
                        .is_some_and(|earlier| earlier.iter().all(|k| k.name != key.name)),
                    "{} twice in {}",
                    key.name,
                    section.header
                );
            }
        }
    }

    #[test]
    fn only_node_cpu_keys_are_one_of_a_group() {
        for section in SECTIONS {
            for key in section.keys {
                let in_group = ["cpus", "numa", "count"].contains(&key.name);
                let node = core::ptr::eq(section, &NODE);
                assert_eq!(key.presence == Presence::OneOfCpus, node && in_group);
            }
        }
        assert_eq!(
            NODE.key("name").map(|k| k.presence),
            Some(Presence::Required)
        );
        assert_eq!(
            VM.key("disk_mib").map(|k| k.presence),
            Some(Presence::Optional)
        );
    }

    #[test]
    fn the_top_level_tables_are_the_ones_the_readers_know() {
        let names = TOP_LEVEL.map(|t| t.name);
        assert_eq!(names, ["node", "channel", "ipi", "vm"]);
        assert!(TOP_LEVEL.iter().all(|t| t.max > 0 && !t.why.is_empty()));
    }
}
