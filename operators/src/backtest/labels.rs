//! What the user says was anomalous: a field of the events (true for anomalous events), or
//! a file of labelled time windows, optionally per key.
//!
//! A windows file is JSON, either a list or `{"windows": [...]}`, each window
//! `{"start": T, "end": T, "key": "card-17", "label": "card testing"}` where `T` is RFC 3339
//! or epoch milliseconds and `key`/`label` are optional (no key: every key).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::BacktestError;

/// A labelled anomaly window, in event time (epoch ms, both ends inclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub start_ms: i64,
    pub end_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl Window {
    pub fn covers(&self, key: &str, t: i64) -> bool {
        self.key.as_deref().is_none_or(|k| k == key) && self.start_ms <= t && t <= self.end_ms
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Labels {
    /// Events whose field is true (or 1, "true", "yes") are anomalous; windows are the runs
    /// of such events per key.
    Field(String),
    Windows(Vec<Window>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum File {
    List(Vec<WindowDef>),
    Wrapped { windows: Vec<WindowDef> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowDef {
    start: serde_json::Value,
    end: serde_json::Value,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    label: Option<String>,
}

impl Labels {
    /// Parses a windows file; errors name the window and what was expected.
    pub fn windows_from_json(text: &str) -> Result<Labels, BacktestError> {
        let file: File = serde_json::from_str(text).map_err(|e| {
            BacktestError::Labels(format!(
                "expected a JSON list of {{start, end, key?, label?}} (or {{\"windows\": [...]}}): {e}"
            ))
        })?;
        let defs = match file {
            File::List(w) | File::Wrapped { windows: w } => w,
        };
        let mut windows = Vec::with_capacity(defs.len());
        for (i, d) in defs.into_iter().enumerate() {
            let at = |what: &str, v: &serde_json::Value| {
                time_ms(v).ok_or_else(|| {
                    BacktestError::Labels(format!(
                        "window {}: `{what}` must be an RFC 3339 time or epoch milliseconds, found {v}",
                        i + 1
                    ))
                })
            };
            let (start_ms, end_ms) = (at("start", &d.start)?, at("end", &d.end)?);
            if end_ms < start_ms {
                return Err(BacktestError::Labels(format!(
                    "window {}: ends ({}) before it starts ({})",
                    i + 1,
                    d.end,
                    d.start
                )));
            }
            windows.push(Window {
                key: d.key,
                start_ms,
                end_ms,
                label: d.label,
            });
        }
        Ok(Labels::Windows(windows))
    }
}

fn time_ms(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_millisecond()),
        _ => None,
    }
}

/// The events a labels field marks anomalous, by origin (stream sequence, line), read from
/// the raw events themselves: the field need not be in the pipeline's schema.
#[derive(Debug, Default)]
pub struct Marked {
    pub origins: HashSet<(u64, u32)>,
}

impl Marked {
    /// Reads `field` from one raw input (a JSON object, or NDJSON lines).
    pub fn read(&mut self, field: &str, seq: u64, payload: &[u8]) {
        let mut mark = |index: u32, bytes: &[u8]| {
            #[derive(Deserialize)]
            struct Any(serde_json::Map<String, serde_json::Value>);
            if let Ok(Any(obj)) = serde_json::from_slice::<Any>(bytes) {
                if obj.get(field).is_some_and(truthy) {
                    self.origins.insert((seq, index));
                }
            }
        };
        let trimmed = payload.trim_ascii();
        if trimmed.contains(&b'\n') {
            for (i, line) in trimmed
                .split(|b| *b == b'\n')
                .filter(|l| !l.trim_ascii().is_empty())
                .enumerate()
            {
                mark(i as u32, line);
            }
        } else {
            mark(0, trimmed);
        }
    }
}

fn truthy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        serde_json::Value::String(s) => {
            matches!(
                s.to_ascii_lowercase().as_str(),
                "true" | "yes" | "1" | "anomaly"
            )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_windows_file_takes_rfc3339_or_milliseconds_and_names_the_bad_window() {
        let l = Labels::windows_from_json(
            r#"{"windows": [{"start": "2026-01-01T00:00:00Z", "end": 1767225660000, "key": "a"}]}"#,
        )
        .unwrap();
        assert_eq!(
            l,
            Labels::Windows(vec![Window {
                key: Some("a".into()),
                start_ms: 1_767_225_600_000,
                end_ms: 1_767_225_660_000,
                label: None
            }])
        );
        let e = Labels::windows_from_json(
            r#"[{"start": 1, "end": 2}, {"start": "yesterday", "end": 5}]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("window 2: `start` must be an RFC 3339 time"),
            "{e}"
        );
        let e = Labels::windows_from_json(r#"[{"start": 9, "end": 2}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("window 1: ends"), "{e}");
        let e = Labels::windows_from_json(r#"{"start": 9}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a JSON list"), "{e}");
    }

    #[test]
    fn a_labels_field_marks_objects_and_ndjson_lines_by_origin() {
        let mut m = Marked::default();
        m.read("fraud", 7, br#"{"fraud": true, "x": 1}"#);
        m.read("fraud", 8, br#"{"fraud": false}"#);
        m.read(
            "fraud",
            9,
            b"{\"fraud\": 0}\n{\"fraud\": \"yes\"}\n{\"fraud\": 1}\n",
        );
        let mut got: Vec<_> = m.origins.into_iter().collect();
        got.sort();
        assert_eq!(got, vec![(7, 0), (9, 1), (9, 2)]);
    }
}
