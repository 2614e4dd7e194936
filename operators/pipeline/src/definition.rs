//! The pipeline file as users write it (YAML), before any checking beyond its shape.
//!
//! Every struct denies unknown fields so a typo is an error, not a silently ignored line.
//! The doc comment of each field is its user documentation (see docs/pipelines.md).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::alert_policy::AlertsDef;
use super::condition::When;

/// One pipeline: what its events look like, how they are keyed, and what to alert on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineDef {
    /// Name used in subjects (`anom.<name>.in`): lowercase letters, digits, `_` and `-`.
    pub name: String,
    /// Free text shown in listings.
    #[serde(default)]
    pub description: Option<String>,
    /// The field events are grouped and partitioned by (a route, a user, a device).
    pub key: String,
    /// A timestamp field giving the event's own time; without it, ingest time is used.
    #[serde(default)]
    pub event_time: Option<String>,
    /// How many partitions keyed stages split the pipeline into (1..=1024).
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// The event's fields, in order: `name: type` or `name: {type, required, default, min, max, values}`.
    pub schema: OrderedMap<FieldSpec>,
    /// What to do with fields the schema does not declare: `ignore` (default) or `reject`.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// Largest accepted event, in bytes (default 65536); larger ones go to the dead-letter subject.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Conditions evaluated on every event.
    #[serde(default)]
    pub rules: Vec<RuleDef>,
    /// Where alerts go besides the pipeline's NATS alert subject.
    #[serde(default)]
    pub alerts: AlertsDef,
    /// Per-key aggregates, `name: <fn>(<field>) over <window>`, e.g. `tx_5m: count() over 5m`.
    /// Each event leaves the window stage with its key's values; rules use them by name.
    #[serde(default)]
    pub aggregates: OrderedMap<String>,
    /// "No event from a key for a while" rules.
    #[serde(default)]
    pub absence: Vec<AbsenceDef>,
    /// Time zone of calendar windows (IANA name, default UTC).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// How far behind the partition's newest event time an event may arrive and still count;
    /// later ones go to `anom.<name>.late` (default 1m).
    #[serde(default = "default_lateness", with = "anom_lang::duration")]
    pub allowed_lateness: Duration,
    /// How long the pipeline's raw events are kept for backtests (e.g. `30d`), in a history
    /// stream of its own. Unset: backtests read the shared ingest stream (kept 7 days).
    #[serde(default)]
    pub retention: Option<super::alert_policy::Dur>,
    /// Keyed state: checkpoints and eviction.
    #[serde(default)]
    pub state: StateDef,
    /// How the per-partition stages are run: fused into one unit (the default) or each as a
    /// unit of its own.
    #[serde(default)]
    pub units: UnitsDef,
    /// Detectors scoring every event: built-in online detectors that learn each key's usual
    /// behaviour (no training needed) and ONNX models. Rules can use their scores by name.
    #[serde(default)]
    pub detectors: Vec<DetectorDef>,
    /// How rule hits and detector flags become alerts.
    #[serde(default)]
    pub decision: DecisionDef,
    /// User-defined functions: compiled plugins (Arroyo `#[udf]` cdylibs, see docs/udfs.md)
    /// that `derive:` fields, rule conditions and `kind: udf` detectors call.
    #[serde(default)]
    pub udfs: Vec<UdfDef>,
    /// Fields computed from each event by a UDF after validation, before windows:
    /// `name: udf(field, ...)`, arguments being fields or earlier derived fields. Rules,
    /// aggregates, detectors and messages use them like any field. An event whose UDF call
    /// panics or returns null is dead-lettered.
    #[serde(default)]
    pub derive: OrderedMap<String>,
}

/// A user-defined function: a plugin library and the signature it must have.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdfDef {
    /// The name conditions and `derive:` call it by (letters, digits and `_`).
    pub name: String,
    /// The compiled library (`libmy_udf.so`): absolute, or relative to the working directory
    /// of the process that loads the pipeline. Loaded once per process.
    pub library: String,
    /// Argument types in order: string, int, float or bool (`&str`, `i64`, `f64`, `bool` in
    /// the plugin). Checked against the library when the pipeline loads.
    pub args: Vec<anom_udf::UdfType>,
    /// Result type: string, int, float or bool.
    pub returns: anom_udf::UdfType,
}

/// A detector: scores each event of a key against what is usual for it, or with a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorDef {
    /// Identifier, unique among fields, aggregates, rules and detectors; rules use the score
    /// by this name (`when: amount_unusual > 0.99 and amount > 100`).
    pub name: String,
    /// `auto` (the default: what to use when you do not know your data), `robust_zscore`,
    /// `ewma`, `cusum`, `seasonal`, `holt_winters`, `half_space_trees` (built in, per key),
    /// `onnx` (a model file) or `udf` (a user-defined function).
    #[serde(default = "default_detector_kind")]
    pub kind: String,
    /// The numeric field or aggregate a univariate detector watches.
    #[serde(default)]
    pub field: Option<String>,
    /// Numeric fields and aggregates, in order: the dimensions of `half_space_trees`, the
    /// input columns of an ONNX model.
    #[serde(default)]
    pub features: Vec<String>,
    /// `onnx`: the model file, relative to the models directory (by default the directory of
    /// the pipeline files). A new file at that path is loaded and swapped in while running.
    #[serde(default)]
    pub model: Option<String>,
    /// `udf`: the UDF (declared under `udfs:`) that scores each event in [0, 1] from
    /// `features`; a score outside [0, 1] dead-letters the event.
    #[serde(default)]
    pub udf: Option<String>,
    /// `onnx`: what the model outputs. `score` (default): a number per row, the first float
    /// output unless `score_output` names one; `label_score`: a label (the first int output,
    /// or `label_output`) that says anomalous when it equals `anomaly_label`, and a score;
    /// `reconstruction`: an autoencoder's reconstruction of its input, scored by the mean
    /// squared error.
    #[serde(default)]
    pub output: ModelOutput,
    #[serde(default)]
    pub score_output: Option<String>,
    #[serde(default)]
    pub label_output: Option<String>,
    /// `label_score`: the label of anomalies (default -1, as scikit-learn's IsolationForest).
    #[serde(default = "default_anomaly_label")]
    pub anomaly_label: i64,
    /// Whether high scores (default) or low ones are anomalous: scikit-learn's
    /// `decision_function` is low for anomalies (`anomalous: below`, `threshold: 0`).
    #[serde(default)]
    pub anomalous: Direction,
    /// Score at which an event is flagged. Built-in detectors score in [0, 1] and have a
    /// default; an `onnx` detector with `output: score` or `reconstruction` needs one.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Events a key must have seen before its built-in detector scores (each kind has a default).
    #[serde(default)]
    pub warmup: Option<u32>,
    /// After an alert of a key, how long (in event time) its next episodes stay silent:
    /// `12h` by default for built-in kinds, `0s` for models and UDFs.
    #[serde(default, deserialize_with = "optional_duration")]
    pub cooldown: Option<Duration>,
    /// The detector's own settings (see docs/detectors.md); every one has a default.
    #[serde(default)]
    pub params: serde_json::Value,
    /// Severity of its alerts: info, warning (default) or critical.
    #[serde(default)]
    pub severity: Severity,
    /// Alert text; `{field}`, `{key}`, `{rule}` (the detector) and `{severity}` are available.
    #[serde(default)]
    pub message: Option<String>,
    /// Labels copied onto every alert of this detector.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    anom_lang::duration::deserialize(d).map(Some)
}

fn default_detector_kind() -> String {
    "auto".into()
}

fn default_anomaly_label() -> i64 {
    -1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelOutput {
    #[default]
    Score,
    LabelScore,
    Reconstruction,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Above,
    Below,
}

/// Which causes raise alerts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionDef {
    /// `any` (default): every rule hit and every flagged detector alerts. `rules`: only rules
    /// alert, detectors just score (shadow mode; rules may still use the scores). `detectors`:
    /// only detectors alert. `both`: an event alerts only when a rule hit it and a detector
    /// flagged it.
    #[serde(default)]
    pub alert_on: AlertOn,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertOn {
    #[default]
    Any,
    Rules,
    Detectors,
    Both,
}

impl AlertOn {
    pub fn rules_alert(self) -> bool {
        self != AlertOn::Detectors
    }

    pub fn detectors_alert(self) -> bool {
        self != AlertOn::Rules
    }
}

fn default_timezone() -> String {
    "UTC".into()
}

fn default_lateness() -> Duration {
    Duration::from_secs(60)
}

/// An absence rule: fires once when a key sends nothing for `after`, resolves when it
/// sends again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbsenceDef {
    /// Identifier, unique among the pipeline's rules.
    pub name: String,
    /// How long a key may stay silent.
    #[serde(with = "anom_lang::duration")]
    pub after: Duration,
    /// Keys watched from the start, even before they send anything.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Instead of silence, watch a field that stops changing: fires when the key keeps
    /// sending but this field has kept one value for `after` (a stuck sensor).
    #[serde(default)]
    pub stale: Option<String>,
    /// `processing` (default: wall clock, live) or `event` (event time, for replays).
    #[serde(default)]
    pub clock: Clock,
    #[serde(default = "critical")]
    pub severity: Severity,
    /// Alert text; `{key}`, `{rule}`, `{severity}` and `{silence}` (how long) are available.
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn critical() -> Severity {
    Severity::Critical
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    #[default]
    Processing,
    Event,
}

/// Keyed state settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDef {
    /// How often changed state is checkpointed to disk (default 1s).
    #[serde(default = "default_checkpoint_interval", with = "anom_lang::duration")]
    pub checkpoint_interval: Duration,
    /// Checkpoint sooner once this many keys changed (default 100000).
    #[serde(default = "default_checkpoint_keys")]
    pub checkpoint_max_keys: usize,
    /// Forget a key this long after its last event, beyond what its windows need
    /// (default 30d; windowless aggregates like `prev` keep a key this long).
    #[serde(default = "default_ttl", with = "anom_lang::duration")]
    pub ttl: Duration,
}

impl Default for StateDef {
    fn default() -> Self {
        StateDef {
            checkpoint_interval: default_checkpoint_interval(),
            checkpoint_max_keys: default_checkpoint_keys(),
            ttl: default_ttl(),
        }
    }
}

/// How the per-partition stages (window, score, rules, alert) form units of work.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitsDef {
    /// One unit per partition runs every stage in-process, with one input and one
    /// checkpoint (default `true`). `false`: each stage is a unit of its own, reading the
    /// previous one's output from JetStream, so that `score` can run on other workers than
    /// `window` (a worker role each) at the cost of a JetStream hop per stage.
    #[serde(default = "default_true")]
    pub fused: bool,
    /// Also write every event as the rules see it (its fields, its key's aggregates and the
    /// detectors' scores) to `anom.<name>.enriched.<partition>`, for consumers of your own
    /// (default `false`; per-stage units write it anyway). Needs aggregates, absence rules
    /// or detectors.
    #[serde(default)]
    pub publish_enriched: bool,
    /// Keep each partition's events in ingest order through a NATS failover (default
    /// `false`): validate's writes are chained, so those lost in a failover are stored again
    /// before any later one. The price is availability while a server fails over: a
    /// partition's later events wait (docs/architecture.md, "Failover and order").
    #[serde(default)]
    pub ordered: bool,
}

impl Default for UnitsDef {
    fn default() -> Self {
        UnitsDef {
            fused: true,
            publish_enriched: false,
            ordered: false,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_checkpoint_keys() -> usize {
    100_000
}
fn default_ttl() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_partitions() -> u32 {
    4
}

fn default_max_event_bytes() -> usize {
    65_536
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    #[default]
    Ignore,
    Reject,
}

/// A field's declaration; a bare type name (`route: string`) is the short form.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    /// One of string, int, float, bool, timestamp, enum.
    #[serde(rename = "type")]
    pub ty: TypeName,
    /// Events without this field (or with null) are rejected.
    #[serde(default)]
    pub required: bool,
    /// Value used when the field is missing or null.
    #[serde(default)]
    pub default: Option<serde_norway::Value>,
    /// Smallest allowed value (int and float fields).
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest allowed value (int and float fields).
    #[serde(default)]
    pub max: Option<f64>,
    /// Allowed values: required for `enum`, optional for `string`.
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypeName {
    String,
    Int,
    Float,
    Bool,
    Timestamp,
    Enum,
}

impl TypeName {
    pub fn name(self) -> &'static str {
        match self {
            TypeName::String => "string",
            TypeName::Int => "int",
            TypeName::Float => "float",
            TypeName::Bool => "bool",
            TypeName::Timestamp => "timestamp",
            TypeName::Enum => "enum",
        }
    }
}

/// `FieldDef` or its short form, a bare type name.
#[derive(Debug, Clone)]
pub struct FieldSpec(pub FieldDef);

impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a type name (string, int, float, bool, timestamp, enum) or a map with `type`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldSpec, E> {
                let ty = TypeName::deserialize(de::value::StrDeserializer::<E>::new(v))?;
                Ok(FieldSpec(FieldDef {
                    ty,
                    required: false,
                    default: None,
                    min: None,
                    max: None,
                    values: None,
                    description: None,
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldSpec, A::Error> {
                FieldDef::deserialize(de::value::MapAccessDeserializer::new(map)).map(FieldSpec)
            }
        }
        d.deserialize_any(V)
    }
}

/// A rule: a condition on one event, and how to word the alert it raises.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Identifier of the rule, unique in the pipeline.
    pub name: String,
    /// The condition: an expression (`durationMs > 5000 and status == 'OK'`), or a
    /// structured condition (`{type: field_compare, field: durationMs, op: ">", value: 5000}`)
    /// that is translated into one when the pipeline loads (see `condition`).
    pub when: When,
    /// info, warning (default) or critical.
    #[serde(default)]
    pub severity: Severity,
    /// Alert text; `{field}` inserts a field's value, `{key}`, `{rule}` and `{severity}` too.
    #[serde(default)]
    pub message: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Labels copied onto every alert of this rule.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Fire only once the condition has held for a key this long (event time), e.g. `5m`.
    #[serde(default, rename = "for")]
    pub for_: Option<super::alert_policy::Dur>,
    /// Keep firing this long after the condition stopped holding (damps flapping).
    #[serde(default)]
    pub keep_firing_for: Option<super::alert_policy::Dur>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

/// A YAML mapping that keeps its keys in file order (the schema's field order matters).
#[derive(Debug, Clone)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of names to declarations")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, V)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!(
                            "field `{key}` is declared twice"
                        )));
                    }
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(OrderedMap(entries))
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}
