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
