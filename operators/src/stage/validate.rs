//! validate: raw events → typed rows in envelopes, routed to their key's partition.
//! Anything that does not fit the schema goes to the dead-letter subject with its reason.

use std::sync::Arc;

use crate::envelope::{Analysis, Envelope, Meta, ENVELOPE_VERSION};
use crate::event::{self, Decoded};
use crate::pipeline::Pipeline;
use crate::rejection::{RejectKind, Rejection};
use crate::runtime::{Emitter, Input, Stage};
use crate::subjects::headers;
use crate::value::Value;

pub const NAME: &str = "validate";

pub struct Validate {
    pipeline: Arc<Pipeline>,
    /// Subjects of the partitions, computed once.
    partition_subjects: Vec<String>,
}

impl Validate {
    pub fn new(pipeline: Arc<Pipeline>) -> Validate {
        let partition_subjects = (0..pipeline.partitions)
            .map(|k| pipeline.subjects.valid(k))
            .collect();
        Validate {
            pipeline,
            partition_subjects,
        }
    }

    fn envelope(
        &self,
        input: &Input<'_>,
        index: u32,
        row: Vec<Value>,
    ) -> Result<(u32, Envelope), Rejection> {
        let p = &*self.pipeline;
        let key = match &row[p.key] {
            Value::Null => {
                return Err(Rejection::new(
                    RejectKind::MissingKey,
                    format!(
                        "key field `{}` is missing or null",
                        p.schema.fields()[p.key].name
                    ),
                ))
            }
            Value::Str(s) => s.to_string(),
            Value::Timestamp(ms) => ms.to_string(),
            // Exact, not the rounded text messages use: distinct values stay distinct keys.
            Value::Float(x) => x.to_string(),
            other => other.to_string(),
        };
        let partition = partition_of(&key, p.partitions);
        let event_time = match p.event_time.map(|i| &row[i]) {
            Some(Value::Timestamp(ms)) => *ms,
            _ => input.published_us / 1000,
        };
        Ok((
            partition,
            Envelope {
                v: ENVELOPE_VERSION,
                meta: Meta {
                    pipeline: p.name.clone(),
                    version: p.version.clone(),
                    key,
                    partition,
                    event_time,
                    ingest_time_us: input.published_us,
                    origin_seq: input.stream_seq,
                    origin_index: index,
                },
                data: row,
                analysis: Analysis::default(),
                enrichment: Vec::new(),
            },
        ))
    }
}

/// The partition of a key: stable across processes, versions and machines.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

impl Stage for Validate {
    fn process(&mut self, input: &Input<'_>, out: &mut Emitter) -> Result<(), Rejection> {
        let p = &*self.pipeline;
        let format = event::sniff(input.header(headers::CONTENT_TYPE), input.payload);
        event::decode_all(
            &p.schema,
            input.payload,
            format,
            p.max_event_bytes,
            |d: Decoded<'_>| match d.row.and_then(|row| self.envelope(input, d.index, row)) {
                Ok((partition, env)) => out.emit(
                    self.partition_subjects[partition as usize].clone(),
                    format!("{}:{NAME}:{}:{}", p.name, input.stream_seq, d.index),
                    env.encode(),
                ),
                Err(rejection) => out.reject(input, &p.name, d.bytes, d.index, d.line, &rejection),
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Output;
    use crate::subjects::headers;

    fn pipeline(extra: &str) -> Arc<Pipeline> {
        Arc::new(
            Pipeline::from_yaml(&format!(
                "name: t\nkey: user\nevent_time: at\npartitions: 8\nmax_event_bytes: 200\nschema:\n  user: string\n  amount: {{ type: float, min: 0 }}\n  at: timestamp\n{extra}"
            ))
            .unwrap(),
        )
    }

    fn run(p: &Arc<Pipeline>, payload: &[u8]) -> Vec<Output> {
        let mut stage = Validate::new(p.clone());
        let input = Input {
            subject: "anom.t.in",
            payload,
            headers: None,
            stream_seq: 42,
            published_us: 1_700_000_000_000_000,
        };
        let mut out = Emitter::new(NAME, "t-validate");
        stage.process(&input, &mut out).unwrap();
        out.outputs().to_vec()
    }

    fn header(o: &Output, name: &str) -> String {
        o.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn routes_a_valid_event_to_its_keys_partition_with_a_deterministic_id() {
        let p = pipeline("");
        let out = run(
            &p,
            br#"{"user":"ana","amount":12.5,"at":"2026-11-20T10:00:00Z","extra":{"x":1}}"#,
        );
        assert_eq!(out.len(), 1);
        let k = partition_of("ana", 8);
        assert_eq!(out[0].subject, format!("anom.t.valid.{k}"));
        assert_eq!(out[0].msg_id, "t:validate:42:0");
        let env = Envelope::decode(&out[0].payload).unwrap();
        assert_eq!(env.meta.key, "ana");
        assert_eq!(env.meta.partition, k);
        assert_eq!(env.meta.event_time, 1_795_168_800_000);
        assert_eq!(env.meta.ingest_time_us, 1_700_000_000_000_000);
        assert_eq!(env.data[1], Value::Float(12.5));
    }

    #[test]
    fn the_same_key_always_lands_in_the_same_partition_and_keys_spread() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            let key = format!("user-{i}");
            assert_eq!(partition_of(&key, 8), partition_of(&key, 8));
            counts[partition_of(&key, 8) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn without_an_event_time_the_ingest_time_is_used_and_a_null_key_is_refused() {
        let p = pipeline("");
        let out = run(&p, br#"{"user":"ana","amount":1}"#);
        let env = Envelope::decode(&out[0].payload).unwrap();
        assert_eq!(env.meta.event_time, 1_700_000_000_000);
        let out = run(&p, br#"{"amount":1}"#);
        assert_eq!(out[0].subject, "anom.t.dlq");
        assert_eq!(header(&out[0], headers::REASON_KIND), "missing_key");
        assert_eq!(
            header(&out[0], headers::REASON),
            "key field `user` is missing or null"
        );
    }

    #[test]
    fn an_ndjson_batch_keeps_good_lines_and_dead_letters_bad_ones_alone() {
        let p = pipeline("");
        let out = run(
            &p,
            b"{\"user\":\"a\",\"amount\":1}\n\n{\"user\":\"b\",\"amount\":-1}\n{\"user\":\"c\"}\n",
        );
        assert_eq!(out.len(), 3);
        assert!(out[0].subject.starts_with("anom.t.valid."));
        assert_eq!(out[1].subject, "anom.t.dlq");
        assert_eq!(header(&out[1], headers::SOURCE_LINE), "3");
        assert_eq!(&out[1].payload[..], b"{\"user\":\"b\",\"amount\":-1}");
        assert_eq!(out[1].msg_id, "t-validate:dlq:42:1");
        assert_eq!(out[2].msg_id, "t:validate:42:2");
    }

    #[test]
    fn messagepack_events_are_decoded_like_json() {
        let p = pipeline("");
        let mut payload = rmp_serde::to_vec_named(
            &serde_json::json!({"user": "ana", "amount": 3, "at": 1_700_000_000_123i64}),
        )
        .unwrap();
        payload.extend(
            rmp_serde::to_vec_named(&serde_json::json!({"user": "ben", "amount": 4.5})).unwrap(),
        );
        let out = run(&p, &payload);
        assert_eq!(out.len(), 2);
        let a = Envelope::decode(&out[0].payload).unwrap();
        assert_eq!(a.meta.event_time, 1_700_000_000_123);
        assert_eq!(a.data[1], Value::Float(3.0));
        assert_eq!(Envelope::decode(&out[1].payload).unwrap().meta.key, "ben");
    }

    #[test]
    fn unknown_fields_are_ignored_or_rejected_as_declared() {
        let p = pipeline("unknown_fields: reject\n");
        let out = run(&p, br#"{"user":"ana","amout":1}"#);
        assert_eq!(header(&out[0], headers::REASON_KIND), "schema");
        assert!(header(&out[0], headers::REASON)
            .contains("unknown field `amout`, did you mean `amount`?"));
    }

    #[test]
    fn nothing_a_publisher_sends_makes_validate_panic() {
        let p = pipeline("");
        for payload in [
            &b""[..],
            b"   ",
            b"[1,2,3]",
            b"{\"user\": [1]}",
            b"{\"user\": \"a\", \"at\": \"yesterday\"}",
            b"{\"user\": \"a\", \"amount\": 1e400}",
            b"\x81\xa4user\xc0",
            b"\xde\xff\xff",
            b"null",
            b"{\"user\": \"a\"}{\"user\": \"b\"}",
        ] {
            let out = run(&p, payload);
            assert!(!out.is_empty(), "{payload:?} produced nothing");
        }
        let big = format!("{{\"user\":\"{}\"}}", "x".repeat(500));
        let out = run(&p, big.as_bytes());
        assert_eq!(header(&out[0], headers::REASON_KIND), "too_large");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever bytes arrive, validate answers every event: each input yields at least one
        /// output (a valid envelope or a dead letter), and never panics.
        #[test]
        fn every_input_is_either_forwarded_or_dead_lettered(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let p = Arc::new(Pipeline::from_yaml("name: t\nkey: k\nschema:\n  k: string\n  n: int\n").unwrap());
            let mut stage = Validate::new(p);
            let input = Input { subject: "anom.t.in", payload: &payload, headers: None, stream_seq: 1, published_us: 0 };
            let mut out = Emitter::new(NAME, "t-validate");
            stage.process(&input, &mut out).unwrap();
            prop_assert!(!out.outputs().is_empty());
        }
    }
}
