//! Console event lines: `@ev {json}` (hypervisor/EVENTS.md).

use serde_json::{Map, Value};

/// The prefix of an event line.
pub const PREFIX: &str = "@ev ";

/// One parsed event: its name (`ev`) and all its fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub name: String,
    pub fields: Map<String, Value>,
}

/// Why a line that starts with [`PREFIX`] is not a valid event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEvent {
    pub line: String,
    pub reason: String,
}

impl Event {
    /// Parses a console line: `None` for a human line, `Some(Err)` for a
    /// malformed event line.
    pub fn parse(line: &str) -> Option<Result<Event, BadEvent>> {
        let json = line.trim_end_matches(['\r', '\n']).strip_prefix(PREFIX)?;
        let bad = |reason: String| BadEvent {
            line: line.to_string(),
            reason,
        };
        Some(match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(fields)) => match fields.get("ev") {
                Some(Value::String(name)) => Ok(Event {
                    name: name.clone(),
                    fields,
                }),
                _ => Err(bad("no string field \"ev\"".into())),
            },
            Ok(_) => Err(bad("not a JSON object".into())),
            Err(e) => Err(bad(e.to_string())),
        })
    }

    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// An integer field.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// A boolean field.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_lines_and_skips_human_lines() {
        let e = Event::parse("@ev {\"ev\":\"boot\",\"cpus\":2,\"vmx\":true}\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(e.name, "boot");
        assert_eq!(e.u64("cpus"), Some(2));
        assert_eq!(e.bool("vmx"), Some(true));
        assert_eq!(e.str("cpus"), None);
        assert!(Event::parse("[INFO] hello").is_none());
        assert!(
            Event::parse(" @ev {}").is_none(),
            "events start at the line start"
        );
    }

    #[test]
    fn reports_malformed_event_lines() {
        for line in [
            "@ev {\"ev\":",
            "@ev [1,2]",
            "@ev {\"cpus\":2}",
            "@ev {\"ev\":3}",
        ] {
            let err = Event::parse(line).unwrap().unwrap_err();
            assert_eq!(err.line, line);
            assert!(!err.reason.is_empty());
        }
    }
}
