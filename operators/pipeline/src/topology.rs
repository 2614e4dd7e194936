//! What feeds what, in one place: the units a compiled pipeline runs, the stage chain an event
//! goes through, the subject each stage writes and the next one reads, and the JetStream
//! streams that hold them. The worker binds consumers with it ([`Topology::input`]), the
//! runtime creates streams from it ([`Topology::streams`]), the coordinator assigns its
//! [`Topology::units`], and the backtest engine wires the same stages in-process with it
//! ([`Topology::reader`]).
//!
//! ```text
//! anom.<p>.in ─[validate]→ anom.<p>.valid.<k> ─[window]→ anom.<p>.enriched.<k> ─[score]→ anom.<p>.scored.<k>
//!   ─[rules]→ anom.<p>.detections.<k> ─[alert]→ anom.<p>.alerts ─[sinks]
//!      └──────────── refused inputs, with reasons ───────────→ anom.<p>.dlq
//! ```
//! The window stage runs only for pipelines with aggregates or absence rules, the score
//! stage only for pipelines with detectors; each stage reads the output of the last one
//! before it that runs.
//!
//! A fused pipeline (the default, `units.fused`) runs the chain of each partition as one
//! [`UnitStage::Keyed`] unit: it reads `anom.<p>.valid.<k>` and hands each stage's output to
//! the next in-process, by the same subjects ([`Topology::reader`]), so only what leaves the
//! pipeline is written to JetStream (alert changes and their state, late events, dead
//! letters, and the enriched events if `units.publish_enriched`). The subjects between the
//! stages are then names, not streams.

use std::collections::HashMap;

use crate::subjects::{
    history_stream, DLQ_STREAM, DLQ_SUBJECTS, INGEST_STREAM, INGEST_SUBJECTS, LATE_STREAM,
    LATE_SUBJECTS,
};
use crate::unit::{UnitId, UnitStage};
use crate::Pipeline;

/// How long a stream keeps its messages (the durations are the cluster's settings, or the
/// pipeline's `retention` for its history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// What users may want back: raw events, dead letters, late events, alert changes.
    Kept,
    /// Envelopes between stages, read once by the next stage.
    Internal,
    /// A pipeline's own history, sourced from the ingest stream (see [`StreamSpec::source`]).
    History(std::time::Duration),
}

/// A JetStream stream the topology needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    /// Its subjects; none for a history, which the server fills from `source`.
    pub subjects: Vec<String>,
    /// For a history: the stream and subject it copies.
    pub source: Option<(String, String)>,
    pub keep: Keep,
}

/// Where a unit reads: a stream and the subject it filters on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub stream: String,
    pub subject: String,
}

/// The units, chain and streams of one pipeline version.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The per-partition stages, in the order an event goes through them.
    pub chain: Vec<UnitStage>,
    /// Whether the chain of each partition runs as one unit ([`UnitStage::Keyed`]).
    pub fused: bool,
    /// Every unit: validate once; the chain per partition; one per sink.
    pub units: Vec<UnitId>,
    /// The pipeline's own streams (the shared ingest, dead-letter and late streams are
    /// [`shared_streams`]).
    pub streams: Vec<StreamSpec>,
    /// Which per-partition stage reads each subject a stage writes.
    readers: HashMap<String, (UnitStage, u32)>,
    inputs: HashMap<(UnitStage, u32), Input>,
    /// Fused and `units.publish_enriched`: the subject the rules stage reads, per partition,
    /// and where the fused unit publishes it.
    published: HashMap<String, String>,
    /// Where users' alert commands go, per partition: into the alert stage's input.
    commands: Vec<String>,
}

/// The streams every pipeline shares: raw events, dead letters, late events.
pub fn shared_streams() -> Vec<StreamSpec> {
    [
        (INGEST_STREAM, INGEST_SUBJECTS),
        (DLQ_STREAM, DLQ_SUBJECTS),
        (LATE_STREAM, LATE_SUBJECTS),
    ]
    .into_iter()
    .map(|(name, subjects)| StreamSpec {
        name: name.to_string(),
        subjects: vec![subjects.to_string()],
        source: None,
        keep: Keep::Kept,
    })
    .collect()
}

impl Topology {
    pub fn of(p: &Pipeline) -> Topology {
        let s = &p.subjects;
        let mut chain = Vec::new();
        if p.is_keyed() {
            chain.push(UnitStage::Window);
        }
        if p.has_detectors() {
            chain.push(UnitStage::Score);
        }
        chain.extend([UnitStage::Rules, UnitStage::Alert]);

        let unit = |stage: UnitStage, partition| UnitId {
            pipeline: p.name.clone(),
            stage,
            partition,
        };
        let fused = p.units.fused;
        let mut units = vec![unit(UnitStage::Validate, 0)];
        for k in 0..p.partitions {
            if fused {
                units.push(unit(UnitStage::Keyed, k));
            } else {
                units.extend(chain.iter().map(|stage| unit(stage.clone(), k)));
            }
        }
        units.extend(
            p.sinks
                .iter()
                .map(|sink| unit(UnitStage::Sink(sink.name().to_string()), 0)),
        );

        // What each stage writes: its stream, its subject for partition k, and a wildcard
        // over every partition. The alert stage's changes go to one subject, which the
        // sinks' notifiers watch through the alert bucket.
        let writes = |stage: &UnitStage, k: u32| -> Option<(String, String, String)> {
            Some(match stage {
                UnitStage::Validate => (s.valid_stream.clone(), s.valid(k), s.valid_all()),
                UnitStage::Window => (s.enriched_stream.clone(), s.enriched(k), s.enriched_all()),
                UnitStage::Score => (s.scored_stream.clone(), s.scored(k), s.scored_all()),
                UnitStage::Rules => (
                    s.detections_stream.clone(),
                    s.detections(k),
                    s.detections_all(),
                ),
                _ => return None,
            })
        };
        let mut readers = HashMap::new();
        let mut inputs = HashMap::new();
        for k in 0..p.partitions {
            let mut before = UnitStage::Validate;
            for stage in &chain {
                if let Some((stream, subject, _)) = writes(&before, k) {
                    readers.insert(subject.clone(), (stage.clone(), k));
                    inputs.insert((stage.clone(), k), Input { stream, subject });
                }
                before = stage.clone();
            }
        }
        let mut published = HashMap::new();
        let mut commands = Vec::new();
        for k in 0..p.partitions {
            if fused {
                inputs.insert(
                    (UnitStage::Keyed, k),
                    Input {
                        stream: s.valid_stream.clone(),
                        subject: s.valid(k),
                    },
                );
                commands.push(s.valid(k));
                if p.units.publish_enriched {
                    if let Some(rules) = inputs.get(&(UnitStage::Rules, k)) {
                        published.insert(rules.subject.clone(), s.enriched(k));
                    }
                }
            } else {
                commands.push(s.detections(k));
            }
        }
        inputs.insert(
            (UnitStage::Validate, 0),
            Input {
                stream: INGEST_STREAM.to_string(),
                subject: s.input.clone(),
            },
        );

        let internal = |stage: &UnitStage| {
            writes(stage, 0).map(|(name, _, all)| StreamSpec {
                name,
                subjects: vec![all],
                source: None,
                keep: Keep::Internal,
            })
        };
        // Every stage that writes envelopes has a stream: the one before each chain stage.
        // Fused, only validate's output is a stream (and the enriched events if published).
        let mut streams: Vec<StreamSpec> = if fused {
            let mut written = vec![UnitStage::Validate];
            if !published.is_empty() {
                written.push(UnitStage::Window);
            }
            written.iter().filter_map(internal).collect()
        } else {
            std::iter::once(&UnitStage::Validate)
                .chain(&chain)
                .filter_map(internal)
                .collect()
        };
        streams.push(StreamSpec {
            name: s.alerts_stream.clone(),
            subjects: vec![s.alerts.clone()],
            source: None,
            keep: Keep::Kept,
        });
        if let Some(retention) = p.retention {
            streams.push(StreamSpec {
                name: history_stream(&p.name),
                subjects: Vec::new(),
                source: Some((INGEST_STREAM.to_string(), s.input.clone())),
                keep: Keep::History(retention),
            });
        }
        Topology {
            chain,
            fused,
            units,
            streams,
            readers,
            inputs,
            published,
            commands,
        }
    }

    /// Where `stage` of partition `k` reads (validate: the pipeline's input in the ingest
    /// stream); `None` for stages that read no envelopes (sinks, the unrouted watcher) or
    /// are not in this pipeline's chain.
    pub fn input(&self, stage: &UnitStage, k: u32) -> Option<&Input> {
        let k = if *stage == UnitStage::Validate { 0 } else { k };
        self.inputs.get(&(stage.clone(), k))
    }

    /// The stage and partition that read `subject` (a subject a stage writes), if any.
    pub fn reader(&self, subject: &str) -> Option<(&UnitStage, u32)> {
        self.readers.get(subject).map(|(stage, k)| (stage, *k))
    }

    /// Where a fused unit also publishes what it hands over on `subject` (the events the
    /// rules read, with `units.publish_enriched`), if anywhere.
    pub fn published(&self, subject: &str) -> Option<&str> {
        self.published.get(subject).map(String::as_str)
    }

    /// The unit that runs `stage` of partition `k` (a fused unit, or the stage's own).
    pub fn unit_running(&self, p: &Pipeline, stage: &UnitStage, k: u32) -> UnitId {
        let fused = self.fused && self.chain.contains(stage);
        UnitId {
            pipeline: p.name.clone(),
            stage: if fused {
                UnitStage::Keyed
            } else {
                stage.clone()
            },
            partition: k,
        }
    }

    /// The subject users' commands for the alerts of partition `k` are sent to: the input of
    /// the unit that runs its alert stage.
    pub fn command_subject(&self, k: u32) -> &str {
        &self.commands[k as usize % self.commands.len().max(1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name: t\nkey: k\npartitions: 2\nschema:\n  k: string\n  x: float\nrules:\n  - name: high\n    when: x > 5\n";

    fn topology(extra: &str) -> Topology {
        Topology::of(&Pipeline::from_yaml(&format!("{BASE}{extra}")).unwrap())
    }

    #[test]
    fn each_stage_reads_what_the_last_stage_before_it_writes() {
        let t = topology("units:\n  fused: false\n");
        assert_eq!(t.chain, [UnitStage::Rules, UnitStage::Alert]);
        assert_eq!(
            t.input(&UnitStage::Rules, 1).unwrap().subject,
            "anom.t.valid.1"
        );
        assert_eq!(
            t.input(&UnitStage::Alert, 1).unwrap().stream,
            "ANOM_T_DETECTIONS"
        );
        assert_eq!(t.input(&UnitStage::Window, 0), None);
        assert_eq!(
            t.input(&UnitStage::Validate, 7).unwrap().subject,
            "anom.t.in"
        );
        assert_eq!(
            t.reader("anom.t.detections.0"),
            Some((&UnitStage::Alert, 0))
        );
        assert_eq!(t.reader("anom.t.alerts"), None);
        let names: Vec<&str> = t.streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["ANOM_T_VALID", "ANOM_T_DETECTIONS", "ANOM_T_ALERTS"]
        );
        // validate, then rules and alert per partition.
        assert_eq!(t.units.len(), 5);

        let t = topology(
            "units:\n  fused: false\naggregates:\n  n: count() over 1h\ndetectors:\n  - { name: d, kind: ewma, field: x }\nretention: 30d\n",
        );
        assert_eq!(
            t.chain,
            [
                UnitStage::Window,
                UnitStage::Score,
                UnitStage::Rules,
                UnitStage::Alert
            ]
        );
        assert_eq!(
            t.input(&UnitStage::Score, 0).unwrap().subject,
            "anom.t.enriched.0"
        );
        assert_eq!(
            t.input(&UnitStage::Rules, 0).unwrap().subject,
            "anom.t.scored.0"
        );
        assert_eq!(t.reader("anom.t.valid.1"), Some((&UnitStage::Window, 1)));
        let names: Vec<&str> = t.streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ANOM_T_VALID",
                "ANOM_T_ENRICHED",
                "ANOM_T_SCORED",
                "ANOM_T_DETECTIONS",
                "ANOM_T_ALERTS",
                "ANOM_T_HISTORY"
            ]
        );
        assert_eq!(t.streams[1].subjects, ["anom.t.enriched.*"]);
        assert_eq!(
            t.streams[5].source,
            Some(("ANOM_INGEST".to_string(), "anom.t.in".to_string()))
        );
        assert_eq!(t.units.len(), 1 + 2 * 4);
    }

    #[test]
    fn a_fused_pipeline_has_one_unit_per_partition_reading_validated_events() {
        let t = topology(
            "aggregates:\n  n: count() over 1h\ndetectors:\n  - { name: d, kind: ewma, field: x }\n",
        );
        assert!(t.fused);
        // The chain is what the unit runs in-process, wired by the same subjects.
        assert_eq!(t.chain.len(), 4);
        let stages: Vec<_> = t
            .units
            .iter()
            .map(|u| (u.stage.name(), u.partition))
            .collect();
        assert_eq!(
            stages,
            [("validate", 0), ("keyed", 0), ("keyed", 1)],
            "validate, then one fused unit per partition"
        );
        assert_eq!(
            t.input(&UnitStage::Keyed, 1).unwrap(),
            &Input {
                stream: "ANOM_T_VALID".into(),
                subject: "anom.t.valid.1".into()
            }
        );
        assert_eq!(t.reader("anom.t.enriched.1"), Some((&UnitStage::Score, 1)));
        assert_eq!(t.reader("anom.t.scored.1"), Some((&UnitStage::Rules, 1)));
        let names: Vec<&str> = t.streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ANOM_T_VALID", "ANOM_T_ALERTS"]);
        assert_eq!(t.command_subject(1), "anom.t.valid.1");
        assert_eq!(t.published("anom.t.scored.1"), None);

        // Published: what the rules read leaves the unit on the enriched subject.
        let t = topology(
            "units:\n  publish_enriched: true\naggregates:\n  n: count() over 1h\ndetectors:\n  - { name: d, kind: ewma, field: x }\n",
        );
        assert_eq!(t.published("anom.t.scored.1"), Some("anom.t.enriched.1"));
        let names: Vec<&str> = t.streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ANOM_T_VALID", "ANOM_T_ENRICHED", "ANOM_T_ALERTS"]);
        // Per-stage, commands go to the alert stage's own input.
        let t = topology("units:\n  fused: false\n");
        assert_eq!(t.command_subject(0), "anom.t.detections.0");
    }
}
