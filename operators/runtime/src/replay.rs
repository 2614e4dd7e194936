//! Exactly-once past JetStream's duplicate window.
//!
//! A unit that restarts replays the inputs after its checkpoint (keyed stages) or its ack
//! floor (the others), and republishes their outputs with the same `Nats-Msg-Id`s. Within
//! the stream's duplicate window (2 minutes by default) JetStream drops them; after a longer
//! outage it would store them again — a validated event counted twice downstream, an alert
//! change published twice. So each unit also records, with every checkpoint (or, for a
//! stateless stage, about once a second after an ack), [`Marks`]: per output stream, a
//! sequence before which nothing of a later input can be, and the subjects it writes there.
//! On restart it reads what those streams hold after the marks on its subjects (headers only)
//! into [`Published`], and does not publish those ids again.
//!
//! A stream's mark starts at its last sequence when the unit first writes a subject there
//! (made durable before that first send), and moves up to the highest sequence an output was
//! stored at **on its first send**: one connection stores a unit's sends in order, so every output of a later batch is
//! after it; an output republished after a failed ack may land later still, which only moves
//! it into the range that is read back. Key-value writes (`$KV.…`) are not marked: they write
//! a record's whole state, and writing the same one again changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Beyond this many subjects in one stream, the whole stream after the mark is read back.
const MAX_SUBJECTS: usize = 64;

/// Per output stream, where what comes after the last checkpoint begins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    streams: BTreeMap<String, StreamMark>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StreamMark {
    seq: u64,
    /// The subjects the unit wrote to in this stream; empty: too many to list (read all).
    subjects: BTreeSet<String>,
    all: bool,
}

impl Marks {
    /// A subject the unit is about to write to for the first time, in `stream`, whose last
    /// sequence is `last`: nothing of the unit's on that subject is at or before it. Must be
    /// made durable before the first output is sent (a unit killed before its first
    /// checkpoint replays from its start and must find that output again).
    pub fn birth(&mut self, stream: &str, last: u64, subject: &str) {
        let mark = self
            .streams
            .entry(stream.to_string())
            .or_insert_with(|| StreamMark {
                seq: last,
                ..StreamMark::default()
            });
        if !mark.all && !mark.subjects.contains(subject) {
            if mark.subjects.len() >= MAX_SUBJECTS {
                mark.all = true;
                mark.subjects.clear();
            } else {
                mark.subjects.insert(subject.to_string());
            }
        }
    }

    /// Whether outputs to `subject` are covered (born).
    pub fn covers(&self, subject: &str) -> bool {
        self.streams
            .values()
            .any(|m| m.all || m.subjects.contains(subject))
    }

    /// An output stored at `seq` of `stream` on its first send: the mark moves up to it.
    pub fn note(&mut self, stream: &str, seq: u64) {
        if let Some(m) = self.streams.get_mut(stream) {
            m.seq = m.seq.max(seq);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    /// `None` for bytes that are not marks (an older format): nothing is read back then.
    pub fn decode(bytes: &[u8]) -> Option<Marks> {
        rmp_serde::from_slice(bytes).ok()
    }
}

/// The ids of outputs already in their streams: not to be published again.
#[derive(Debug, Default)]
pub struct Published {
    ids: HashSet<String>,
}

impl Published {
    /// Reads back, headers only, what each marked stream holds after its mark on the unit's
    /// subjects.
    pub async fn scan(
        js: &jetstream::Context,
        marks: &Marks,
    ) -> Result<Published, async_nats::Error> {
        let mut ids = HashSet::new();
        for (name, mark) in &marks.streams {
            let mut stream = match js.get_stream(name).await {
                Ok(s) => s,
                // A stream deleted meanwhile holds nothing to repeat.
                Err(e)
                    if matches!(
                        e.kind(),
                        jetstream::context::GetStreamErrorKind::JetStream(j)
                            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            if stream.info().await?.state.last_sequence <= mark.seq {
                continue;
            }
            let consumer = stream
                .create_consumer(pull::Config {
                    ack_policy: AckPolicy::None,
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: mark.seq + 1,
                    },
                    filter_subjects: if mark.all {
                        Vec::new()
                    } else {
                        mark.subjects.iter().cloned().collect()
                    },
                    headers_only: true,
                    inactive_threshold: Duration::from_secs(30),
                    ..Default::default()
                })
                .await?;
            let mut pending = consumer.clone().info().await?.num_pending;
            while pending > 0 {
                let mut batch = consumer
                    .fetch()
                    .max_messages(1000)
                    .expires(Duration::from_secs(2))
                    .messages()
                    .await?;
                let mut got = 0;
                while let Some(m) = batch.next().await {
                    let m = m?;
                    got += 1;
                    if let Some(id) = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    {
                        ids.insert(id.as_str().to_string());
                    }
                }
                if got == 0 {
                    break;
                }
                pending = pending.saturating_sub(got);
            }
            let _ = stream.delete_consumer(&consumer.cached_info().name).await;
        }
        Ok(Published { ids })
    }

    /// Whether `msg_id` was already published (then it is forgotten: its replay is the only
    /// output with that id).
    pub fn take(&mut self, msg_id: &str) -> bool {
        !self.ids.is_empty() && self.ids.remove(msg_id)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_start_at_birth_and_keep_the_highest_first_send() {
        let mut m = Marks::default();
        m.birth("ANOM_P_VALID", 9, "anom.p.valid.0");
        assert!(m.covers("anom.p.valid.0") && !m.covers("anom.p.valid.1"));
        m.note("ANOM_P_VALID", 10);
        m.birth("ANOM_P_VALID", 3, "anom.p.valid.1");
        assert_eq!(
            m.streams["ANOM_P_VALID"].seq, 10,
            "a second subject keeps the mark"
        );
        m.note("ANOM_P_VALID", 7);
        m.note("ANOM_P_VALID", 12);
        // A stream never born is not marked.
        m.note("OTHER", 99);
        assert_eq!(m.streams.len(), 1);
        let v = &m.streams["ANOM_P_VALID"];
        assert_eq!(v.seq, 12);
        assert_eq!(v.subjects.len(), 2);
        assert_eq!(Marks::decode(&m.encode()), Some(m.clone()));
        assert_eq!(Marks::decode(b"\xc1"), None);
    }

    #[test]
    fn too_many_subjects_read_the_whole_stream() {
        let mut m = Marks::default();
        for i in 0..=MAX_SUBJECTS {
            m.birth("S", i as u64, &format!("s.{i}"));
        }
        let s = &m.streams["S"];
        assert!(s.all && s.subjects.is_empty());
        m.birth("S", 1, "s.again");
        assert!(m.streams["S"].subjects.is_empty() && m.covers("s.anything"));
    }

    #[test]
    fn a_published_id_is_taken_once() {
        let mut p = Published {
            ids: ["a".to_string()].into_iter().collect(),
        };
        assert!(p.take("a"));
        assert!(!p.take("a"));
        assert!(!p.take("b"));
    }
}
