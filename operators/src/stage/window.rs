//! window: per-key state between validate and rules. Each event updates its key's aggregates
//! and leaves enriched with their values at that moment; absence timers fire when a key goes
//! silent and resolve when it speaks again. Events later than the allowed lateness go to the
//! pipeline's late subject, counted, and do not touch the state.
//!
//! State lives in memory for speed and is checkpointed to sled (`anom_runtime::checkpoint`): the
//! keys changed since the previous checkpoint, committed with the source sequence, so a
//! restart restores exactly the state that matches the redelivered inputs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

use anom_lang::aggregate::AggState;
use anom_lang::value::Value;
use anom_pipeline::envelope::{AbsenceNote, Analysis, Envelope, Meta, RuleHit, ENVELOPE_VERSION};
use anom_pipeline::layout::{Layouts, Reader};
use anom_pipeline::rejection::Rejection;
use anom_pipeline::subjects::headers;
use anom_pipeline::{Clock, Pipeline, RuleKind};
use anom_runtime::checkpoint::{CheckpointError, StateDelta, StateStore, KEY_PREFIX, META_KEY};
use anom_runtime::timebase::Timebase;
use anom_runtime::{Emitter, Input, Stage};

pub const NAME: &str = anom_pipeline::unit::names::WINDOW;

/// Everything kept for one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyState {
    aggs: Vec<AggState>,
    /// The key's newest event time (ms).
    last_event_ms: i64,
    /// Wall clock when its last event was processed (ms).
    last_seen_wall_ms: i64,
    /// Identity (ingest sequence, index) of its last event: names the current silent gap.
    last_origin: (u64, u32),
    /// Per absence rule: whether it fired for the current gap.
    fired: Vec<bool>,
    /// Per absence rule watching a field (`stale:`): its value and since when.
    #[serde(default)]
    since: Vec<Since>,
}

/// When a watched field took its current value; the event that set it names the stale spell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Since {
    value: Value,
    at_ms: i64,
    origin: (u64, u32),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartitionMeta {
    max_event_ms: i64,
    /// Which aggregate definitions the stored states belong to.
    aggregates: Vec<String>,
}

struct AbsenceRule {
    rule: usize,
    name: String,
    after_ms: i64,
    clock: Clock,
    /// `stale:` rules watch this field's value instead of the key's silence.
    stale: Option<usize>,
}

pub struct WindowStage {
    pipeline: Arc<Pipeline>,
    partition: u32,
    keys: HashMap<String, KeyState>,
    dirty: HashSet<String>,
    evicted: Vec<String>,
    max_event_ms: i64,
    lateness_ms: i64,
    ttl_ms: i64,
    absences: Vec<AbsenceRule>,
    enriched_subject: String,
    detections_subject: String,
    late: Counter,
    last_eviction_ms: i64,
    max_dirty: usize,
    /// Whether anything happened since the last checkpoint (an idle stage writes nothing).
    touched: bool,
    timebase: Timebase,
    reader: Reader,
}

impl WindowStage {
    /// Reads envelopes of other versions of the pipeline through `layouts` (a rollout's
    /// backlog); without, only its own version's.
    pub fn reading(mut self, layouts: Layouts) -> Self {
        self.reader = Reader::new(layouts);
        self
    }

    /// Builds the stage of one partition from its stored state. Returns it with the source
    /// sequence that state reflects.
    pub fn restore(
        pipeline: Arc<Pipeline>,
        partition: u32,
        store: &StateStore,
        late: Counter,
        timebase: Timebase,
    ) -> Result<(WindowStage, u64), CheckpointError> {
        let p = &*pipeline;
        let horizon_ms = p
            .aggregates
            .iter()
            .map(|a| a.aggregate.horizon())
            .try_fold(0u128, |acc, h| h.map(|h| acc.max(h.as_millis())));
        let ttl_ms = match horizon_ms {
            Some(h) => {
                (h + p.allowed_lateness.as_millis()).min(p.state.ttl.as_millis().max(h)) as i64
            }
            None => p.state.ttl.as_millis() as i64,
        };
        let absences = p
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match &r.kind {
                RuleKind::Absence(a) => Some(AbsenceRule {
                    rule: i,
                    name: r.name.clone(),
                    after_ms: a.after.as_millis() as i64,
                    clock: a.clock,
                    stale: a.stale,
                }),
                RuleKind::Condition(_) => None,
            })
            .collect();
        let mut stage = WindowStage {
            partition,
            keys: HashMap::new(),
            dirty: HashSet::new(),
            evicted: Vec::new(),
            max_event_ms: i64::MIN,
            lateness_ms: p.allowed_lateness.as_millis() as i64,
            ttl_ms,
            absences,
            enriched_subject: p.subjects.enriched(partition),
            detections_subject: p.subjects.detections(partition),
            late,
            last_eviction_ms: timebase.now_ms(),
            max_dirty: p.state.checkpoint_max_keys,
            touched: true,
            pipeline: pipeline.clone(),
            timebase,
            reader: Reader::default(),
        };
        let current: Vec<String> = p.aggregates.iter().map(|a| a.source.clone()).collect();
        // For each current aggregate, where its state sits in the stored states: a new pipeline
        // version keeps the state of every aggregate whose definition did not change.
        let mut from: Vec<Option<usize>> = (0..current.len()).map(Some).collect();
        let mut stored_len = current.len();
        let mut stored = Vec::new();
        for entry in store.entries() {
            let (k, v) = entry?;
            if k == META_KEY {
                if let Ok(meta) = rmp_serde::from_slice::<PartitionMeta>(&v) {
                    stage.max_event_ms = meta.max_event_ms;
                    stored_len = meta.aggregates.len();
                    from = current
                        .iter()
                        .map(|c| meta.aggregates.iter().position(|a| a == c))
                        .collect();
                }
            } else if let Some(key) = k.strip_prefix(KEY_PREFIX) {
                if let Ok(state) = rmp_serde::from_slice::<KeyState>(&v) {
                    stored.push((String::from_utf8_lossy(key).into_owned(), state));
                }
            }
        }
        let unchanged =
            stored_len == current.len() && from.iter().enumerate().all(|(i, f)| *f == Some(i));
        for (key, mut state) in stored {
            // Changed or new aggregates start afresh rather than misread old state.
            if !unchanged || state.aggs.len() != stored_len {
                let mut old: Vec<Option<AggState>> = if state.aggs.len() == stored_len {
                    state.aggs.into_iter().map(Some).collect()
                } else {
                    Vec::new()
                };
                state.aggs = p
                    .aggregates
                    .iter()
                    .zip(&from)
                    .map(|(a, f)| {
                        f.and_then(|i| old.get_mut(i).and_then(Option::take))
                            .unwrap_or_else(|| a.aggregate.new_state())
                    })
                    .collect();
                stage.dirty.insert(key.clone());
            }
            state.fired.resize(stage.absences.len(), false);
            state.since.resize(stage.absences.len(), Since::default());
            stage.keys.insert(key, state);
        }
        // Keys an absence rule watches from the start, if they belong to this partition.
        let now = stage.timebase.now_ms();
        let declared: Vec<String> = p
            .rules
            .iter()
            .filter_map(|r| match &r.kind {
                RuleKind::Absence(a) => Some(a.keys.clone()),
                RuleKind::Condition(_) => None,
            })
            .flatten()
            .filter(|k| super::validate::partition_of(k, p.partitions) == partition)
            .collect();
        for key in declared {
            if !stage.keys.contains_key(&key) {
                let state = stage.new_key(
                    now,
                    if stage.max_event_ms == i64::MIN {
                        now
                    } else {
                        stage.max_event_ms
                    },
                );
                stage.keys.insert(key.clone(), state);
                stage.dirty.insert(key);
            }
        }
        Ok((stage, store.last_seq()?))
    }

    fn new_key(&self, wall: i64, event_ms: i64) -> KeyState {
        KeyState {
            aggs: self
                .pipeline
                .aggregates
                .iter()
                .map(|a| a.aggregate.new_state())
                .collect(),
            last_event_ms: event_ms,
            last_seen_wall_ms: wall,
            last_origin: (0, 0),
            fired: vec![false; self.absences.len()],
            since: vec![
                Since {
                    at_ms: event_ms,
                    ..Since::default()
                };
                self.absences.len()
            ],
        }
    }

    fn late_event(&mut self, input: &Input<'_>, env: &Envelope, out: &mut Emitter) {
        self.late.inc();
        let behind = self.max_event_ms - env.meta.event_time;
        let mut h = HeaderMap::new();
        h.insert(
            headers::REASON,
            format!(
                "event time {} is {} behind the partition's newest event {}; allowed lateness is {}",
                crate::alerting::record::rfc3339_ms(env.meta.event_time),
                anom_lang::duration::format(std::time::Duration::from_millis(behind.max(0) as u64)),
                crate::alerting::record::rfc3339_ms(self.max_event_ms),
                anom_lang::duration::format(self.pipeline.allowed_lateness),
            )
            .as_str(),
        );
        h.insert(headers::REASON_KIND, "late");
        h.insert(headers::STAGE, NAME);
        h.insert(headers::SOURCE_SUBJECT, input.subject);
        h.insert(
            headers::SOURCE_SEQUENCE,
            input.stream_seq.to_string().as_str(),
        );
        out.emit_with_headers(
            self.pipeline.subjects.late.clone(),
            format!(
                "{}:late:{}:{}",
                self.pipeline.name, env.meta.origin_seq, env.meta.origin_index
            ),
            Bytes::copy_from_slice(input.payload),
            h,
        );
    }

    /// A detection for an absence rule: the key went silent (or spoke again).
    fn absence_detection(
        &self,
        key: &str,
        state: &KeyState,
        slot: usize,
        now_ms: i64,
        resolved: bool,
        row: Vec<Value>,
    ) -> (String, Vec<u8>) {
        let p = &*self.pipeline;
        let a = &self.absences[slot];
        // What names this gap (and so the alert's id): the key's last event, or for a stale
        // field the event that gave it its current value.
        let origin = match (a.stale, state.since.get(slot)) {
            (Some(_), Some(since)) => since.origin,
            _ => state.last_origin,
        };
        let last_seen = match (a.stale, a.clock) {
            (Some(_), _) => state.since.get(slot).map_or(now_ms, |s| s.at_ms),
            (None, Clock::Processing) => state.last_seen_wall_ms,
            (None, Clock::Event) => state.last_event_ms,
        };
        let event_time = match a.clock {
            // Replayed time jumps from event to event: the gap became an absence when it
            // reached `after`, not when the next event showed it.
            Clock::Processing if self.timebase.is_events() && !resolved => {
                now_ms.min(last_seen + a.after_ms)
            }
            Clock::Processing => now_ms,
            Clock::Event => now_ms.max(state.last_event_ms),
        };
        let env = Envelope {
            v: ENVELOPE_VERSION,
            meta: Meta {
                pipeline: p.name.clone(),
                version: p.version.clone(),
                key: key.to_string(),
                partition: self.partition,
                event_time,
                ingest_time_us: self.timebase.now_us(),
                origin_seq: origin.0,
                origin_index: origin.1,
            },
            data: row,
            analysis: Analysis {
                hits: vec![RuleHit {
                    rule: a.rule as u32,
                    name: a.name.clone(),
                }],
                absence: Some(AbsenceNote {
                    last_seen_ms: last_seen,
                    silent_ms: event_time.max(last_seen) - last_seen,
                    resolved,
                }),
                ..Analysis::default()
            },
            enrichment: p
                .aggregates
                .iter()
                .zip(&state.aggs)
                .map(|(agg, s)| agg.aggregate.value_at(s, state.last_event_ms))
                .collect(),
        };
        let id = format!(
            "{}:absence:{}:{}:{}:{}{}",
            p.name,
            a.name,
            key,
            origin.0,
            origin.1,
            if resolved { ":resolved" } else { "" }
        );
        (id, env.encode())
    }

    fn evict(&mut self, now_wall: i64) {
        let declared: HashSet<&String> = self
            .pipeline
            .rules
            .iter()
            .filter_map(|r| match &r.kind {
                RuleKind::Absence(a) => Some(a.keys.iter()),
                RuleKind::Condition(_) => None,
            })
            .flatten()
            .collect();
        let (max_event, ttl) = (self.max_event_ms, self.ttl_ms);
        let expired: Vec<String> = self
            .keys
            .iter()
            .filter(|(k, s)| {
                // A key whose absence fired stays: its return resolves the alert.
                !declared.contains(k)
                    && !s.fired.contains(&true)
                    && s.last_event_ms < max_event.saturating_sub(ttl)
                    && s.last_seen_wall_ms < now_wall.saturating_sub(ttl)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.keys.remove(&key);
            self.dirty.remove(&key);
            self.evicted.push(key);
        }
    }

    /// The number of keys held (for tests and metrics).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

impl Stage for WindowStage {
    fn process(&mut self, input: &Input<'_>, out: &mut Emitter) -> Result<(), Rejection> {
        // Even a late or refused input must be covered by a checkpoint to be acked.
        self.touched = true;
        let mut env = self.reader.open(&self.pipeline, input.payload)?;
        let t = env.meta.event_time;
        if self.max_event_ms != i64::MIN && t < self.max_event_ms.saturating_sub(self.lateness_ms) {
            self.late_event(input, &env, out);
            return Ok(());
        }
        if self.timebase.is_events()
            && !self.absences.is_empty()
            && t - self.timebase.now_ms() >= 1_000
        {
            // Replayed time jumps to this event: the timers due before it fire first, as the
            // wall clock's would have between the two events.
            self.tick(t - 1, out);
        }
        self.max_event_ms = self.max_event_ms.max(t);
        self.timebase.observe(t);
        let now = self.timebase.now_ms();
        let key = env.meta.key.clone();
        let mut state = match self.keys.remove(&key) {
            Some(s) => s,
            None => self.new_key(now, t),
        };
        // An event-clock gap is seen when the key comes back; a processing-clock one was
        // fired by the timer. Either way the key speaking again resolves it.
        for (i, a) in self.absences.iter().enumerate() {
            if let Some(field) = a.stale {
                // A stale rule: the key speaks, but does the field still change?
                let value = env.data.get(field).cloned().unwrap_or_default();
                if state.since[i].value != value {
                    if state.fired[i] {
                        let (id, payload) =
                            self.absence_detection(&key, &state, i, t, true, env.data.clone());
                        out.emit(self.detections_subject.clone(), id, payload);
                        state.fired[i] = false;
                    }
                    state.since[i] = Since {
                        value,
                        at_ms: t,
                        origin: (env.meta.origin_seq, env.meta.origin_index),
                    };
                } else if !state.fired[i] && t - state.since[i].at_ms >= a.after_ms {
                    let (id, payload) =
                        self.absence_detection(&key, &state, i, t, false, env.data.clone());
                    out.emit(self.detections_subject.clone(), id, payload);
                    state.fired[i] = true;
                }
                continue;
            }
            let gap = t - state.last_event_ms;
            if a.clock == Clock::Event
                && !state.fired[i]
                && state.last_origin != (0, 0)
                && gap >= a.after_ms
            {
                let (id, payload) = self.absence_detection(&key, &state, i, t, false, Vec::new());
                out.emit(self.detections_subject.clone(), id, payload);
                state.fired[i] = true;
            }
            if state.fired[i] {
                let clock_now = if a.clock == Clock::Event { t } else { now };
                let (id, payload) =
                    self.absence_detection(&key, &state, i, clock_now, true, Vec::new());
                out.emit(self.detections_subject.clone(), id, payload);
                state.fired[i] = false;
            }
        }
        let p = &*self.pipeline;
        env.enrichment = p
            .aggregates
            .iter()
            .zip(state.aggs.iter_mut())
            .map(|(agg, s)| agg.aggregate.update(s, t, &env.data))
            .collect();
        state.last_event_ms = state.last_event_ms.max(t);
        state.last_seen_wall_ms = now;
        state.last_origin = (env.meta.origin_seq, env.meta.origin_index);
        self.keys.insert(key.clone(), state);
        self.dirty.insert(key);
        out.emit(
            self.enriched_subject.clone(),
            env.meta.output_id(NAME),
            env.encode(),
        );
        Ok(())
    }

    fn tick(&mut self, now_ms: i64, out: &mut Emitter) {
        if !self.absences.is_empty() {
            let mut fired = Vec::new();
            for (key, state) in &self.keys {
                for (i, a) in self.absences.iter().enumerate() {
                    if a.stale.is_some() {
                        continue; // checked as events arrive
                    }
                    let (now, last) = match a.clock {
                        Clock::Processing => (now_ms, state.last_seen_wall_ms),
                        Clock::Event => (self.max_event_ms, state.last_event_ms),
                    };
                    if !state.fired[i] && now - last >= a.after_ms {
                        let (id, payload) =
                            self.absence_detection(key, state, i, now, false, Vec::new());
                        out.emit(self.detections_subject.clone(), id, payload);
                        fired.push((key.clone(), i));
                    }
                }
            }
            for (key, i) in fired {
                if let Some(s) = self.keys.get_mut(&key) {
                    s.fired[i] = true;
                }
                self.dirty.insert(key);
                self.touched = true;
            }
        }
        if now_ms - self.last_eviction_ms >= 10_000 {
            self.last_eviction_ms = now_ms;
            self.evict(now_ms);
            self.touched |= !self.evicted.is_empty();
        }
    }

    fn checkpoint(&mut self) -> Option<StateDelta> {
        if !std::mem::take(&mut self.touched) {
            return None;
        }
        let meta = PartitionMeta {
            max_event_ms: self.max_event_ms,
            aggregates: self
                .pipeline
                .aggregates
                .iter()
                .map(|a| a.source.clone())
                .collect(),
        };
        Some(StateDelta::of_keys(
            &self.keys,
            &mut self.dirty,
            &mut self.evicted,
            &meta,
        ))
    }

    fn checkpoint_due(&self) -> bool {
        self.dirty.len() >= self.max_dirty
    }
}

/// The value of every aggregate of a key, for inspection and tests.
pub fn values_of(pipeline: &Pipeline, states: &[AggState], t_ms: i64) -> Vec<Value> {
    pipeline
        .aggregates
        .iter()
        .zip(states)
        .map(|(a, s)| a.aggregate.value_at(s, t_ms))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEF: &str = "name: t\nkey: k\nevent_time: at\nallowed_lateness: 1m\nschema:\n  k: string\n  at: timestamp\naggregates:\n  n_1m: count() over 1m\n";

    fn envelope(p: &Pipeline, key: &str, at: i64, seq: u64) -> Vec<u8> {
        Envelope {
            v: ENVELOPE_VERSION,
            meta: Meta {
                pipeline: p.name.clone(),
                version: p.version.clone(),
                key: key.into(),
                partition: 0,
                event_time: at,
                ingest_time_us: 0,
                origin_seq: seq,
                origin_index: 0,
            },
            data: vec![Value::from(key), Value::Timestamp(at)],
            analysis: Analysis::default(),
            enrichment: vec![],
        }
        .encode()
    }

    fn feed(
        stage: &mut WindowStage,
        p: &Pipeline,
        key: &str,
        at: i64,
        seq: u64,
    ) -> Vec<anom_runtime::Output> {
        let payload = envelope(p, key, at, seq);
        let input = Input {
            subject: "anom.t.valid.0",
            payload: &payload,
            headers: None,
            stream_seq: seq,
            published_us: 0,
        };
        let mut out = Emitter::new(NAME, "t-window-0");
        stage.process(&input, &mut out).unwrap();
        out.outputs().to_vec()
    }

    #[test]
    fn keys_past_their_windows_are_evicted_and_deleted_at_the_next_checkpoint() {
        let p = Arc::new(Pipeline::from_yaml(DEF).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = StateStore::open(&db, "t-window-0").unwrap();
        let (mut stage, seq) =
            WindowStage::restore(p.clone(), 0, &store, Counter::default(), Timebase::Wall).unwrap();
        assert_eq!(seq, 0);
        let t = 1_795_132_800_000;
        feed(&mut stage, &p, "old", t, 1);
        feed(&mut stage, &p, "new", t + 600_000, 2);
        let first = stage.checkpoint().unwrap();
        assert_eq!(first.puts.len(), 3, "two keys and the partition's metadata");
        // Ten minutes of event time and of wall clock later, `old` is past its 1m window
        // plus 1m lateness; `new` is not (its last event is the partition's newest).
        stage.tick(
            Timebase::Wall.now_ms() + 600_000,
            &mut Emitter::new(NAME, "t-window-0"),
        );
        assert_eq!(stage.key_count(), 1);
        let delta = stage.checkpoint().unwrap();
        assert_eq!(delta.deletes, vec![b"k:old".to_vec()]);
    }

    #[test]
    fn a_restored_stage_continues_from_its_checkpoint() {
        let p = Arc::new(Pipeline::from_yaml(DEF).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = StateStore::open(&db, "t-window-0").unwrap();
        let (mut stage, _) =
            WindowStage::restore(p.clone(), 0, &store, Counter::default(), Timebase::Wall).unwrap();
        let t = 1_795_132_800_000;
        feed(&mut stage, &p, "a", t, 1);
        feed(&mut stage, &p, "a", t + 1000, 2);
        let delta = stage.checkpoint().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(store.commit(delta, 2)).unwrap();
        let (mut restored, seq) =
            WindowStage::restore(p.clone(), 0, &store, Counter::default(), Timebase::Wall).unwrap();
        assert_eq!(seq, 2);
        let out = feed(&mut restored, &p, "a", t + 2000, 3);
        let env = Envelope::decode(&out[0].payload).unwrap();
        assert_eq!(env.enrichment, vec![Value::Int(3)]);
        // Late beyond the allowed minute: set aside, not counted.
        let out = feed(&mut restored, &p, "a", t - 120_000, 4);
        assert_eq!(out[0].subject, "anom.t.late");
        let out = feed(&mut restored, &p, "a", t + 3000, 5);
        assert_eq!(
            Envelope::decode(&out[0].payload).unwrap().enrichment,
            vec![Value::Int(4)]
        );
    }

    #[test]
    fn a_new_version_keeps_the_state_of_unchanged_aggregates_and_starts_changed_ones_afresh() {
        let p = Arc::new(Pipeline::from_yaml(DEF).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = StateStore::open(&db, "t-window-0").unwrap();
        let (mut stage, _) =
            WindowStage::restore(p.clone(), 0, &store, Counter::default(), Timebase::Wall).unwrap();
        let t = 1_795_132_800_000;
        for i in 0..3 {
            feed(&mut stage, &p, "a", t + i * 1000, i as u64 + 1);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(store.commit(stage.checkpoint().unwrap(), 3))
            .unwrap();
        // Version 2: a new aggregate first, the old one unchanged (moved), one changed.
        let v2 = DEF.replace(
            "aggregates:\n  n_1m: count() over 1m\n",
            "aggregates:\n  n_5m: count() over 5m\n  n_1m: count() over 1m\n",
        );
        let p2 = Arc::new(Pipeline::from_yaml(&v2).unwrap());
        let (mut restored, seq) =
            WindowStage::restore(p2.clone(), 0, &store, Counter::default(), Timebase::Wall)
                .unwrap();
        assert_eq!(seq, 3);
        let out = feed(&mut restored, &p2, "a", t + 4000, 4);
        assert_eq!(
            Envelope::decode(&out[0].payload).unwrap().enrichment,
            vec![Value::Int(1), Value::Int(4)],
            "n_5m starts afresh, n_1m keeps its three events"
        );
    }
}
