//! Decoding published events (JSON, NDJSON batches, MessagePack) straight into schema rows.
//!
//! One schema-driven serde visitor serves both formats: keys are matched to field indexes
//! without allocating, each value is converted to its field's type as it is read, so an
//! event is parsed and type-checked in a single pass.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::definition::UnknownFields;
use crate::rejection::{RejectKind, Rejection};
use crate::schema::{Field, Raw, Schema};
use anom_lang::value::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    MsgPack,
}

/// The payload's format: from its `Content-Type` when given, else from its first byte.
pub fn sniff(content_type: Option<&str>, payload: &[u8]) -> Format {
    if let Some(ct) = content_type {
        let ct = ct.to_ascii_lowercase();
        if ct.contains("msgpack") || ct.contains("messagepack") {
            return Format::MsgPack;
        }
        if ct.contains("json") {
            return Format::Json;
        }
    }
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        // fixmap, map16, map32, fixarray, array16, array32: MessagePack containers.
        Some(0x80..=0x9f | 0xdc..=0xdf) => Format::MsgPack,
        _ => Format::Json,
    }
}

/// One event of a payload: its bytes, where it was, and its row or why it was refused.
pub struct Decoded<'a> {
    /// Position among the payload's events (0-based).
    pub index: u32,
    /// Line in an NDJSON batch (1-based), when the payload had several lines.
    pub line: Option<usize>,
    pub bytes: &'a [u8],
    pub row: Result<Vec<Value>, Rejection>,
}

/// Decodes every event of a payload, calling `each` in order.
pub fn decode_all<'a>(
    schema: &Schema,
    payload: &'a [u8],
    format: Format,
    max_event_bytes: usize,
    mut each: impl FnMut(Decoded<'a>),
) {
    match format {
        Format::Json => {
            let body = trim(payload);
            let multiline = body.contains(&b'\n');
            let mut index = 0u32;
            for (n, line) in body.split(|b| *b == b'\n').enumerate() {
                let bytes = trim(line);
                if bytes.is_empty() {
                    continue;
                }
                let row = if bytes.len() > max_event_bytes {
                    Err(too_large(bytes.len(), max_event_bytes))
                } else {
                    decode_json_at(schema, bytes, n + 1)
                };
                each(Decoded {
                    index,
                    line: multiline.then_some(n + 1),
                    bytes,
                    row,
                });
                index += 1;
            }
            if index == 0 {
                each(Decoded {
                    index: 0,
                    line: None,
                    bytes: payload,
                    row: Err(Rejection::new(
                        RejectKind::Decode,
                        "empty message: expected a JSON object or MessagePack map",
                    )),
                });
            }
        }
        Format::MsgPack => {
            // Several maps may be concatenated in one message; after a malformed one the rest
            // cannot be split reliably, so it is refused as a whole.
            let mut rest: &'a [u8] = payload;
            let mut index = 0u32;
            while !rest.is_empty() {
                let before = rest;
                let mut cursor: &[u8] = rest;
                let result = {
                    let mut de = rmp_serde::Deserializer::new(&mut cursor);
                    RowSeed { schema }.deserialize(&mut de)
                };
                let used = before.len() - cursor.len();
                match result {
                    Ok(row) => {
                        let bytes = &before[..used];
                        let row = if bytes.len() > max_event_bytes {
                            Err(too_large(bytes.len(), max_event_bytes))
                        } else {
                            finish(schema, row)
                        };
                        each(Decoded {
                            index,
                            line: None,
                            bytes,
                            row,
                        });
                        rest = &before[used..];
                    }
                    Err(e) => {
                        // Well-formed MessagePack of the wrong shape (an array, a string
                        // where a number belongs) is a schema fault, as it is in JSON.
                        let row = match e {
                            rmp_serde::decode::Error::Syntax(m) => {
                                Rejection::new(RejectKind::Schema, m)
                            }
                            e => Rejection::new(
                                RejectKind::Decode,
                                format!("invalid MessagePack event: {e}"),
                            ),
                        };
                        each(Decoded {
                            index,
                            line: None,
                            bytes: before,
                            row: Err(row),
                        });
                        rest = &[];
                    }
                }
                index += 1;
            }
        }
    }
}

fn too_large(len: usize, max: usize) -> Rejection {
    Rejection::new(
        RejectKind::TooLarge,
        format!("event is {len} bytes, larger than the pipeline's max_event_bytes ({max})"),
    )
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Decodes one JSON event into a row.
pub fn decode_json(schema: &Schema, bytes: &[u8]) -> Result<Vec<Value>, Rejection> {
    decode_json_at(schema, bytes, 1)
}

/// Decodes one JSON event that starts on `first_line` of its payload (an NDJSON batch's
/// line), so that a located reason names the payload's line, not the event's.
pub fn decode_json_at(
    schema: &Schema,
    bytes: &[u8],
    first_line: usize,
) -> Result<Vec<Value>, Rejection> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let row = RowSeed { schema }
        .deserialize(&mut de)
        .and_then(|row| de.end().map(|_| row))
        .map_err(|e| {
            let kind = if e.is_data() {
                RejectKind::Schema
            } else {
                RejectKind::Decode
            };
            let what = if e.is_data() { "" } else { "malformed JSON: " };
            let text = e.to_string();
            let at = format!(" at line {} column {}", e.line(), e.column());
            let reason = match text.strip_suffix(&at) {
                Some(message) if first_line > 1 => format!(
                    "{what}{message} at line {} column {}",
                    first_line + e.line() - 1,
                    e.column()
                ),
                _ => format!("{what}{text}"),
            };
            Rejection::new(kind, reason)
        })?;
    finish(schema, row)
}

fn finish(schema: &Schema, mut row: Vec<Value>) -> Result<Vec<Value>, Rejection> {
    schema
        .finish_row(&mut row)
        .map_err(|m| Rejection::new(RejectKind::Schema, m))?;
    Ok(row)
}

struct RowSeed<'s> {
    schema: &'s Schema,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Vec<Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Value>, D::Error> {
        d.deserialize_any(RowVisitor {
            schema: self.schema,
        })
    }
}

struct RowVisitor<'s> {
    schema: &'s Schema,
}

impl<'de> Visitor<'de> for RowVisitor<'_> {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Value>, A::Error> {
        let mut row = vec![Value::Null; self.schema.len()];
        while let Some(key) = map.next_key_seed(KeySeed {
            schema: self.schema,
        })? {
            match key {
                Key::Field(i) => {
                    let field = self
                        .schema
                        .field(i)
                        .ok_or_else(|| de::Error::custom("field index out of range"))?;
                    row[i] = map.next_value_seed(ValueSeed { field })?;
                }
                Key::Unknown(name) => {
                    if self.schema.unknown_fields == UnknownFields::Reject {
                        let names: Vec<&str> = self
                            .schema
                            .fields()
                            .iter()
                            .map(|f| f.name.as_str())
                            .collect();
                        return Err(de::Error::custom(format!(
                            "unknown field `{name}`{}",
                            anom_lang::suggest::did_you_mean(&name, names.iter().copied())
                        )));
                    }
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(row)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Vec<Value>, A::Error> {
        Err(de::Error::custom(
            "expected an event object, found an array; send batches as NDJSON (one object per line)",
        ))
    }
}

enum Key {
    Field(usize),
    /// The name is only kept when it will be reported.
    Unknown(String),
}

struct KeySeed<'s> {
    schema: &'s Schema,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match self.schema.index_of(v) {
            Some(i) => Key::Field(i),
            None if self.schema.unknown_fields == UnknownFields::Reject => {
                Key::Unknown(v.to_string())
            }
            None => Key::Unknown(String::new()),
        })
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Key, E> {
        match std::str::from_utf8(v) {
            Ok(s) => self.visit_str(s),
            Err(_) => Err(E::custom("a field name is not valid UTF-8")),
        }
    }
}

struct ValueSeed<'f> {
    field: &'f Field,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "a {} for field `{}`",
            self.field.ty.name(),
            self.field.name
        )
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.field.accept(Raw::Bool(v)).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.field.accept(Raw::Int(v)).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.field.accept(Raw::UInt(v)).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.field.accept(Raw::Float(v)).map_err(E::custom)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.field.accept(Raw::Str(v)).map_err(E::custom)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Value, E> {
        self.field
            .accept(Raw::Nested("binary data"))
            .map_err(E::custom)
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        self.field
            .accept(Raw::Nested("an object"))
            .map_err(de::Error::custom)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        self.field
            .accept(Raw::Nested("an array"))
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_line_of_a_batch_is_located_in_the_batch() {
        let p = crate::Pipeline::from_yaml("name: f\nkey: k\nschema:\n  k: string\n  n: int\n")
            .unwrap();
        let mut reasons = Vec::new();
        let batch = b"{\"k\":\"a\",\"n\":1}\n\n{\"k\":\"b\",\"n\":\"x\"}\n{\"k\":";
        decode_all(&p.schema, batch, Format::Json, 1024, |d| {
            if let Err(r) = d.row {
                reasons.push((d.line, r.reason));
            }
        });
        assert_eq!(
            reasons,
            [
                (
                    Some(3),
                    "field `n`: expected int, found string \"x\" at line 3 column 16".to_string()
                ),
                (
                    Some(4),
                    "malformed JSON: EOF while parsing a value at line 4 column 5".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_decimal_reads_as_the_nearest_float_exactly() {
        // serde_json's default float parser may be one unit in the last place off; the
        // workspace turns on its `float_roundtrip` (the CSV fuzz target found 6.666e26 read as
        // 6.665999999999999e26), so a threshold compares against the number that was sent.
        let p = crate::Pipeline::from_yaml("name: f\nkey: k\nschema:\n  k: string\n  x: float\n")
            .unwrap();
        let x = p.schema.index_of("x").unwrap();
        for text in [
            "6.666e26",
            "666600000000000000000000000",
            "0.1",
            "2.2250738585072014e-308",
            "1.7976931348623157e308",
            "9007199254740993.0",
        ] {
            let row =
                decode_json(&p.schema, format!(r#"{{"k":"a","x":{text}}}"#).as_bytes()).unwrap();
            assert_eq!(row[x], Value::Float(text.parse::<f64>().unwrap()), "{text}");
        }
    }
}
