//! From TOML text to [`ClusterConfig`]: the document's top-level tables,
//! each read by its own reader (one file per table), then the checks
//! across tables that need no hardware (unique names, references to
//! nodes, notifications granted twice, VMs per node).

mod channel;
mod ipi;
mod names;
mod node;
mod values;
mod vm;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use self::channel::read_channel;
use self::ipi::{check_ipi_duplicates, read_ipi};
use self::names::{NodeNames, check_unique_names};
use self::node::read_nodes;
use self::vm::{check_vms_per_node, read_vm};
use crate::config::error::{ErrorKind, ErrorList, shown};
use crate::config::read::{Reader, article, closest, sorted_entries};
use crate::config::schema::TOP_LEVEL;
use crate::config::{ChannelConfig, ClusterConfig, IpiConfig, VmConfig};

/// Reads the whole document: a TOML syntax error stops here; otherwise
/// every table is read and checked, all errors collected, and the config
/// returned only when there are none. `[[vm]]` tables whose indices are in
/// `skip` are left out unread.
pub(super) fn parse(
    file: &str,
    text: &str,
    skip: &BTreeSet<usize>,
) -> Result<ClusterConfig, ErrorList> {
    let mut r = Reader::new(file, text);
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in &syntax {
            let at = r.locate(String::new(), e.span().unwrap_or(0..0));
            r.report(
                &at,
                ErrorKind::Syntax,
                format!("invalid TOML: {}", e.message()),
                "correct the TOML syntax here (see toml.io)".into(),
            );
        }
        return Err(r.errors);
    }
    let doc = doc.into_inner();
    let sections = top_level_tables(&mut r, &doc);
    let section = |name: &str| sections.get(name).cloned().unwrap_or_default();

    let node_values = section("node");
    // `node` of the wrong type is already reported; absent or empty is not.
    let no_nodes = match sections.get("node") {
        Some(values) => values.is_empty(),
        None => !doc.iter().any(|(k, _)| k.get_ref() == "node"),
    };
    if no_nodes {
        let at = r.locate("node".into(), 0..0);
        r.report(
            &at,
            ErrorKind::Missing,
            "the config has no [[node]]".into(),
            "add at least one [[node]] with name, cpus (or numa or count) and mem_mib".into(),
        );
    }
    let nodes = read_nodes(&mut r, &node_values);
    let names = NodeNames::new(nodes.iter().map(|d| d.name.clone()).collect());
    let channels: Vec<Option<ChannelConfig>> = section("channel")
        .iter()
        .enumerate()
        .map(|(i, v)| read_channel(&mut r, &names, i, v))
        .collect();
    check_unique_names(
        &mut r,
        "channel",
        channels.iter().map(|c| c.as_ref().map(|c| &c.name)),
    );
    let ipis: Vec<Option<IpiConfig>> = section("ipi")
        .iter()
        .enumerate()
        .map(|(i, v)| read_ipi(&mut r, &names, i, v))
        .collect();
    check_ipi_duplicates(&mut r, &names, &ipis);
    // Skipped (refused) tables are not read at all: they leave no errors
    // and no names behind.
    let vms: Vec<Option<VmConfig>> = section("vm")
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .map(|(i, v)| read_vm(&mut r, &names, i, v))
        .collect();
    check_unique_names(
        &mut r,
        "VM",
        vms.iter().map(|v| v.as_ref().map(|v| &v.name)),
    );
    check_vms_per_node(&mut r, &names, &vms);

    if !r.errors.is_empty() {
        return Err(r.errors);
    }
    let config = (|| {
        Some(ClusterConfig {
            file: file.into(),
            nodes: nodes.into_iter().map(|d| d.node).collect::<Option<_>>()?,
            channels: channels.into_iter().collect::<Option<_>>()?,
            ipis: ipis.into_iter().collect::<Option<_>>()?,
            vms: vms.into_iter().collect::<Option<_>>()?,
        })
    })();
    match config {
        Some(c) if !c.nodes.is_empty() => Ok(c),
        // Every path that drops a table reports why; this is a guard, not
        // an expected outcome.
        _ => {
            let at = r.locate(String::new(), 0..0);
            r.report(
                &at,
                ErrorKind::Missing,
                "the config could not be read".into(),
                "report this as an Atoll bug, with the file".into(),
            );
            Err(r.errors)
        }
    }
}

/// The top-level arrays of tables by name (`node`, ...), each cut to its
/// limit; every other top-level key or table is reported as unknown.
fn top_level_tables<'t, 'i>(
    r: &mut Reader<'_>,
    doc: &'t DeTable<'i>,
) -> BTreeMap<&'static str, Vec<&'t Spanned<DeValue<'i>>>> {
    let mut sections = BTreeMap::new();
    for (key, value) in sorted_entries(doc) {
        let name: &str = key.get_ref();
        match TOP_LEVEL.iter().find(|t| t.name == name) {
            Some(table) => {
                let (section, max, why) = (table.name, table.max, table.why);
                if let Some(mut items) = array_of_tables(r, section, value) {
                    if items.len() > max {
                        let at = r.locate(section.into(), value.span());
                        r.report(
                            &at,
                            ErrorKind::BadValue,
                            format!(
                                "the config has {} [[{section}]] tables, more than the {max} Atoll accepts",
                                items.len()
                            ),
                            format!("keep at most {max} ({why})"),
                        );
                        items.truncate(max);
                    }
                    sections.insert(section, items);
                }
            }
            None => {
                let at = r.locate(name.to_string(), key.span());
                let is_table = match value.get_ref() {
                    DeValue::Table(_) => true,
                    DeValue::Array(items) => {
                        !items.is_empty() && items.iter().all(|i| i.get_ref().is_table())
                    }
                    _ => false,
                };
                let what = if is_table { "table" } else { "key" };
                let tables = "the top-level tables are [[node]], [[channel]], [[ipi]] and [[vm]]";
                r.report(
                    &at,
                    ErrorKind::UnknownKey,
                    format!("unknown top-level {what} '{}'", shown(name)),
                    match closest(name, &TOP_LEVEL.map(|t| t.name)) {
                        Some(close) => format!("did you mean [[{close}]]? {tables}"),
                        None => tables.into(),
                    },
                );
            }
        }
    }
    sections
}

/// The tables of a top-level `[[section]]` array.
pub(super) fn array_of_tables<'t, 'i>(
    r: &mut Reader<'_>,
    section: &str,
    value: &'t Spanned<DeValue<'i>>,
) -> Option<Vec<&'t Spanned<DeValue<'i>>>> {
    match value.get_ref() {
        DeValue::Array(items) => Some(items.iter().collect()),
        other => {
            let at = r.locate(section.into(), value.span());
            r.report(
                &at,
                ErrorKind::WrongType,
                format!(
                    "{section} must be an array of tables, not {}",
                    article(other.type_str())
                ),
                format!("write each {section} as [[{section}]] (two brackets)"),
            );
            None
        }
    }
}
