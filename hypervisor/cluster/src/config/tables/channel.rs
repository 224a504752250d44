//! `[[channel]]`: memory shared by nodes, its size and who may map it.

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;

use toml::Spanned;
use toml::de::DeValue;

use super::names::{NodeNames, owner, read_name};
use crate::config::error::{ErrorKind, Located, shown};
use crate::config::read::{Field, Reader};
use crate::config::schema::{CHANNEL, CHANNEL_ACCESS, CHANNEL_NAME, CHANNEL_SIZE};
use crate::config::{ChannelConfig, ChannelGrant, MAX_MEM_MIB, MAX_NODES};
use crate::plan::Access;

pub(super) fn read_channel(
    r: &mut Reader<'_>,
    nodes: &NodeNames,
    index: usize,
    value: &Spanned<DeValue<'_>>,
) -> Option<ChannelConfig> {
    let path = format!("channel[{index}]");
    let t = r.table(path.clone(), value, &CHANNEL)?;
    let name = read_name(r, &t, &CHANNEL_NAME, "channel");
    let who = owner("channel", &path, name.as_ref());
    let size = r
        .required(&t, &CHANNEL_SIZE, &who)
        .and_then(|f| r.integer(&f))
        .and_then(|s| {
            let problem = if s.value == 0 {
                Some((
                    format!("{who} has size_kib = 0"),
                    "a channel needs at least one 4 KiB page: set size_kib to 4 or more, in steps of 4".to_string(),
                ))
            } else if s.value % 4 != 0 {
                let down = s.value - s.value % 4;
                let up = down.saturating_add(4);
                let hint = if down == 0 {
                    format!("use {up}")
                } else {
                    format!("use {down} or {up}")
                };
                Some((
                    format!("size_kib {} of {who} is not a multiple of 4", s.value),
                    format!("channels are made of 4 KiB pages: {hint}"),
                ))
            } else if s.value > MAX_MEM_MIB.saturating_mul(1024) {
                Some((
                    format!("size_kib {} of {who} is above Atoll's limit", s.value),
                    format!("set size_kib to {} or less", MAX_MEM_MIB.saturating_mul(1024)),
                ))
            } else {
                None
            };
            match problem {
                Some((message, fix)) => {
                    r.report(&s.at, ErrorKind::BadValue, message, fix);
                    None
                }
                None => Some(s),
            }
        });
    let access = r
        .required(&t, &CHANNEL_ACCESS, &who)
        .and_then(|f| read_access(r, nodes, &f, &who));
    Some(ChannelConfig {
        name: name?,
        size_kib: size?,
        access: access?,
        at: t.at.clone(),
    })
}

pub(super) fn read_access(
    r: &mut Reader<'_>,
    nodes: &NodeNames,
    field: &Field<'_, '_>,
    who: &str,
) -> Option<Vec<ChannelGrant>> {
    let entries = r.map(field)?;
    if entries.len() > MAX_NODES {
        r.report(
            &field.at,
            ErrorKind::BadValue,
            format!(
                "{who} gives access to {} nodes, more than the {MAX_NODES} a config has",
                entries.len()
            ),
            "name each node of the channel once".into(),
        );
        return None;
    }
    let mut grants = Vec::with_capacity(entries.len());
    let mut ok = true;
    let context = format!("{who} gives access to");
    for (node, value) in &entries {
        let access = match value.value {
            DeValue::String(s) if s == "r" => Some(Access::Read),
            DeValue::String(s) if s == "rw" => Some(Access::ReadWrite),
            DeValue::String(s) => {
                r.report(
                    &value.at,
                    ErrorKind::BadValue,
                    format!(
                        "access \"{}\" of node '{}' to {who} is neither \"r\" nor \"rw\"",
                        shown(s),
                        shown(&node.value)
                    ),
                    "write \"r\" (read-only) or \"rw\" (read-write)".into(),
                );
                None
            }
            _ => {
                // The value's example is the `access` key's.
                r.wrong_type(value, "the string \"r\" or \"rw\"");
                None
            }
        };
        let id = nodes.resolve(r, node, &context);
        match (id, access) {
            (Some(id), Some(access)) => grants.push(ChannelGrant {
                node: id,
                access: Located::new(access, value.at.clone()),
            }),
            _ => ok = false,
        }
    }
    if entries.len() < 2 {
        let message = match entries.first() {
            Some((node, _)) => format!("{who} gives access only to node '{}'", shown(&node.value)),
            None => format!("{who} gives access to no node"),
        };
        r.report(
            &field.at,
            ErrorKind::BadValue,
            message,
            "a channel connects at least two nodes: add another node to access, like `access = { db = \"rw\", log = \"r\" }`".into(),
        );
        return None;
    }
    if ok && !grants.iter().any(|g| g.access.value == Access::ReadWrite) {
        r.report(
            &field.at,
            ErrorKind::BadValue,
            format!("no node may write {who}: every access is \"r\""),
            "give the node that produces the data \"rw\"".into(),
        );
        return None;
    }
    ok.then_some(grants)
}
