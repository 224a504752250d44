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
    /// malformed event line. A guest's event arrives as `[vm] @ev {json}`
    /// (its VM's console prefix) and gets the VM's name as field `vm`.
    pub fn parse(line: &str) -> Option<Result<Event, BadEvent>> {
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some((vm, json)) = guest_event(line) {
            return Some(Self::parse_json(line, json).map(|mut event| {
                event.fields.insert("vm".into(), Value::String(vm.into()));
                event
            }));
        }
        let json = line.strip_prefix(PREFIX)?;
        Some(Self::parse_json(line, json))
    }

    fn parse_json(line: &str, json: &str) -> Result<Event, BadEvent> {
        let bad = |reason: String| BadEvent {
            line: line.to_string(),
            reason,
        };
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(fields)) => match fields.get("ev") {
                Some(Value::String(name)) => Ok(Event {
                    name: name.clone(),
                    fields,
                }),
                _ => Err(bad("no string field \"ev\"".into())),
            },
            Ok(_) => Err(bad("not a JSON object".into())),
            Err(e) => Err(bad(e.to_string())),
        }
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

    /// A hex-string field (`"0x1f"`), as a number.
    pub fn hex(&self, key: &str) -> Option<u64> {
        parse_hex(self.str(key)?)
    }

    /// An array-of-integers field.
    pub fn u64_list(&self, key: &str) -> Option<Vec<u64>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect()
    }

    /// An array of `"0xSTART-0xEND"` range strings, as `(start, end)` pairs.
    pub fn ranges(&self, key: &str) -> Option<Vec<(u64, u64)>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(|v| parse_range(v.as_str()?))
            .collect()
    }

    /// A `"0xSTART-0xEND"` range-string field.
    pub fn range(&self, key: &str) -> Option<(u64, u64)> {
        parse_range(self.str(key)?)
    }
}

/// `[vm] @ev {json}` -> (vm, json).
fn guest_event(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (vm, rest) = rest.split_once("] ")?;
    let json = rest.strip_prefix(PREFIX).filter(|j| j.starts_with('{'))?;
    let plain = !vm.is_empty()
        && vm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    plain.then_some((vm, json))
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

fn parse_range(s: &str) -> Option<(u64, u64)> {
    let (start, end) = s.split_once('-')?;
    Some((parse_hex(start)?, parse_hex(end)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hex_lists_and_ranges() {
        let e = Event::parse(
            "@ev {\"ev\":\"node_up\",\"addr\":\"0x1f\",\"cpus\":[0,1],\"mem\":[\"0x100000-0x200000\"],\"kernel\":\"0x0-0x10\"}",
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.hex("addr"), Some(0x1f));
        assert_eq!(e.u64_list("cpus"), Some(vec![0, 1]));
        assert_eq!(e.ranges("mem"), Some(vec![(0x10_0000, 0x20_0000)]));
        assert_eq!(e.range("kernel"), Some((0, 0x10)));
        assert_eq!(e.hex("cpus"), None);
    }

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
    fn guest_events_carry_their_vm() {
        let e = Event::parse("[web-1] @ev {\"ev\":\"guest_hello\",\"cpus\":2}")
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.name.as_str(), e.str("vm")),
            ("guest_hello", Some("web-1"))
        );
        assert!(Event::parse("[web] hello @ev {}").is_none());
        assert!(Event::parse("[INFO] @ev is mentioned").is_none());
        assert!(Event::parse("[web] @ev {broken").unwrap().is_err());
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
