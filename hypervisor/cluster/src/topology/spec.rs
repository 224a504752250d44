//! Synthetic topologies from a one-line spec (`cpus=8,numa=2,mem-mib=4096`),
//! for `cargo xtask check-config --topology`, tests and benchmarks.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use super::{Cpu, CpuIndex, DomainId, DomainMemory, PhysRange, Topology};

const MIB: u64 = 1 << 20;
/// End of the PC's low conventional memory (the EBDA starts here on the
/// machines and emulators Atoll boots on).
pub(crate) const LOW_MEMORY_END: u64 = 0x9f000;
/// Where the boot loader puts the hypervisor image, and its end.
pub(crate) const IMAGE: PhysRange = PhysRange::new(0x20_0000, 0x40_0000);

const MAX_CPUS: u64 = 4096;
const MAX_MEM_MIB: u64 = 1 << 24;
const KEYS: &str = "cpus, numa, mem-mib (or ram-mib) and boot-cpu";
const EXAMPLE: &str = "cpus=8,numa=2,mem-mib=4096";

/// Why a topology spec was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    /// An item that is not `key=value`.
    Malformed {
        /// The item as written.
        item: String,
    },
    /// A key the spec does not know.
    UnknownKey {
        /// The key as written.
        key: String,
    },
    /// A key given twice.
    Duplicate {
        /// The key.
        key: &'static str,
    },
    /// A value that is not a decimal number.
    NotANumber {
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
    },
    /// A required key left out.
    Missing {
        /// The key.
        key: &'static str,
    },
    /// A number outside `[min, max]`.
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The value given.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
        /// Why the bounds are what they are, when they depend on other keys.
        because: &'static str,
    },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Malformed { item } => write!(
                f,
                "topology spec item '{item}' is not key=value; write it like {EXAMPLE}"
            ),
            SpecError::UnknownKey { key } => {
                write!(f, "unknown topology spec key '{key}'; the keys are {KEYS}")
            }
            SpecError::Duplicate { key } => {
                write!(f, "topology spec sets {key} twice; give it once")
            }
            SpecError::NotANumber { key, value } => write!(
                f,
                "topology spec {key}='{value}' is not a number; write a decimal number, like {EXAMPLE}"
            ),
            SpecError::Missing { key } => {
                write!(f, "topology spec has no {key}; add it, like {EXAMPLE}")
            }
            SpecError::OutOfRange {
                key,
                value,
                min,
                max,
                because,
            } => {
                write!(
                    f,
                    "topology spec {key}={value} is out of range; use {min} to {max}"
                )?;
                if !because.is_empty() {
                    write!(f, " ({because})")?;
                }
                Ok(())
            }
        }
    }
}

impl core::error::Error for SpecError {}

#[derive(Default)]
struct Values {
    cpus: Option<u64>,
    numa: Option<u64>,
    mem_mib: Option<u64>,
    boot_cpu: Option<u64>,
}

pub(super) fn parse(spec: &str) -> Result<Topology, SpecError> {
    let mut v = Values::default();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            return Err(SpecError::Malformed { item: item.into() });
        };
        let (name, slot): (&'static str, &mut Option<u64>) = match key.trim() {
            "cpus" => ("cpus", &mut v.cpus),
            "numa" => ("numa", &mut v.numa),
            "mem-mib" | "ram-mib" => ("mem-mib", &mut v.mem_mib),
            "boot-cpu" => ("boot-cpu", &mut v.boot_cpu),
            other => {
                return Err(SpecError::UnknownKey {
                    key: other.to_string(),
                });
            }
        };
        if slot.is_some() {
            return Err(SpecError::Duplicate { key: name });
        }
        let value = value.trim();
        *slot = Some(value.parse().map_err(|_| SpecError::NotANumber {
            key: name,
            value: value.into(),
        })?);
    }
    let range = |key, value, min, max, because| {
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(SpecError::OutOfRange {
                key,
                value,
                min,
                max,
                because,
            })
        }
    };
    let cpus = range(
        "cpus",
        v.cpus.ok_or(SpecError::Missing { key: "cpus" })?,
        1,
        MAX_CPUS,
        "",
    )?;
    let numa = range(
        "numa",
        v.numa.unwrap_or(1),
        1,
        cpus,
        "every domain gets at least one CPU",
    )?;
    let mem_mib = range(
        "mem-mib",
        v.mem_mib.ok_or(SpecError::Missing { key: "mem-mib" })?,
        numa.saturating_add(1),
        MAX_MEM_MIB,
        "memory above 1 MiB gives every domain at least 1 MiB",
    )?;
    let boot = range(
        "boot-cpu",
        v.boot_cpu.unwrap_or(0),
        0,
        cpus - 1,
        "the boot CPU is one of the CPUs",
    )?;

    // All values are range-checked above, so these conversions and products
    // cannot overflow (cpus * numa <= 2^24, mem_mib * numa <= 2^36).
    let to_u32 = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let cpu_list: Vec<Cpu> = (0..cpus)
        .map(|i| Cpu {
            index: CpuIndex(to_u32(i)),
            apic_id: to_u32(i),
            domain: DomainId(to_u32(i * numa / cpus)),
        })
        .collect();
    let high = mem_mib - 1;
    let low = PhysRange::new(0, LOW_MEMORY_END);
    let domain_memory = if numa > 1 {
        let boundary = |d: u64| (1 + d * high / numa) * MIB;
        let mut ranges = Vec::with_capacity(usize::try_from(numa).unwrap_or(0) + 1);
        ranges.push(DomainMemory {
            range: low,
            domain: DomainId(0),
        });
        ranges.extend((0..numa).map(|d| DomainMemory {
            range: PhysRange::new(boundary(d), boundary(d + 1) - boundary(d)),
            domain: DomainId(to_u32(d)),
        }));
        ranges
    } else {
        Vec::new()
    };
    Ok(Topology {
        cpus: cpu_list,
        boot_cpu: Some(CpuIndex(to_u32(boot))),
        domain_memory,
        distances: None,
        ram: alloc::vec![low, PhysRange::new(MIB, high * MIB)],
        reserved: alloc::vec![PhysRange::new(0, 0x1000), IMAGE],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_domains_split_cpus_and_memory_evenly() {
        let t = Topology::from_spec("cpus=8,numa=2,mem-mib=4096").unwrap();
        assert_eq!(t.cpus.len(), 8);
        let domains: Vec<u32> = t.cpus.iter().map(|c| c.domain.0).collect();
        assert_eq!(domains, [0, 0, 0, 0, 1, 1, 1, 1]);
        assert!(t.cpus.iter().all(|c| c.apic_id == c.index.0));
        assert_eq!(t.boot_cpu, Some(CpuIndex(0)));
        assert_eq!(
            t.ram,
            [PhysRange::new(0, 0x9f000), PhysRange::new(MIB, 4095 * MIB)]
        );
        let ranges: Vec<(u64, u64, u32)> = t
            .domain_memory
            .iter()
            .map(|m| (m.range.start.0, m.range.end(), m.domain.0))
            .collect();
        assert_eq!(
            ranges,
            [
                (0, 0x9f000, 0),
                (MIB, 2048 * MIB, 0),
                (2048 * MIB, 4096 * MIB, 1)
            ]
        );
        assert_eq!(t.domains(), [DomainId(0), DomainId(1)]);
        assert!(t.has_srat());
    }

    #[test]
    fn one_domain_has_no_srat() {
        let t = Topology::from_spec("cpus=4,mem-mib=512").unwrap();
        assert!(!t.has_srat());
        assert!(t.cpus.iter().all(|c| c.domain == DomainId(0)));
        assert_eq!(t.reserved, [PhysRange::new(0, 0x1000), IMAGE]);
    }

    #[test]
    fn uneven_splits_give_every_domain_cpus_and_memory() {
        let t = Topology::from_spec("ram-mib=10, cpus=5, numa=3, boot-cpu=4").unwrap();
        let domains: Vec<u32> = t.cpus.iter().map(|c| c.domain.0).collect();
        assert_eq!(domains, [0, 0, 1, 1, 2]);
        assert_eq!(t.boot_cpu, Some(CpuIndex(4)));
        for d in 0..3 {
            assert!(
                t.domain_memory
                    .iter()
                    .any(|m| m.domain == DomainId(d) && m.range.len >= MIB)
            );
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |s: &str| Topology::from_spec(s).unwrap_err().to_string();
        assert_eq!(
            err("cpus=4,numa=5,mem-mib=64"),
            "topology spec numa=5 is out of range; use 1 to 4 (every domain gets at least one CPU)"
        );
        assert_eq!(
            err("cpus=4,mem=64"),
            "unknown topology spec key 'mem'; the keys are cpus, numa, mem-mib (or ram-mib) and boot-cpu"
        );
        assert_eq!(
            err("cpus=4"),
            "topology spec has no mem-mib; add it, like cpus=8,numa=2,mem-mib=4096"
        );
        assert_eq!(
            err("cpus=x,mem-mib=64"),
            "topology spec cpus='x' is not a number; write a decimal number, like cpus=8,numa=2,mem-mib=4096"
        );
        assert_eq!(
            err("cpus4"),
            "topology spec item 'cpus4' is not key=value; write it like cpus=8,numa=2,mem-mib=4096"
        );
        assert_eq!(
            err("cpus=4,cpus=2"),
            "topology spec sets cpus twice; give it once"
        );
        assert!(err("cpus=0,mem-mib=64").contains("use 1 to 4096"));
        assert!(err("cpus=2,mem-mib=64,boot-cpu=2").contains("use 0 to 1"));
        assert!(err("cpus=2,numa=2,mem-mib=2").contains("use 3 to"));
    }
}
