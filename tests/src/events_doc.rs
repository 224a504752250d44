//! hypervisor/EVENTS.md as data: which events exist and which fields each
//! has, so tests can check that everything the hypervisor prints is
//! documented (the file is the interface users' scripts rely on).

use crate::event::Event;
use std::collections::{BTreeMap, BTreeSet};

/// Event name -> documented field names (`ev` itself is implicit).
#[derive(Debug, Default)]
pub struct EventsDoc {
    pub events: BTreeMap<String, BTreeSet<String>>,
}

impl EventsDoc {
    /// Reads hypervisor/EVENTS.md from the workspace.
    pub fn load() -> std::io::Result<Self> {
        let path = crate::build::workspace_root().join("hypervisor/EVENTS.md");
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// Parses the document: an event is a `## \`name\`` heading, its fields
    /// the first cells of the table rows under it that hold a `\`name\``.
    pub fn parse(markdown: &str) -> Self {
        let mut doc = EventsDoc::default();
        let mut current: Option<String> = None;
        for line in markdown.lines() {
            if let Some(heading) = line.strip_prefix("## ") {
                current = backticked(heading).map(str::to_string);
                if let Some(name) = &current {
                    doc.events.entry(name.clone()).or_default();
                }
            } else if let (Some(name), Some(row)) = (&current, line.strip_prefix('|')) {
                let first_cell = row.split('|').next().unwrap_or("");
                if let (Some(field), Some(fields)) =
                    (backticked(first_cell), doc.events.get_mut(name))
                {
                    fields.insert(field.to_string());
                }
            }
        }
        doc
    }

    /// What about `event` the document does not cover, if anything.
    pub fn undocumented(&self, event: &Event) -> Option<String> {
        let Some(fields) = self.events.get(&event.name) else {
            return Some(format!(
                "event '{}' is not in hypervisor/EVENTS.md",
                event.name
            ));
        };
        let missing: Vec<&str> = event
            .fields
            .keys()
            .map(String::as_str)
            // `vm` is what a consumer adds to a guest's event (the VM's
            // console prefix); hypervisor/EVENTS.md states the rule once.
            .filter(|k| *k != "ev" && *k != "vm" && !fields.contains(*k))
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "event '{}' has fields {missing:?} that hypervisor/EVENTS.md does not list",
                event.name
            )
        })
    }
}

/// The text between the first pair of backticks.
fn backticked(s: &str) -> Option<&str> {
    let rest = s.split_once('`')?.1;
    Some(rest.split_once('`')?.0).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events_and_fields() {
        let doc = EventsDoc::parse(
            "# T\n## `boot`\ntext\n| field | type |\n|---|---|\n| `cpus` | integer |\n| `vmx` | bool |\n## Other\n| `x` | y |\n## `poweroff`\n| `status` | integer |\n",
        );
        assert_eq!(doc.events.len(), 2);
        assert!(doc.events["boot"].contains("cpus") && doc.events["boot"].contains("vmx"));
        assert!(!doc.events["boot"].contains("x"));
        let ok = Event::parse("@ev {\"ev\":\"boot\",\"cpus\":1}")
            .unwrap()
            .unwrap();
        assert_eq!(doc.undocumented(&ok), None);
        let extra = Event::parse("@ev {\"ev\":\"boot\",\"cpus\":1,\"new\":2}")
            .unwrap()
            .unwrap();
        assert!(doc.undocumented(&extra).unwrap().contains("new"));
        let unknown = Event::parse("@ev {\"ev\":\"mystery\"}").unwrap().unwrap();
        assert!(doc.undocumented(&unknown).unwrap().contains("mystery"));
    }

    #[test]
    fn the_real_document_lists_the_core_events() {
        let doc = EventsDoc::load().unwrap();
        for name in ["boot", "panic", "poweroff", "error", "config", "cpu_found"] {
            assert!(
                doc.events.contains_key(name),
                "hypervisor/EVENTS.md lacks {name}"
            );
        }
        assert!(doc.events["panic"].contains("line"));
    }
}
