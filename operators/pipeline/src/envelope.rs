//! The envelope every message between operators travels in (MessagePack via rmp-serde).
//!
//! Each stage adds its part and rewrites none of another's: validate writes `meta` and
//! `data`, rules appends `analysis.hits`. Structs are encoded as arrays (compact, fast), so
//! field order is wire format: new fields go at the end with `#[serde(default)]`, and
//! `ENVELOPE_VERSION` changes when that is not enough.

use serde::{Deserialize, Serialize};

use anom_lang::value::Value;

use crate::rejection::{RejectKind, Rejection};
use crate::Pipeline;

pub const ENVELOPE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u8,
    pub meta: Meta,
    /// The validated fields in schema order (see `Schema::retype` for their types).
    pub data: Vec<Value>,
    #[serde(default)]
    pub analysis: Analysis,
    /// The key's aggregates at this event, in the pipeline's declaration order (window stage).
    #[serde(default)]
    pub enrichment: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub pipeline: String,
    /// Version (content hash) of the pipeline definition that validated the event.
    pub version: String,
    pub key: String,
    pub partition: u32,
    /// Event time, epoch milliseconds (ingest time when the pipeline has no event-time field).
    pub event_time: i64,
    /// When the ingest stream stored the event, epoch microseconds.
    pub ingest_time_us: i64,
    /// Sequence of the event's message in the ingest stream, and its line within it:
    /// together the event's identity, from which every output id is derived.
    pub origin_seq: u64,
    pub origin_index: u32,
}

impl Meta {
    /// The `Nats-Msg-Id` of this event's output from `stage`: derived from the event's
    /// identity, so a republished output is recognised as a duplicate.
    pub fn output_id(&self, stage: &str) -> String {
        format!(
            "{}:{stage}:{}:{}",
            self.pipeline, self.origin_seq, self.origin_index
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    #[serde(default)]
    pub hits: Vec<RuleHit>,
    /// Set on the detections the window stage's absence timers emit (they carry no event).
    #[serde(default)]
    pub absence: Option<AbsenceNote>,
    /// The score stage's readings, one per detector that scored the event (a built-in
    /// detector still warming up for the key, or missing an input, does not).
    #[serde(default)]
    pub scores: Vec<DetectorScore>,
    /// The rules stage's decision: set on every detection it forwards.
    #[serde(default)]
    pub verdict: Option<Verdict>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorScore {
    /// Index of the detector in the pipeline version named by `meta.version`.
    pub detector: u32,
    pub score: f64,
    pub flagged: bool,
    /// Why, in words (set when flagged): "amount 5,000 is 33× this card's usual (150)".
    pub explanation: String,
    /// Multivariate detectors: the inputs that contributed most, with their shares.
    #[serde(default)]
    pub contributions: Vec<(String, f64)>,
}

/// What the decision step made of an event's rule hits and detector flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub severity: crate::Severity,
    /// Every cause in one text: "rule `spike` hit; amount_unusual 0.99: amount 5,000 is ...".
    pub explanation: String,
}

/// A key went silent (or spoke again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbsenceNote {
    /// When the key's last event happened (epoch ms; for keys declared but never seen, when
    /// watching started).
    pub last_seen_ms: i64,
    /// How long it has been silent when this was raised, in ms.
    pub silent_ms: i64,
    /// True when data came back: this resolves the absence alert.
    pub resolved: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleHit {
    /// Index of the rule in the pipeline version named by `meta.version`.
    pub rule: u32,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a valid envelope: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("envelope version {found} is not supported (expected {ENVELOPE_VERSION})")]
    Version { found: u8 },
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain structs of scalars into a Vec cannot fail.
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let env: Envelope = rmp_serde::from_slice(bytes)?;
        if env.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version { found: env.v });
        }
        Ok(env)
    }

    /// Decodes an envelope this pipeline version can read; its `data` is typed per the
    /// schema. A decoding failure or another version is refused as `envelope`.
    pub fn open(pipeline: &Pipeline, payload: &[u8]) -> Result<Envelope, Rejection> {
        let mut env = Envelope::decode(payload)
            .map_err(|e| Rejection::new(RejectKind::Envelope, e.to_string()))?;
        if env.meta.version != pipeline.version {
            return Err(Rejection::new(
                RejectKind::Envelope,
                format!(
                    "envelope was validated by version {} of pipeline `{}`, this worker runs version {}",
                    env.meta.version, pipeline.name, pipeline.version
                ),
            ));
        }
        pipeline.schema.retype(&mut env.data);
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_stays_compact() {
        let env = Envelope {
            v: ENVELOPE_VERSION,
            meta: Meta {
                pipeline: "routes".into(),
                version: "abc".into(),
                key: "SFTP-BANK-A".into(),
                partition: 3,
                event_time: 1_700_000_000_000,
                ingest_time_us: 1_700_000_000_000_123,
                origin_seq: 42,
                origin_index: 0,
            },
            data: vec![
                Value::from("SFTP-BANK-A"),
                Value::Int(7200),
                Value::Null,
                Value::Float(1.5),
            ],
            analysis: Analysis {
                hits: vec![RuleHit {
                    rule: 0,
                    name: "slow".into(),
                }],
                ..Analysis::default()
            },
            enrichment: vec![Value::Int(3)],
        };
        let bytes = env.encode();
        assert!(bytes.len() < 120, "{} bytes", bytes.len());
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn rejects_garbage_and_other_versions() {
        assert!(Envelope::decode(b"\xc1garbage").is_err());
        let mut env = Envelope::decode(
            &Envelope {
                v: ENVELOPE_VERSION,
                meta: Meta {
                    pipeline: "p".into(),
                    version: "v".into(),
                    key: "k".into(),
                    partition: 0,
                    event_time: 0,
                    ingest_time_us: 0,
                    origin_seq: 1,
                    origin_index: 0,
                },
                data: vec![],
                analysis: Analysis::default(),
                enrichment: vec![],
            }
            .encode(),
        )
        .unwrap();
        env.v = 9;
        assert!(matches!(
            Envelope::decode(&env.encode()),
            Err(EnvelopeError::Version { found: 9 })
        ));
    }
}
