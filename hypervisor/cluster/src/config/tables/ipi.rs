//! `[[ipi]]`: which notifications one node may raise in another.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use toml::Spanned;
use toml::de::DeValue;

use super::names::NodeNames;
use super::values::read_notifications;
use crate::config::IpiConfig;
use crate::config::error::{ErrorKind, Location};
use crate::config::read::Reader;
use crate::config::schema::{IPI, IPI_FROM, IPI_NOTIFICATIONS, IPI_TO};
use crate::plan::NodeId;

pub(super) fn read_ipi(
    r: &mut Reader<'_>,
    nodes: &NodeNames,
    index: usize,
    value: &Spanned<DeValue<'_>>,
) -> Option<IpiConfig> {
    let path = format!("ipi[{index}]");
    let t = r.table(path.clone(), value, &IPI)?;
    let from = r
        .required(&t, &IPI_FROM, &path)
        .and_then(|f| r.string(&f))
        .and_then(|n| nodes.resolve(r, &n, &format!("{path} comes from")));
    let to = r
        .required(&t, &IPI_TO, &path)
        .and_then(|f| r.string(&f))
        .and_then(|n| nodes.resolve(r, &n, &format!("{path} goes to")));
    let notifications = r
        .required(&t, &IPI_NOTIFICATIONS, &path)
        .and_then(|f| read_notifications(r, &f, &path));
    if let (Some(from), Some(to)) = (&from, &to)
        && from.value == to.value
    {
        let name = nodes.name(from.value);
        r.report(
            &to.at,
            ErrorKind::BadValue,
            format!("{path} goes from node '{name}' to itself"),
            "an ipi signals another node: set `to` to a different node".into(),
        );
        return None;
    }
    Some(IpiConfig {
        from: from?,
        to: to?,
        notifications: notifications?,
        at: t.at.clone(),
    })
}

/// Several `[[ipi]]` tables for the same ordered pair merge; granting the
/// same notification twice is a mistake (two senders would think they own
/// it), so it is reported at the second grant.
pub(super) fn check_ipi_duplicates(
    r: &mut Reader<'_>,
    nodes: &NodeNames,
    ipis: &[Option<IpiConfig>],
) {
    let name = |id: NodeId| nodes.name(id);
    let mut granted: BTreeMap<(NodeId, NodeId, u8), &Location> = BTreeMap::new();
    let mut problems = Vec::new();
    for ipi in ipis.iter().flatten() {
        let pair = (ipi.from.value, ipi.to.value);
        for n in &ipi.notifications {
            match granted.get(&(pair.0, pair.1, n.value)) {
                Some(first) => problems.push((
                    n.at.clone(),
                    format!(
                        "notification {} from node '{}' to node '{}' is already granted on line {}",
                        n.value,
                        name(pair.0),
                        name(pair.1),
                        first.line
                    ),
                )),
                None => {
                    granted.insert((pair.0, pair.1, n.value), &n.at);
                }
            }
        }
    }
    for (at, message) in problems {
        r.report(
            &at,
            ErrorKind::Duplicate,
            message,
            "grant each notification once per pair of nodes".into(),
        );
    }
}
