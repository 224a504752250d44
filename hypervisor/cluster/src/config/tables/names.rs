//! Names: their spelling, their uniqueness within a kind, and references
//! from one table to a node by name.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::config::error::{ErrorKind, Located, Location, shown};
use crate::config::read::{Reader, Table, suggest};
use crate::config::schema::Key;
use crate::config::{MAX_LISTED, MAX_NAME_LEN};
use crate::plan::NodeId;

/// Reports a name that is empty, too long or has characters other than
/// `a-z 0-9 _ -`. The name is still used to resolve references, so one
/// bad character does not also make every reference an error.
pub(super) fn check_name(r: &mut Reader<'_>, name: &Located<String>, what: &str) {
    let n = &name.value;
    let ok_chars = n
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    let problem = if n.is_empty() {
        Some(format!("the {what} name is empty"))
    } else if n.chars().count() > MAX_NAME_LEN {
        Some(format!(
            "the {what} name '{}' is longer than {MAX_NAME_LEN} characters",
            shown(n)
        ))
    } else if !ok_chars {
        Some(format!(
            "the {what} name '{}' has characters other than a-z, 0-9, '_' and '-'",
            shown(n)
        ))
    } else {
        None
    };
    if let Some(message) = problem {
        let mut example: String = n
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(MAX_NAME_LEN)
            .collect();
        if example.is_empty() {
            example = "db".into();
        }
        r.report(
            &name.at,
            ErrorKind::BadValue,
            message,
            format!(
                "use 1 to {MAX_NAME_LEN} lowercase letters, digits, '_' and '-', like \"{example}\""
            ),
        );
    }
}

/// `owner` in messages: `node 'db'` once the name is known, else the path.
pub(super) fn owner(kind: &str, path: &str, name: Option<&Located<String>>) -> String {
    match name {
        Some(n) => format!("{kind} '{}'", shown(&n.value)),
        None => path.into(),
    }
}

pub(super) fn read_name(
    r: &mut Reader<'_>,
    t: &Table<'_, '_>,
    key: &'static Key,
    kind: &str,
) -> Option<Located<String>> {
    let name = r
        .required(t, key, &t.path.clone())
        .and_then(|f| r.string(&f))?;
    check_name(r, &name, kind);
    Some(name)
}

/// Names of the nodes that have readable names, for resolving references.
pub(super) struct NodeNames {
    names: Vec<Option<Located<String>>>,
    /// Name to node index (the first node of a name), for lookups in
    /// logarithmic time.
    index: BTreeMap<String, usize>,
}

impl NodeNames {
    pub(super) fn new(names: Vec<Option<Located<String>>>) -> Self {
        let mut index = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            if let Some(n) = n {
                index.entry(n.value.clone()).or_insert(i);
            }
        }
        Self { names, index }
    }

    /// The name of node `id`, shown for a message; `?` if unreadable.
    pub(super) fn name(&self, id: NodeId) -> String {
        self.names
            .get(usize::from(id.0))
            .and_then(Option::as_ref)
            .map_or_else(|| "?".to_string(), |n| shown(&n.value))
    }

    /// Every node's name is known: an unresolved reference is then a real
    /// error, not the echo of a node whose name could not be read.
    pub(super) fn complete(&self) -> bool {
        self.names.iter().all(Option::is_some)
    }

    /// The node `name` refers to. `context` starts the message, e.g.
    /// "channel 'wal' gives access to".
    pub(super) fn resolve(
        &self,
        r: &mut Reader<'_>,
        name: &Located<String>,
        context: &str,
    ) -> Option<Located<NodeId>> {
        let found = self.index.get(&name.value).copied();
        if let Some(id) = found.and_then(|i| u16::try_from(i).ok()) {
            return Some(Located::new(NodeId(id), name.at.clone()));
        }
        if self.complete() {
            let known: Vec<&str> = self
                .names
                .iter()
                .flatten()
                .map(|n| n.value.as_str())
                .collect();
            let fix = if known.is_empty() {
                format!("add a [[node]] named '{}'", shown(&name.value))
            } else {
                suggest(&name.value, &known, "the nodes", MAX_LISTED)
            };
            r.report(
                &name.at,
                ErrorKind::UnknownNode,
                format!(
                    "{context} node '{}', which does not exist",
                    shown(&name.value)
                ),
                fix,
            );
        }
        None
    }
}

/// Names unique within one kind (nodes, channels, VMs): the second use is
/// the error.
pub(super) fn check_unique_names<'a>(
    r: &mut Reader<'_>,
    kind: &str,
    names: impl Iterator<Item = Option<&'a Located<String>>>,
) {
    let mut seen: BTreeMap<&str, &Location> = BTreeMap::new();
    let mut problems = Vec::new();
    for name in names.flatten() {
        match seen.get(name.value.as_str()) {
            Some(first) => problems.push((
                name.at.clone(),
                format!(
                    "{kind} name '{}' is already used by {} on line {}",
                    shown(&name.value),
                    first.key.trim_end_matches(".name"),
                    first.line
                ),
            )),
            None => {
                seen.insert(&name.value, &name.at);
            }
        }
    }
    for (at, message) in problems {
        r.report(
            &at,
            ErrorKind::Duplicate,
            message,
            format!("give each {kind} its own name"),
        );
    }
}
