//! A fused unit: the per-partition stages of a pipeline (window, score, rules, alert as it
//! needs them) run in-process as one [`Stage`], as Flink chains operators that share a key and
//! a partition. The unit reads `anom.<p>.valid.<k>`; each stage's output is handed to the
//! stage the [`Topology`] says reads its subject, without a JetStream hop, and only what no
//! stage of the chain reads leaves the unit (alert changes and their stored state, late
//! events, dead letters, the enriched events when published). One checkpoint covers every
//! stage's state with the unit's input sequence.
//!
//! Batches keep their meaning: the first stage sees each input as it comes, and every later
//! stage sees what the one before it made of the whole batch, then its own `end_batch` (so
//! the score stage still runs its models once per batch).
//!
//! Positions: a stage after the first sees each hand-off at `input sequence × 256 + n`, `n`
//! counting what the input's first stage handed on (timers count from 128 after the last
//! input); what a later stage makes of a hand-off keeps its position, also when the stage
//! emits it at the end of the batch (found by the event's identity in its message id). The
//! alert stage's exactly-once tracking needs positions that are a function of the input, so
//! that a replay after a crash meets the same ones, and distinct for one alert: one event
//! may fire and resolve an absence and reach the rules, all from the same input.

use std::collections::HashMap;

use anom_pipeline::rejection::{RejectKind, Rejection};
use anom_pipeline::subjects::headers;
use anom_pipeline::topology::Topology;
use anom_pipeline::unit::UnitStage;
use anom_pipeline::Pipeline;
use anom_runtime::checkpoint::StateDelta;
use anom_runtime::{Emitter, Input, Output, Stage};
use async_nats::HeaderMap;

use crate::alerting::store::COMMAND_HEADER;

/// The name of a fused unit's stage (metrics, consumers, dead-letter headers of its own).
pub const NAME: &str = anom_pipeline::unit::names::KEYED;

/// Hand-offs one input may cause before their positions collide (then they share the last).
const PER_INPUT: u64 = 256;
/// Where timers' hand-offs start counting within an input's positions.
const TIMERS_FROM: u64 = 128;

/// One stage of the chain.
pub struct Link {
    pub stage: UnitStage,
    pub run: Box<dyn Stage>,
    /// Its state's section in the unit's tree (window `w`, score `s`); none if stateless.
    pub section: Option<&'static [u8]>,
    /// Whether it emits what it was handed at the end of the batch (the score stage).
    pub batches: bool,
}

impl Link {
    pub fn new(stage: UnitStage, run: Box<dyn Stage>, section: Option<&'static [u8]>) -> Link {
        Link {
            batches: stage == UnitStage::Score,
            stage,
            run,
            section,
        }
    }
}

/// What caused the outputs being routed, for their positions.
#[derive(Clone, Copy)]
enum Cause {
    /// An input or hand-off at this position.
    At(u64),
    /// A timer.
    Timer,
    /// A stage's end of batch: each output's event had a hand-off of its own.
    EndOfBatch,
}

/// The event identity at the end of an envelope's message id (`<p>:<stage>:<seq>:<index>`).
fn identity(msg_id: &str) -> &str {
    msg_id.splitn(3, ':').nth(2).unwrap_or(msg_id)
}

/// An output handed to a later stage, with where it stands in the unit's input.
struct Handoff {
    output: Output,
    position: u64,
    published_us: i64,
}

struct Running {
    link: Link,
    /// Its own emitter, so that what it dead-letters names it.
    out: Emitter,
    queue: Vec<Handoff>,
    /// For a link that batches: the position of each event handed to it, by identity.
    lineage: HashMap<String, u64>,
}

pub struct Chain {
    pipeline: String,
    links: Vec<Running>,
    /// Which link reads each subject a link writes.
    readers: HashMap<String, usize>,
    /// Subjects whose hand-offs also leave the unit, and where to.
    published: HashMap<String, String>,
    /// The link commands go to (the alert stage).
    alert: Option<usize>,
    /// The last input's sequence, and the timers' hand-offs counted since.
    seq: u64,
    published_us: i64,
    timers: u64,
    touched: bool,
}

impl Chain {
    /// The chain of partition `k` of `pipeline`: `links` in the topology's order, their state
    /// as of input `seq` (timers fired before the next input take positions after it, not
    /// before what stored alerts already applied).
    pub fn new(pipeline: &Pipeline, k: u32, links: Vec<Link>, seq: u64) -> Chain {
        let topology = Topology::of(pipeline);
        let mut readers = HashMap::new();
        let mut published = HashMap::new();
        for (i, link) in links.iter().enumerate().skip(1) {
            if let Some(input) = topology.input(&link.stage, k) {
                readers.insert(input.subject.clone(), i);
                if let Some(to) = topology.published(&input.subject) {
                    published.insert(input.subject.clone(), to.to_string());
                }
            }
        }
        // Absences skip score and rules: the window writes them to the alert stage's input.
        let alert = links.iter().position(|l| l.stage == UnitStage::Alert);
        let links = links
            .into_iter()
            .map(|link| Running {
                out: Emitter::new(link.stage.name(), &format!("{}-{NAME}-{k}", pipeline.name)),
                link,
                queue: Vec::new(),
                lineage: HashMap::new(),
            })
            .collect();
        Chain {
            pipeline: pipeline.name.clone(),
            links,
            readers,
            published,
            alert,
            seq,
            published_us: 0,
            timers: TIMERS_FROM,
            touched: false,
        }
    }

    /// The stages it runs, in order.
    pub fn stages(&self) -> Vec<&UnitStage> {
        self.links.iter().map(|l| &l.link.stage).collect()
    }

    fn timer_position(&mut self) -> u64 {
        let at = self.timers.min(PER_INPUT - 1);
        self.timers += 1;
        self.seq.saturating_mul(PER_INPUT) + at
    }

    /// Sends link `from`'s outputs on: to the link that reads their subject, or out.
    fn route(&mut self, from: usize, cause: Cause, out: &mut Emitter) {
        let (outputs, dead) = self.links[from].out.take_with_dead_letters();
        out.count_dead_letters(dead);
        let mut n = 0;
        for mut o in outputs {
            match self.readers.get(o.subject.as_str()).copied() {
                Some(to) if to > from => {
                    if let Some(subject) = self.published.get(&o.subject) {
                        out.pass(Output {
                            subject: subject.clone(),
                            ..o.clone()
                        });
                    }
                    let position = match cause {
                        Cause::At(at) => {
                            // Within the input's block of positions.
                            let p = (at + n).min(at | (PER_INPUT - 1));
                            n += 1;
                            p
                        }
                        Cause::Timer => self.timer_position(),
                        Cause::EndOfBatch => {
                            let lineage = &self.links[from].lineage;
                            match lineage.get(identity(&o.msg_id)) {
                                Some(p) => *p,
                                None => self.seq.saturating_mul(PER_INPUT) + PER_INPUT - 1,
                            }
                        }
                    };
                    let next = &mut self.links[to];
                    if next.link.batches {
                        next.lineage
                            .insert(identity(&o.msg_id).to_string(), position);
                    }
                    next.queue.push(Handoff {
                        output: o,
                        position,
                        published_us: self.published_us,
                    });
                }
                _ => {
                    // A later stage's dead letter names the unit's input it came from.
                    if from > 0 {
                        let source = match cause {
                            Cause::At(at) => at / PER_INPUT,
                            _ => self.seq,
                        };
                        if let Some(h) = o.headers.as_mut() {
                            if h.get(headers::SOURCE_SEQUENCE).is_some() {
                                h.insert(headers::SOURCE_SEQUENCE, source.to_string().as_str());
                            }
                        }
                    }
                    out.pass(o);
                }
            }
        }
    }

    /// Runs what waits for links `from..`, each over its whole queue and then its
    /// `end_batch`, in order.
    fn drain(&mut self, from: usize, out: &mut Emitter) {
        for i in from..self.links.len() {
            let queue = std::mem::take(&mut self.links[i].queue);
            for h in &queue {
                let input = Input {
                    subject: &h.output.subject,
                    payload: &h.output.payload,
                    headers: h.output.headers.as_ref(),
                    stream_seq: h.position,
                    published_us: h.published_us,
                };
                let link = &mut self.links[i];
                if let Err(r) = link.link.run.process(&input, &mut link.out) {
                    link.out
                        .reject(&input, &self.pipeline, input.payload, 0, None, &r);
                }
                self.route(i, Cause::At(h.position), out);
            }
            let link = &mut self.links[i];
            link.link.run.end_batch(&mut link.out);
            self.route(i, Cause::EndOfBatch, out);
            self.links[i].lineage.clear();
        }
    }
}

impl Stage for Chain {
    fn process(&mut self, input: &Input<'_>, out: &mut Emitter) -> Result<(), Rejection> {
        self.touched = true;
        self.seq = input.stream_seq;
        self.published_us = input.published_us;
        self.timers = TIMERS_FROM;
        if input.header(COMMAND_HEADER).is_some() {
            // A user's command goes to the alert stage in its place among the events: what
            // came before it is finished first.
            let Some(alert) = self.alert else {
                return Err(Rejection::new(
                    RejectKind::Envelope,
                    "alert command: this unit runs no alert stage",
                ));
            };
            self.drain(1, out);
            let mut h = HeaderMap::new();
            h.insert(COMMAND_HEADER, "1");
            let position = self.seq.saturating_mul(PER_INPUT);
            self.links[alert].queue.push(Handoff {
                output: Output {
                    subject: input.subject.to_string(),
                    msg_id: String::new(),
                    payload: bytes::Bytes::copy_from_slice(input.payload),
                    headers: Some(h),
                },
                position,
                published_us: input.published_us,
            });
            self.drain(alert, out);
            return Ok(());
        }
        let first = &mut self.links[0];
        if first.link.batches {
            // It emits at the end of the batch: its outputs find their position by the
            // event's identity, which validate's message id carries.
            if let Some(id) = input.header("Nats-Msg-Id") {
                first
                    .lineage
                    .insert(identity(id).to_string(), self.seq.saturating_mul(PER_INPUT));
            }
        }
        if let Err(r) = first.link.run.process(input, &mut first.out) {
            first.out.clear();
            return Err(r);
        }
        self.route(0, Cause::At(self.seq.saturating_mul(PER_INPUT)), out);
        Ok(())
    }

    fn end_batch(&mut self, out: &mut Emitter) {
        let first = &mut self.links[0];
        first.link.run.end_batch(&mut first.out);
        self.route(0, Cause::EndOfBatch, out);
        self.links[0].lineage.clear();
        self.drain(1, out);
    }

    fn tick(&mut self, now_ms: i64, out: &mut Emitter) {
        // Each stage's timers, then what they handed on, stage after stage: the window's
        // absences reach the alert stage before its own timers run.
        for i in 0..self.links.len() {
            let link = &mut self.links[i];
            link.link.run.tick(now_ms, &mut link.out);
            self.route(i, Cause::Timer, out);
            self.drain(i + 1, out);
        }
    }

    fn checkpoint(&mut self) -> Option<StateDelta> {
        let mut delta = StateDelta::default();
        let mut any = std::mem::take(&mut self.touched);
        for l in &mut self.links {
            if let (Some(section), Some(d)) = (l.link.section, l.link.run.checkpoint()) {
                delta.merge(d.within(section));
                any = true;
            }
        }
        // The sequence alone is worth committing: a restart then replays nothing.
        any.then_some(delta)
    }

    fn checkpoint_due(&self) -> bool {
        self.links.iter().any(|l| l.link.run.checkpoint_due())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model_registry::ModelRegistry;
    use crate::stage::validate::Validate;
    use anom_runtime::checkpoint::{open_db, StateStore};
    use anom_runtime::metrics::Metrics;
    use anom_runtime::timebase::Timebase;

    const DEF: &str = "name: t\nkey: k\nevent_time: at\npartitions: 1\nschema:\n  k: string\n  x: float\n  at: timestamp\naggregates:\n  n: count() over 1h\nrules:\n  - name: many\n    when: n >= 3\nabsence:\n  - name: quiet\n    after: 20m\n";

    /// Validated envelopes of `(key, x, minute)` events, as the unit's input.
    fn valid(p: &Arc<Pipeline>, events: &[(&str, f64, i64)]) -> Vec<Output> {
        let mut validate = Validate::new(p.clone());
        let mut out = Emitter::new("validate", "t-validate");
        for (i, (k, x, m)) in events.iter().enumerate() {
            let payload = format!(r#"{{"k":"{k}","x":{x},"at":{}}}"#, m * 60_000);
            let input = Input {
                subject: "anom.t.in",
                payload: payload.as_bytes(),
                headers: None,
                stream_seq: i as u64 + 1,
                published_us: 1_700_000_000_000_000,
            };
            validate.process(&input, &mut out).unwrap();
        }
        validate.end_batch(&mut out);
        out.take()
    }

    fn run(chain: &mut Chain, inputs: &[Output]) -> Vec<Output> {
        let mut out = Emitter::new(NAME, "t-keyed-0");
        for (i, o) in inputs.iter().enumerate() {
            let input = Input {
                subject: &o.subject,
                payload: &o.payload,
                headers: o.headers.as_ref(),
                stream_seq: i as u64 + 1,
                published_us: 1_700_000_000_000_000,
            };
            chain.process(&input, &mut out).unwrap();
        }
        chain.end_batch(&mut out);
        out.take()
    }

    /// The fused unit of partition 0 of `def`, on an empty tree in a temporary directory.
    fn chain_of(def: &str) -> (Arc<Pipeline>, Chain, tempfile::TempDir) {
        let p = Arc::new(Pipeline::from_yaml(def).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let store = StateStore::open(&db, "t-keyed-0").unwrap();
        let metrics = Arc::new(Metrics::new());
        let models = ModelRegistry::new(".".into(), metrics.clone());
        let (chain, seq) = super::super::build_chain(
            &p,
            0,
            &store,
            &db,
            &models,
            &metrics,
            super::super::Prior::default(),
            Timebase::events(0),
        )
        .unwrap();
        assert_eq!(seq, 0, "an empty tree");
        (p, chain, dir)
    }

    #[test]
    fn stages_hand_over_in_process_and_only_what_leaves_the_pipeline_is_emitted() {
        let (p, mut chain, _dir) = chain_of(DEF);
        assert_eq!(chain.stages().len(), 3, "window, rules, alert");
        let inputs = valid(
            &p,
            &[("a", 1.0, 0), ("a", 1.0, 1), ("a", 1.0, 2), ("b", 1.0, 2)],
        );
        let outputs = run(&mut chain, &inputs);
        let subjects: Vec<&str> = outputs.iter().map(|o| o.subject.as_str()).collect();
        // The third event of `a` fires `many`: its change and its stored state, nothing else
        // (no enriched or detection envelopes).
        assert!(
            subjects
                .iter()
                .all(|s| *s == "anom.t.alerts" || s.starts_with("$KV.ANOM_ALERTS.")),
            "{subjects:?}"
        );
        let fired: Vec<crate::alerting::record::Alert> = outputs
            .iter()
            .filter(|o| o.subject == "anom.t.alerts")
            .map(|o| serde_json::from_slice(&o.payload).unwrap())
            .collect();
        assert_eq!(fired.len(), 1);
        assert_eq!(
            (fired[0].rule.as_str(), fired[0].key.as_str()),
            ("many", "a")
        );
        // Positions: the unit's input sequence × 256 + the hand-off.
        assert_eq!(fired[0].tracking.started, 3 * PER_INPUT);
        assert!(fired[0].tracking.chained);

        // One checkpoint, each stage in its section.
        let delta = chain.checkpoint().unwrap();
        assert!(delta.puts.iter().all(|(k, _)| k.starts_with(b"w/")));
        assert_eq!(delta.keys, 2);

        // A command reaches the alert stage in its place.
        let command = crate::alerting::store::Command {
            alert: fired[0].id.clone(),
            action: crate::alerting::store::Action::Acknowledge,
            by: "kim".into(),
            comment: String::new(),
            request: "r1".into(),
        };
        let mut h = HeaderMap::new();
        h.insert(COMMAND_HEADER, "1");
        let cmd = Output {
            subject: "anom.t.valid.0".into(),
            msg_id: "r1".into(),
            payload: serde_json::to_vec(&command).unwrap().into(),
            headers: Some(h),
        };
        let mut out = Emitter::new(NAME, "t-keyed-0");
        let input = Input {
            subject: &cmd.subject,
            payload: &cmd.payload,
            headers: cmd.headers.as_ref(),
            stream_seq: 10,
            published_us: 0,
        };
        chain.process(&input, &mut out).unwrap();
        chain.end_batch(&mut out);
        let acked: Vec<crate::alerting::record::Alert> = out
            .take()
            .iter()
            .filter(|o| o.subject == "anom.t.alerts")
            .map(|o| serde_json::from_slice(&o.payload).unwrap())
            .collect();
        assert_eq!(acked.len(), 1);
        assert_eq!(
            acked[0].status,
            crate::alerting::record::AlertStatus::Acknowledged
        );

        // The window's absence timer hands over to the alert stage within the unit.
        let mut out = Emitter::new(NAME, "t-keyed-0");
        let later = valid(&p, &[("b", 1.0, 60)]);
        let input = Input {
            subject: &later[0].subject,
            payload: &later[0].payload,
            headers: None,
            stream_seq: 11,
            published_us: 0,
        };
        chain.process(&input, &mut out).unwrap();
        chain.end_batch(&mut out);
        chain.tick(0, &mut out);
        let quiet: Vec<crate::alerting::record::Alert> = out
            .take()
            .iter()
            .filter(|o| o.subject == "anom.t.alerts")
            .map(|o| serde_json::from_slice(&o.payload).unwrap())
            .collect();
        assert!(
            quiet.iter().any(|a| a.rule == "quiet" && a.key == "a"),
            "{quiet:?}"
        );
    }

    #[test]
    fn what_a_batching_first_stage_emits_keeps_each_event_s_own_position() {
        // No aggregates: the score stage comes first and emits at the end of the batch.
        let def = "name: t\nkey: k\nevent_time: at\npartitions: 1\nschema:\n  k: string\n  x: float\n  at: timestamp\ndetectors:\n  - { name: d, kind: ewma, field: x }\ndecision: { alert_on: rules }\nrules:\n  - name: high\n    when: x > 5\n";
        let (p, mut chain, _dir) = chain_of(def);
        assert_eq!(chain.stages()[0], &UnitStage::Score);
        // Fires, resolves, fires again: three changes from one batch, each applied.
        let inputs = valid(&p, &[("a", 9.0, 0), ("a", 1.0, 1), ("a", 9.0, 2)]);
        let mut out = Emitter::new(NAME, "t-keyed-0");
        for (i, o) in inputs.iter().enumerate() {
            let mut h = HeaderMap::new();
            h.insert("Nats-Msg-Id", o.msg_id.as_str());
            let input = Input {
                subject: &o.subject,
                payload: &o.payload,
                headers: Some(&h),
                stream_seq: i as u64 + 1,
                published_us: 1_700_000_000_000_000,
            };
            chain.process(&input, &mut out).unwrap();
        }
        chain.end_batch(&mut out);
        let changes: Vec<(String, u64)> = out
            .take()
            .iter()
            .filter(|o| o.subject == "anom.t.alerts")
            .map(|o| serde_json::from_slice::<crate::alerting::record::Alert>(&o.payload).unwrap())
            .map(|a| (a.status.to_string(), a.tracking.applied))
            .collect();
        assert_eq!(
            changes,
            [
                ("firing".to_string(), PER_INPUT),
                ("resolved".to_string(), 2 * PER_INPUT),
                ("firing".to_string(), 3 * PER_INPUT)
            ]
        );
    }
}
