//! Event decoding (JSON, NDJSON batches, MessagePack) against a real compiled schema.

use std::sync::OnceLock;

use anom_pipeline::event::{decode_all, sniff, Format};
use anom_pipeline::Pipeline;
use arbitrary::Arbitrary;

/// Every field type the schema language has, so each conversion is reached.
const DEFINITION: &str = r#"name: fuzz
key: user
event_time: at
max_event_bytes: 4096
schema:
  user:   { type: string, required: true }
  status: { type: enum, values: [OK, FAILED], required: true }
  n:      { type: int, min: 0 }
  amount: float
  ok:     bool
  at:     timestamp
  tags:   string
rules:
  - name: big
    when: amount > 10
"#;

fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| Pipeline::from_yaml(DEFINITION).expect("the fuzz schema compiles"))
}

/// Decodes `payload` in `format` and checks each event: a row has one value per field, a
/// refusal says why, no event is larger than the limit and accepted, and positions increase.
pub fn check(payload: &[u8], format: Format) {
    let p = pipeline();
    let mut last: Option<u32> = None;
    decode_all(&p.schema, payload, format, p.max_event_bytes, |d| {
        assert!(last.is_none_or(|l| d.index > l), "event positions increase");
        last = Some(d.index);
        match &d.row {
            Ok(row) => {
                assert_eq!(row.len(), p.schema.len(), "a row has every field");
                assert!(
                    d.bytes.len() <= p.max_event_bytes,
                    "oversized event accepted"
                );
            }
            Err(r) => assert!(
                !r.reason.trim().is_empty(),
                "a refusal without a reason: {r:?}"
            ),
        }
    });
}

/// Arbitrary bytes, as either format and as the sniffer would take them.
pub fn bytes(data: &[u8]) {
    check(data, Format::Json);
    check(data, Format::MsgPack);
    check(data, sniff(None, data));
}

/// A value near what the schema wants: right and wrong types, edges, deep nesting.
#[derive(Debug, Arbitrary)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Known(u8),
    List(Vec<Val>),
    Map(Vec<(String, Val)>),
}

impl Val {
    fn json(&self, depth: usize) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Val::Null => J::Null,
            Val::Bool(b) => J::Bool(*b),
            Val::Int(i) => J::from(*i),
            Val::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Val::Text(s) => J::String(s.clone()),
            Val::Known(k) => J::String(
                [
                    "OK",
                    "FAILED",
                    "2026-11-20T10:00:00Z",
                    "",
                    " ",
                    "1e309",
                    "-0",
                ][*k as usize % 7]
                    .to_string(),
            ),
            Val::List(v) if depth < 64 => J::Array(v.iter().map(|x| x.json(depth + 1)).collect()),
            Val::Map(m) if depth < 64 => J::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.json(depth + 1)))
                    .collect(),
            ),
            _ => J::Null,
        }
    }
}

/// One event: the schema's fields (and others) with chosen values.
#[derive(Debug, Arbitrary)]
pub struct Event {
    pub fields: Vec<(u8, Val)>,
    pub extra: Vec<(String, Val)>,
}

/// A batch of events, sent as JSON, NDJSON or MessagePack, with optional damage.
#[derive(Debug, Arbitrary)]
pub struct Batch {
    pub events: Vec<Event>,
    pub encoding: u8,
    /// Bytes to overwrite (position, byte) after encoding: near-valid input.
    pub damage: Vec<(u16, u8)>,
}

const NAMES: [&str; 7] = ["user", "status", "n", "amount", "ok", "at", "tags"];

pub fn structured(b: Batch) {
    let objects: Vec<serde_json::Value> = b
        .events
        .iter()
        .take(64)
        .map(|e| {
            let mut m = serde_json::Map::new();
            for (i, v) in &e.fields {
                m.insert(NAMES[*i as usize % NAMES.len()].to_string(), v.json(0));
            }
            for (k, v) in &e.extra {
                m.insert(k.clone(), v.json(0));
            }
            serde_json::Value::Object(m)
        })
        .collect();
    let (mut payload, format) = match b.encoding % 3 {
        0 => (
            objects
                .first()
                .map(|o| serde_json::to_vec(o).expect("json"))
                .unwrap_or_default(),
            Format::Json,
        ),
        1 => {
            let lines: Vec<String> = objects.iter().map(|o| o.to_string()).collect();
            (lines.join("\n").into_bytes(), Format::Json)
        }
        _ => {
            let mut out = Vec::new();
            for o in &objects {
                out.extend(rmp_serde::to_vec_named(o).expect("msgpack"));
            }
            (out, Format::MsgPack)
        }
    };
    if !payload.is_empty() {
        for (at, byte) in &b.damage {
            let i = *at as usize % payload.len();
            payload[i] = *byte;
        }
    }
    check(&payload, format);
}
