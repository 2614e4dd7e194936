//! validate: raw events → typed rows in envelopes, routed to their key's partition.
//! Anything that does not fit the schema goes to the dead-letter subject with its reason.
//!
//! A pipeline with derived fields (UDFs, see [`anom_udf`]) holds its valid events until the
//! end of the batch, computes each derived field with one plugin call for all of them, and
//! dead-letters the events a UDF failed on.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use anom_lang::value::Value;
use anom_pipeline::envelope::{Analysis, Envelope, Meta, ENVELOPE_VERSION};
use anom_pipeline::event::{self, Decoded};
use anom_pipeline::rejection::{RejectKind, Rejection};
use anom_pipeline::subjects::headers;
use anom_pipeline::Pipeline;
use anom_runtime::{Emitter, Input, Stage};

pub const NAME: &str = anom_pipeline::unit::names::VALIDATE;

pub struct Validate {
    pipeline: Arc<Pipeline>,
    /// Subjects of the partitions, computed once.
    partition_subjects: Vec<String>,
    /// Valid events waiting for their derived fields, in input order.
    pending: Vec<Pending>,
}

/// An event held until `end_batch`, with what is needed to dead-letter it alone.
struct Pending {
    subject: Arc<str>,
    stream_seq: u64,
    /// The whole input, shared by its events.
    payload: Bytes,
    /// This event's bytes in `payload`.
    range: Range<usize>,
    index: u32,
    line: Option<usize>,
    env: Envelope,
}

impl Validate {
    pub fn new(pipeline: Arc<Pipeline>) -> Validate {
        let partition_subjects = (0..pipeline.partitions)
            .map(|k| pipeline.subjects.valid(k))
            .collect();
        Validate {
            pipeline,
            partition_subjects,
            pending: Vec::new(),
        }
    }

    fn msg_id(&self, seq: u64, index: u32) -> String {
        format!("{}:{NAME}:{seq}:{index}", self.pipeline.name)
    }

    /// Computes every derived field of the pending events, one UDF call per derive for all of
    /// them; returns why each event failed, if it did.
    fn derive(&mut self) -> Vec<Option<Rejection>> {
        let p = &*self.pipeline;
        let pending = &mut self.pending;
        let mut failed: Vec<Option<Rejection>> = vec![None; pending.len()];
        for d in &p.derives {
            let alive: Vec<usize> = (0..pending.len())
                .filter(|&i| failed[i].is_none())
                .collect();
            if alive.is_empty() {
                break;
            }
            let rows: &[Pending] = pending;
            let args = d
                .args
                .iter()
                .map(|&a| alive.iter().map(move |&i| &rows[i].env.data[a]));
            let results = anom_udf::apply(&d.udf, args, alive.len());
            for (&i, result) in alive.iter().zip(results) {
                let reason = match result {
                    Ok(Value::Float(x)) if d.score && !(0.0..=1.0).contains(&x) => format!(
                        "{}: udf `{}` scored {x}, outside [0, 1]",
                        d.source, d.udf.name
                    ),
                    Ok(v) => {
                        pending[i].env.data[d.field] = v;
                        continue;
                    }
                    Err(e) => format!("{}: {e}", d.source),
                };
                failed[i] = Some(Rejection::new(RejectKind::Udf, reason));
            }
        }
        failed
    }

    fn envelope(
        &self,
        input: &Input<'_>,
        index: u32,
        row: Vec<Value>,
    ) -> Result<(u32, Envelope), Rejection> {
        let p = &*self.pipeline;
        let key = key_text(p, &row)?;
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

/// The key of a decoded row, as text: what partitions it and what alerts name. Refused when
/// missing, null or blank.
pub fn key_text(p: &Pipeline, row: &[Value]) -> Result<String, Rejection> {
    Ok(match &row[p.key] {
        Value::Null => {
            return Err(Rejection::new(
                RejectKind::MissingKey,
                format!(
                    "key field `{}` is missing or null",
                    p.schema.fields()[p.key].name
                ),
            ))
        }
        // An empty key would lump every such event into one key nobody named.
        Value::Str(s) if s.trim().is_empty() => {
            return Err(Rejection::new(
                RejectKind::MissingKey,
                format!(
                    "key field `{}` is empty: expected a non-blank string",
                    p.schema.fields()[p.key].name
                ),
            ))
        }
        Value::Str(s) => s.to_string(),
        Value::Timestamp(ms) => ms.to_string(),
        // Exact, not the rounded text messages use: distinct values stay distinct keys.
        Value::Float(x) => x.to_string(),
        other => other.to_string(),
    })
}

/// The partition of a key: stable across processes, versions and machines.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

impl Stage for Validate {
    fn process(&mut self, input: &Input<'_>, out: &mut Emitter) -> Result<(), Rejection> {
        let p = &*self.pipeline;
        let format = event::sniff(input.header(headers::CONTENT_TYPE), input.payload);
        if !p.derives.is_empty() {
            let mut shared: Option<(Arc<str>, Bytes)> = None;
            let base = input.payload.as_ptr() as usize;
            let mut held = Vec::new();
            event::decode_all(
                &p.schema,
                input.payload,
                format,
                p.max_event_bytes,
                |d: Decoded<'_>| match d.row.and_then(|row| self.envelope(input, d.index, row)) {
                    Ok((_, env)) => {
                        let (subject, payload) = shared.get_or_insert_with(|| {
                            (
                                Arc::from(input.subject),
                                Bytes::copy_from_slice(input.payload),
                            )
                        });
                        // An event's bytes are a slice of the input (else: all of it).
                        let start = (d.bytes.as_ptr() as usize).wrapping_sub(base);
                        let range = match start.checked_add(d.bytes.len()) {
                            Some(end) if end <= payload.len() => start..end,
                            _ => 0..payload.len(),
                        };
                        held.push(Pending {
                            subject: subject.clone(),
                            stream_seq: input.stream_seq,
                            payload: payload.clone(),
                            range,
                            index: d.index,
                            line: d.line,
                            env,
                        });
                    }
                    Err(rejection) => {
                        out.reject(input, &p.name, d.bytes, d.index, d.line, &rejection)
                    }
                },
            );
            self.pending.extend(held);
            return Ok(());
        }
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

    fn end_batch(&mut self, out: &mut Emitter) {
        if self.pending.is_empty() {
            return;
        }
        let failed = self.derive();
        let p = self.pipeline.clone();
        for (e, failure) in std::mem::take(&mut self.pending).into_iter().zip(failed) {
            match failure {
                Some(rejection) => {
                    let input = Input {
                        subject: &e.subject,
                        payload: &e.payload,
                        headers: None,
                        stream_seq: e.stream_seq,
                        published_us: e.env.meta.ingest_time_us,
                    };
                    let part = &e.payload[e.range.clone()];
                    out.reject(&input, &p.name, part, e.index, e.line, &rejection);
                }
                None => out.emit(
                    self.partition_subjects[e.env.meta.partition as usize].clone(),
                    self.msg_id(e.stream_seq, e.index),
                    e.env.encode(),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anom_pipeline::subjects::headers;
    use anom_runtime::Output;

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
        for blank in ["", "  "] {
            let event = serde_json::json!({"user": blank, "amount": 1}).to_string();
            let out = run(&p, event.as_bytes());
            assert_eq!(header(&out[0], headers::REASON_KIND), "missing_key");
            assert_eq!(
                header(&out[0], headers::REASON),
                "key field `user` is empty: expected a non-blank string"
            );
        }
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
    fn the_same_fault_has_the_same_reason_kind_in_json_and_messagepack() {
        let p = pipeline("");
        let array = serde_json::json!(["ana", 3]);
        let wrong_type = serde_json::json!({"user": "ana", "amount": "three"});
        for value in [array, wrong_type] {
            let json = run(&p, value.to_string().as_bytes());
            let msgpack = run(&p, &rmp_serde::to_vec_named(&value).unwrap());
            assert_eq!(header(&json[0], headers::REASON_KIND), "schema", "{value}");
            assert_eq!(
                header(&msgpack[0], headers::REASON_KIND),
                "schema",
                "{value}"
            );
        }
        // Malformed bytes are a decode fault in both.
        assert_eq!(
            header(&run(&p, b"{\"user\"")[0], headers::REASON_KIND),
            "decode"
        );
        assert_eq!(header(&run(&p, &[0xc1])[0], headers::REASON_KIND), "decode");
        // NaN (MessagePack can carry it) says what was expected.
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        enum V {
            S(&'static str),
            F(f64),
        }
        let nan = rmp_serde::to_vec_named(&std::collections::BTreeMap::from([
            ("user", V::S("ana")),
            ("amount", V::F(f64::NAN)),
        ]))
        .unwrap();
        let out = run(&p, &nan);
        assert_eq!(header(&out[0], headers::REASON_KIND), "schema");
        assert_eq!(
            header(&out[0], headers::REASON),
            "field `amount`: expected a finite float (not NaN or an infinity), found float NaN"
        );
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
    fn derived_fields_are_computed_per_batch_and_an_event_a_udf_fails_on_is_dead_lettered() {
        let lib = anom_testkit::plugins::plugin("route_id");
        let p = Arc::new(
            Pipeline::from_yaml(&format!(
                "name: t\nkey: user\nschema:\n  user: string\n  file: string\nudfs:\n  - {{ name: route_id, library: {}, args: [string], returns: string }}\nderive:\n  route: route_id(file)\n",
                lib.display()
            ))
            .unwrap(),
        );
        let mut stage = Validate::new(p.clone());
        let mut out = Emitter::new(NAME, "t-validate");
        let inputs: [&[u8]; 2] = [
            b"{\"user\":\"a\",\"file\":\"sftp-bank-a-0001.csv\"}\n{\"user\":\"b\",\"file\":\"README\"}\n{\"user\":\"c\"}",
            b"{\"user\":\"d\",\"file\":\"api-payroll-7.csv\"}",
        ];
        for (i, payload) in inputs.iter().enumerate() {
            let input = Input {
                subject: "anom.t.in",
                payload,
                headers: None,
                stream_seq: 10 + i as u64,
                published_us: 0,
            };
            stage.process(&input, &mut out).unwrap();
        }
        // Nothing leaves before the batch ends: the UDF runs once for all events.
        assert!(out.outputs().is_empty());
        stage.end_batch(&mut out);
        let out = out.outputs().to_vec();
        assert_eq!(out.len(), 4);
        let route = |o: &Output| Envelope::decode(&o.payload).unwrap().data[2].clone();
        assert_eq!(route(&out[0]), Value::from("SFTP-BANK-A"));
        assert_eq!(out[0].msg_id, "t:validate:10:0");
        assert_eq!(out[1].subject, "anom.t.dlq");
        assert_eq!(header(&out[1], headers::REASON_KIND), "udf");
        assert_eq!(
            header(&out[1], headers::REASON),
            "route_id(file): udf `route_id` panicked"
        );
        assert_eq!(header(&out[1], headers::SOURCE_LINE), "2");
        assert_eq!(&out[1].payload[..], b"{\"user\":\"b\",\"file\":\"README\"}");
        // No file: the UDF gets a null it does not take and returns null.
        assert_eq!(
            header(&out[2], headers::REASON),
            "route_id(file): udf `route_id` returned null"
        );
        assert_eq!(out[2].msg_id, "t-validate:dlq:10:2");
        assert_eq!(route(&out[3]), Value::from("API-PAYROLL"));
        assert_eq!(out[3].msg_id, "t:validate:11:0");
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
