//! Units of work: one stage of one pipeline on one partition. The coordinator spreads units
//! over workers; a worker runs each unit it is given as one task on the shared runtime.

use std::fmt;

use crate::Pipeline;

/// What a unit runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnitStage {
    Validate,
    Window,
    /// Detector scores (online detectors and ONNX models); only for pipelines with detectors.
    Score,
    Rules,
    Alert,
    /// The per-partition stages of a fused pipeline (window, score, rules, alert as it
    /// needs them), run in-process as one unit with one input and one checkpoint.
    Keyed,
    /// Delivery to one of the pipeline's sinks, by name.
    Sink(String),
    /// Dead-letters events sent to pipelines that do not exist (one in the whole cluster).
    Unrouted,
}

/// The stages' names, in one place: units, consumers, roles, metric labels, message ids and
/// dead-letter headers all use these.
pub mod names {
    pub const VALIDATE: &str = "validate";
    pub const WINDOW: &str = "window";
    pub const SCORE: &str = "score";
    pub const RULES: &str = "rules";
    pub const ALERT: &str = "alert";
    pub const KEYED: &str = "keyed";
    pub const SINK: &str = "sink";
    pub const UNROUTED: &str = "unrouted";
}

impl UnitStage {
    /// The worker role able to run it.
    pub fn role(&self) -> &'static str {
        match self {
            UnitStage::Unrouted => names::VALIDATE,
            stage => stage.name(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            UnitStage::Validate => names::VALIDATE,
            UnitStage::Window => names::WINDOW,
            UnitStage::Score => names::SCORE,
            UnitStage::Rules => names::RULES,
            UnitStage::Alert => names::ALERT,
            UnitStage::Keyed => names::KEYED,
            UnitStage::Sink(_) => names::SINK,
            UnitStage::Unrouted => names::UNROUTED,
        }
    }

    /// Whether the unit keeps per-key state (checkpointed, snapshotted when it moves).
    pub fn is_keyed(&self) -> bool {
        matches!(
            self,
            UnitStage::Window | UnitStage::Score | UnitStage::Keyed
        )
    }

    /// From the wire form (stage name, sink name).
    pub fn parse(stage: &str, sink: &str) -> Option<UnitStage> {
        Some(match stage {
            names::VALIDATE => UnitStage::Validate,
            names::WINDOW => UnitStage::Window,
            names::SCORE => UnitStage::Score,
            names::RULES => UnitStage::Rules,
            names::ALERT => UnitStage::Alert,
            names::KEYED => UnitStage::Keyed,
            names::SINK if !sink.is_empty() => UnitStage::Sink(sink.to_string()),
            names::UNROUTED => UnitStage::Unrouted,
            _ => return None,
        })
    }
}

/// Every role a worker can have.
pub const ROLES: [&str; 7] = [
    names::VALIDATE,
    names::KEYED,
    names::WINDOW,
    names::SCORE,
    names::RULES,
    names::ALERT,
    names::SINK,
];

/// The pipeline name of the cluster-wide unrouted unit.
pub const CLUSTER: &str = "_";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId {
    pub pipeline: String,
    pub stage: UnitStage,
    pub partition: u32,
}

impl UnitId {
    pub fn unrouted() -> UnitId {
        UnitId {
            pipeline: CLUSTER.to_string(),
            stage: UnitStage::Unrouted,
            partition: 0,
        }
    }

    /// A name usable as a NATS KV key and object name: `<pipeline>.<stage>.<partition>`, or
    /// `<pipeline>.sink.<name>`.
    pub fn key(&self) -> String {
        match &self.stage {
            UnitStage::Sink(name) => format!("{}.sink.{}", self.pipeline, kv_safe(name)),
            stage => format!("{}.{}.{}", self.pipeline, stage.name(), self.partition),
        }
    }
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.stage {
            UnitStage::Sink(name) => write!(f, "{}/sink/{name}", self.pipeline),
            stage => write!(f, "{}/{}/{}", self.pipeline, stage.name(), self.partition),
        }
    }
}

/// `s` with every character a NATS KV key cannot hold replaced by `_`.
pub fn kv_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Every unit a pipeline runs (see [`Topology`](crate::topology::Topology)).
pub fn units(pipeline: &Pipeline) -> Vec<UnitId> {
    crate::topology::Topology::of(pipeline).units
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kv_safe_and_stages_round_trip() {
        let u = UnitId {
            pipeline: "routes".into(),
            stage: UnitStage::Sink("ops hook.1".into()),
            partition: 0,
        };
        assert_eq!(u.key(), "routes.sink.ops_hook_1");
        assert_eq!(u.to_string(), "routes/sink/ops hook.1");
        for s in [
            "validate", "window", "score", "rules", "alert", "keyed", "unrouted",
        ] {
            assert_eq!(UnitStage::parse(s, "").unwrap().name(), s);
        }
        assert_eq!(
            UnitStage::parse("sink", "x"),
            Some(UnitStage::Sink("x".into()))
        );
        assert_eq!(UnitStage::parse("sink", ""), None);
        assert_eq!(UnitId::unrouted().key(), "_.unrouted.0");
    }
}
