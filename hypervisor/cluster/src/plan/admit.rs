//! What a boot does with a config that has errors: a config whose only
//! errors are inside `[[vm]]` tables boots without those VMs (they are
//! *refused*); any other error stops the boot, as before.
//!
//! The rule, applied until no VM error remains:
//!
//! 1. Parse, leaving out the refused tables. An error outside every
//!    `[[vm]]` table is fatal; each table with errors is refused (with its
//!    first error), and the parse runs again without it.
//! 2. A VM whose `signal` names a refused VM is refused too: the
//!    capability it was given points nowhere. (Channels are node objects,
//!    so a refused VM leaves no channel dangling.)
//! 3. Plan. Again, an error outside every `[[vm]]` table is fatal, and each
//!    VM with errors is refused (its memory and CPUs go back to the node);
//!    then the plan runs again without it.
//!
//! Each round refuses at least one VM, so it ends. [`admit`] is what the
//! hypervisor runs at boot and what `cargo xtask check-config` runs, so
//! the two agree on which VMs a config loses.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{Plan, plan_checked};
use crate::config::{ClusterConfig, ConfigError, ErrorKind, ErrorList, shown};
use crate::topology::Topology;

/// A `[[vm]]` the boot leaves out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Its position among the `[[vm]]` tables (`vm[N]` in keys).
    pub index: usize,
    /// Its name, or `vm[N]` when the table has no valid name.
    pub name: String,
    /// The first error of the table (or why a VM it signals is refused).
    pub error: ConfigError,
}

/// A config that boots, perhaps without some of its VMs.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// The config without the refused VMs.
    pub config: ClusterConfig,
    /// The plan for that config.
    pub plan: Plan,
    /// In `[[vm]]` order.
    pub refused: Vec<Refusal>,
    /// Every error found on the way (what `check-config` reports), in file
    /// order and capped like [`super::plan`]'s; empty when nothing was
    /// refused.
    pub errors: Vec<ConfigError>,
}

/// Parses `text` and plans it on `topology`, refusing the VMs with errors
/// (see the module documentation). `Err` holds the errors when one of them
/// is outside every `[[vm]]` table: then nothing boots.
pub fn admit(file: &str, text: &str, topology: &Topology) -> Result<Admitted, Vec<ConfigError>> {
    let mut all = ErrorList::new(file);
    let mut refused: Vec<Refusal> = Vec::new();
    let mut skip = BTreeSet::new();
    let mut config = loop {
        match ClusterConfig::parse_skipping(file, text, &skip) {
            Ok(config) => break config,
            Err(errors) => {
                let fatal = errors.outside_vms || errors.vms.is_empty();
                let before = skip.len();
                refuse(&errors, &errors.vm_names, &mut refused, &mut skip);
                all.extend(errors);
                if fatal || skip.len() == before {
                    return Err(all.into_sorted());
                }
            }
        }
    };
    loop {
        refuse_signalling(&mut config, &mut refused, &mut all);
        match plan_checked(&config, topology) {
            Ok(plan) => {
                refused.sort_by_key(|r| r.index);
                let errors = if all.is_empty() {
                    Vec::new()
                } else {
                    all.into_sorted()
                };
                return Ok(Admitted {
                    config,
                    plan,
                    refused,
                    errors,
                });
            }
            Err(errors) => {
                let fatal = errors.outside_vms || errors.vms.is_empty();
                let before = skip.len();
                let names: BTreeMap<usize, String> = config
                    .vms
                    .iter()
                    .map(|vm| (table_index(vm), vm.name.value.clone()))
                    .collect();
                refuse(&errors, &names, &mut refused, &mut skip);
                all.extend(errors);
                if fatal || skip.len() == before {
                    return Err(all.into_sorted());
                }
                config.vms.retain(|vm| !skip.contains(&table_index(vm)));
            }
        }
    }
}

/// Records a refusal for each `[[vm]]` table with errors in `errors`;
/// `names` are the valid names of the tables, by index.
fn refuse(
    errors: &ErrorList,
    names: &BTreeMap<usize, String>,
    refused: &mut Vec<Refusal>,
    skip: &mut BTreeSet<usize>,
) {
    for (&index, error) in &errors.vms {
        if skip.insert(index) {
            let name = names
                .get(&index)
                .cloned()
                .unwrap_or_else(|| format!("vm[{index}]"));
            refused.push(Refusal {
                index,
                name,
                error: error.clone(),
            });
        }
    }
}

/// Refuses, until none is left, every VM whose `signal` names a refused
/// VM; the error is at that `signal` entry.
fn refuse_signalling(config: &mut ClusterConfig, refused: &mut Vec<Refusal>, all: &mut ErrorList) {
    loop {
        // A refused VM's name may be another VM's too (a duplicate name):
        // that one still receives.
        let present: BTreeSet<&str> = config.vms.iter().map(|v| v.name.value.as_str()).collect();
        let gone: BTreeSet<&str> = refused
            .iter()
            .map(|r| r.name.as_str())
            .filter(|n| !present.contains(n))
            .collect();
        let hit = config.vms.iter().find_map(|vm| {
            let s = vm
                .signals
                .iter()
                .find(|s| gone.contains(s.vm.value.as_str()))?;
            let error = ConfigError::new(
                &config.file,
                &s.vm.at,
                ErrorKind::BadValue,
                format!(
                    "VM '{}' signals VM '{}', which is refused",
                    vm.name.value,
                    shown(&s.vm.value)
                ),
                format!(
                    "correct VM '{}' (see its errors) or drop this signal entry",
                    shown(&s.vm.value)
                ),
            );
            Some(Refusal {
                index: table_index(vm),
                name: vm.name.value.clone(),
                error,
            })
        });
        let Some(refusal) = hit else { return };
        all.push(refusal.error.clone());
        let index = refusal.index;
        refused.push(refusal);
        config.vms.retain(|vm| table_index(vm) != index);
    }
}

/// The `[[vm]]` table a VM was read from (its key is `vm[N]`).
fn table_index(vm: &crate::config::VmConfig) -> usize {
    crate::config::vm_table(&vm.at.key).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests;
