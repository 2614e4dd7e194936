//! The stages of one pipeline version, run in-process on a stretch of raw events: the same
//! code as live (validate, window and score per partition, rules, alert per partition),
//! with throwaway state, in event time, and no output leaving the process. What comes out
//! is told to a [`Tap`].

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use crate::alerting::record::Alert;
use crate::model_registry::ModelRegistry;
use crate::stage::{
    alert::AlertStage, rules, score::ScoreStage, validate::Validate, window::WindowStage,
};
use anom_pipeline::envelope::Envelope;
use anom_pipeline::subjects::headers;
use anom_pipeline::topology::Topology;
use anom_pipeline::unit::UnitStage;
use anom_pipeline::Pipeline;
use anom_runtime::checkpoint::{open_db, StateStore};
use anom_runtime::metrics::Metrics;
use anom_runtime::timebase::Timebase;
use anom_runtime::{Emitter, Input, Output, Stage};

use super::BacktestError;

/// A raw event as the ingest stream holds it.
pub struct Raw {
    pub subject: String,
    pub payload: bytes::Bytes,
    pub headers: Option<async_nats::HeaderMap>,
    pub stream_seq: u64,
    pub published_us: i64,
}

impl Raw {
    /// The raw event as validate's input.
    pub fn input(&self) -> Input<'_> {
        Input {
            subject: &self.subject,
            payload: &self.payload,
            headers: self.headers.as_ref(),
            stream_seq: self.stream_seq,
            published_us: self.published_us,
        }
    }
}

/// How far the events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Up to the key's aggregates (what `anom train` computes features with).
    Enriched,
    /// Through rules, detectors and the alert lifecycle.
    Alerts,
}

/// What a run tells its caller, as it happens.
pub trait Tap {
    /// Whether [`Tap::event`] is wanted: decoding each event once more costs time.
    fn wants_events(&self) -> bool {
        true
    }
    /// An event reached the rules (or, at [`Depth::Enriched`], the end).
    fn seen(&mut self) {}
    /// That event as the rules (or the detectors) see it: validated, with its aggregates and
    /// scores.
    fn event(&mut self, _env: &Envelope) {}
    /// An event the rules stage let alert (a rule hit or a detector flag), or an absence.
    fn detection(&mut self, _env: &Envelope) {}
    /// A change of an alert's status (firing, resolved), as live publishes it.
    fn alert(&mut self, _alert: Alert) {}
    /// An input or a line of it refused, by reason kind (`schema`, `decode`, …).
    fn rejected(&mut self, _kind: &str) {}
    /// An event later than the allowed lateness, kept aside as live does.
    fn late(&mut self) {}
}

/// Where a stage's output goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Window,
    Score,
    Rules,
    Alert,
}

/// One stage's queue of inputs, each with its sequence and ingest time (µs).
type Queue = Vec<(Output, u64, i64)>;

pub struct Engine {
    pipeline: Arc<Pipeline>,
    /// What feeds what: the same wiring live units have, in-process.
    topology: Topology,
    depth: Depth,
    timebases: Vec<Timebase>,
    validate: Validate,
    windows: Vec<WindowStage>,
    scores: Vec<ScoreStage>,
    rules: rules::Rules,
    alerts: Vec<AlertStage>,
    /// Inputs waiting per hop and partition.
    queues: [Vec<Queue>; 4],
    out: Emitter,
    start_ms: i64,
    last_tick_ms: i64,
    batches: u64,
    next_seq: u64,
    // Declared last: dropped after the stages that use it.
    _db: sled::Db,
    _dir: tempfile::TempDir,
}

impl Engine {
    /// `start_ms`: event time before the first event (where absence timers start from).
    pub fn new(
        pipeline: Arc<Pipeline>,
        depth: Depth,
        start_ms: i64,
        models: &ModelRegistry,
        metrics: &Metrics,
    ) -> Result<Engine, BacktestError> {
        let dir = tempfile::tempdir()?;
        let db = open_db(dir.path())?;
        let parts = pipeline.partitions;
        // Each partition keeps its own event time, as each live partition reads its own
        // subject: the engine runs one partition's batch after another's.
        let timebases: Vec<Timebase> = (0..parts).map(|_| Timebase::events(start_ms)).collect();
        let mut windows = Vec::new();
        let mut scores = Vec::new();
        let mut alerts = Vec::new();
        for k in 0..parts {
            if pipeline.is_keyed() {
                let store = StateStore::open(&db, &format!("backtest-window-{k}"))?;
                let (stage, _) = WindowStage::restore(
                    pipeline.clone(),
                    k,
                    &store,
                    Counter::default(),
                    timebases[k as usize].clone(),
                )?;
                windows.push(stage);
            }
            if depth == Depth::Alerts {
                if pipeline.has_detectors() {
                    let store = StateStore::open(&db, &format!("backtest-score-{k}"))?;
                    let (stage, _) =
                        ScoreStage::restore(pipeline.clone(), k, &store, models, metrics)?;
                    scores.push(stage);
                }
                alerts.push(AlertStage::new(
                    pipeline.clone(),
                    metrics,
                    Vec::new(),
                    timebases[k as usize].clone(),
                ));
            }
        }
        let queue = || (0..parts).map(|_| Queue::new()).collect::<Vec<_>>();
        Ok(Engine {
            topology: Topology::of(&pipeline),
            validate: Validate::new(pipeline.clone()),
            rules: rules::Rules::new(pipeline.clone()),
            queues: [queue(), queue(), queue(), queue()],
            out: Emitter::new("backtest", "backtest"),
            start_ms,
            last_tick_ms: start_ms,
            batches: 0,
            next_seq: 0,
            pipeline,
            depth,
            timebases,
            windows,
            scores,
            alerts,
            _db: db,
            _dir: dir,
        })
    }

    /// The earliest event time among the valid events of `batch` (where a run's event time
    /// starts), or, when none is valid, when the first was stored.
    pub fn first_event_ms(pipeline: &Arc<Pipeline>, batch: &[Raw]) -> Option<i64> {
        let mut validate = Validate::new(pipeline.clone());
        let mut out = Emitter::new("backtest", "backtest");
        for raw in batch {
            let input = raw.input();
            let _ = validate.process(&input, &mut out);
        }
        validate.end_batch(&mut out);
        let first = out
            .outputs()
            .iter()
            .filter_map(|o| Envelope::open(pipeline, &o.payload).ok())
            .map(|env| env.meta.event_time)
            .min();
        first.or(batch.first().map(|r| r.published_us / 1000))
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Where the run's event time started (its first event).
    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }

    /// Event time so far: the newest event time seen.
    pub fn now_ms(&self) -> i64 {
        self.timebases
            .iter()
            .map(Timebase::now_ms)
            .max()
            .unwrap_or(self.last_tick_ms)
    }

    /// Runs a batch of raw inputs through every stage, as one live batch would go through
    /// each stage in turn; timers fire as event time passes whole seconds.
    pub fn feed(&mut self, batch: &[Raw], tap: &mut impl Tap) {
        for raw in batch {
            let input = raw.input();
            self.out.clear();
            if let Err(r) = self.validate.process(&input, &mut self.out) {
                tap.rejected(r.kind.as_str());
                continue;
            }
            for o in self.out.take() {
                self.route(o, raw.published_us, tap);
            }
        }
        // Validate may finish a batch at its end (derived fields computed for the batch).
        self.out.clear();
        self.validate.end_batch(&mut self.out);
        let ingest_us = batch.last().map_or(0, |r| r.published_us);
        for o in self.out.take() {
            self.route(o, ingest_us, tap);
        }
        self.drain(tap);
        // Every partition has seen the whole batch: time is up to its newest event for all.
        let now = self.now_ms();
        if now - self.last_tick_ms >= 1_000 {
            self.tick(now, tap);
        }
        // The stages keep what changed for a checkpoint; a backtest never writes one.
        self.batches += 1;
        if self.batches.is_multiple_of(64) {
            for w in &mut self.windows {
                let _ = w.checkpoint();
            }
            for s in &mut self.scores {
                let _ = s.checkpoint();
            }
        }
    }

    /// Ends the run at the newest event time: timers due by then fire, and the alert stages
    /// write what they held back. (The range's end is a storage time, not an event time:
    /// silence after the last event is not assumed.)
    pub fn finish(&mut self, tap: &mut impl Tap) {
        let end = self.now_ms();
        self.tick(end, tap);
    }

    fn tick(&mut self, now_ms: i64, tap: &mut impl Tap) {
        self.last_tick_ms = now_ms;
        for t in &self.timebases {
            t.observe(now_ms);
        }
        for k in 0..self.windows.len() {
            self.out.clear();
            self.windows[k].tick(now_ms, &mut self.out);
            for o in self.out.take() {
                self.route(o, now_ms * 1000, tap);
            }
        }
        self.drain(tap);
        for k in 0..self.alerts.len() {
            self.out.clear();
            self.alerts[k].tick(now_ms, &mut self.out);
            for o in self.out.take() {
                self.route(o, now_ms * 1000, tap);
            }
        }
    }

    /// Runs every queued input through its stage, hop after hop.
    fn drain(&mut self, tap: &mut impl Tap) {
        for hop in [Hop::Window, Hop::Score, Hop::Rules, Hop::Alert] {
            for k in 0..self.pipeline.partitions as usize {
                let queue = std::mem::take(&mut self.queues[hop as usize][k]);
                if queue.is_empty() {
                    continue;
                }
                let mut produced = Vec::new();
                {
                    let stage: &mut dyn Stage = match hop {
                        Hop::Window => &mut self.windows[k],
                        Hop::Score => &mut self.scores[k],
                        Hop::Rules => &mut self.rules,
                        Hop::Alert => &mut self.alerts[k],
                    };
                    for (o, seq, ingest_us) in &queue {
                        let input = Input {
                            subject: &o.subject,
                            payload: &o.payload,
                            headers: o.headers.as_ref(),
                            stream_seq: *seq,
                            published_us: *ingest_us,
                        };
                        self.out.clear();
                        if let Err(r) = stage.process(&input, &mut self.out) {
                            tap.rejected(r.kind.as_str());
                        }
                        produced.extend(self.out.take().into_iter().map(|o| (o, *ingest_us)));
                    }
                    self.out.clear();
                    stage.end_batch(&mut self.out);
                    let now_us = self.timebases[k].now_us();
                    produced.extend(self.out.take().into_iter().map(|o| (o, now_us)));
                }
                for (o, ingest_us) in produced {
                    self.route(o, ingest_us, tap);
                }
            }
        }
    }

    /// Sends one output on: to the stage the topology says reads its subject, or to the tap.
    fn route(&mut self, o: Output, ingest_us: i64, tap: &mut impl Tap) {
        let p = &*self.pipeline;
        let s = &p.subjects;
        if o.subject == s.alerts {
            if let Ok(a) = serde_json::from_slice::<Alert>(&o.payload) {
                tap.alert(a);
            }
            return;
        }
        if o.subject == s.dlq {
            let kind = o
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::REASON_KIND))
                .map_or("unknown", |v| v.as_str());
            tap.rejected(kind);
            return;
        }
        if o.subject == s.late {
            tap.late();
            return;
        }
        // Anything else no stage reads (alert state writes, $KV.…) stays in the stage.
        let Some((stage, k)) = self.topology.reader(&o.subject) else {
            return;
        };
        let k = k as usize;
        let hop = match stage {
            UnitStage::Window => Some((Hop::Window, k)),
            UnitStage::Score | UnitStage::Rules if self.depth == Depth::Enriched => {
                tap.seen();
                if tap.wants_events() {
                    if let Ok(env) = Envelope::open(p, &o.payload) {
                        tap.event(&env);
                    }
                }
                None
            }
            UnitStage::Score => Some((Hop::Score, k)),
            UnitStage::Rules => Some((Hop::Rules, k)),
            UnitStage::Alert => {
                if let Ok(env) = Envelope::open(p, &o.payload) {
                    if env.analysis.absence.is_some() || rules::active_causes(p, &env) != 0 {
                        tap.detection(&env);
                    }
                }
                Some((Hop::Alert, k))
            }
            _ => None,
        };
        if let Some((hop, k)) = hop {
            if hop == Hop::Rules {
                tap.seen();
                if tap.wants_events() {
                    if let Ok(env) = Envelope::open(p, &o.payload) {
                        tap.event(&env);
                    }
                }
            }
            // Live, each stage reads its own stream: its inputs' sequences only grow (the
            // alert stage skips what it already applied by them).
            self.next_seq += 1;
            if let Some(q) = self.queues[hop as usize].get_mut(k) {
                q.push((o, self.next_seq, ingest_us));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::record::AlertStatus;

    const DEF: &str = "name: t\nkey: k\nevent_time: at\nschema:\n  k: string\n  x: float\n  at: timestamp\nrules:\n  - name: high\n    when: x > 5\nabsence:\n  - name: quiet\n    after: 20m\n";

    #[derive(Default)]
    struct Changes(Vec<(String, AlertStatus, String)>);

    impl Tap for Changes {
        fn alert(&mut self, a: Alert) {
            self.0.push((a.rule, a.status, a.event_time));
        }
    }

    fn raw(seq: u64, k: &str, x: f64, at_min: i64) -> Raw {
        Raw {
            subject: "anom.t.in".into(),
            payload: format!(r#"{{"k": "{k}", "x": {x}, "at": {}}}"#, at_min * 60_000).into(),
            headers: None,
            stream_seq: seq,
            published_us: 1_800_000_000_000_000 + seq as i64,
        }
    }

    #[test]
    fn replayed_silence_fires_when_it_reached_the_limit_and_resolves_when_the_key_returns() {
        let p = Arc::new(Pipeline::from_yaml(DEF).unwrap());
        let metrics = Metrics::new();
        let models = ModelRegistry::new(".".into(), Arc::new(Metrics::new()));
        let batch = vec![
            raw(1, "a", 1.0, 0),
            raw(2, "a", 9.0, 1),
            raw(3, "a", 1.0, 2),
            raw(4, "a", 1.0, 50),
        ];
        let start = Engine::first_event_ms(&p, &batch).unwrap();
        assert_eq!(start, 0);
        let mut engine = Engine::new(p, Depth::Alerts, start, &models, &metrics).unwrap();
        let mut tap = Changes::default();
        engine.feed(&batch, &mut tap);
        engine.finish(&mut tap);
        // Absences skip the rules stage: their records may come out before earlier rule hits.
        tap.0.sort_by(|a, b| a.2.cmp(&b.2));
        let at = |m: i64| crate::alerting::record::rfc3339_ms(m * 60_000);
        assert_eq!(
            tap.0,
            vec![
                ("high".into(), AlertStatus::Firing, at(1)),
                ("high".into(), AlertStatus::Resolved, at(2)),
                ("quiet".into(), AlertStatus::Firing, at(22)),
                ("quiet".into(), AlertStatus::Resolved, at(50)),
            ]
        );
    }
}
