//! What an envelope's positions mean in one pipeline version, and how an envelope of one
//! version is read by another: the rollout path.
//!
//! Envelopes carry rows by position (schema order), aggregates by declaration order, detector
//! scores and rule hits by index, all relative to the version named in `meta.version`. When a
//! new version rolls out, envelopes the old one wrote are still in flight (a backlog in
//! `anom.<p>.valid.<k>`, or between per-stage units). A [`Layout`] is the little a version
//! must leave behind so that any later (or earlier) version can read them: names and types in
//! order. [`Migration`] turns one layout into index maps against the running version once,
//! and [`Migration::apply`] moves an envelope over by name:
//!
//! - a field both versions have keeps its value (converted when its type changed, as the
//!   validate stage would convert it; a value the new type or bounds refuse becomes null);
//! - a field only the new version has takes its default, or null (the event was valid under
//!   the version in force when it arrived, so it is not refused for a field it could not know;
//!   the same holds for a field the new version derives with a UDF);
//! - a field only the old version had is dropped;
//! - aggregate values follow their definition (`source`), detector scores and rule hits their
//!   name; what the new version does not have is dropped, what it adds is null.
//!
//! The key stays the envelope's: the event is in the partition the old version put it in,
//! and the coordinator refuses a new version that changes the key field (as it refuses a
//! change of partitions).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use anom_lang::value::Value;

use crate::envelope::Envelope;
use crate::rejection::{RejectKind, Rejection};
use crate::schema::{FieldType, Raw};
use crate::{Pipeline, RuleKind};

/// The positions of one pipeline version's envelopes, by name. Stored as JSON (small, read
/// by people debugging a rollout too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub pipeline: String,
    pub version: String,
    /// Schema fields in row order (derived fields included): name and type name.
    pub fields: Vec<(String, String)>,
    /// The key field's name.
    pub key: String,
    /// Aggregates in declaration order, by definition (`NamedAggregate::source`).
    pub aggregates: Vec<String>,
    pub detectors: Vec<String>,
    pub rules: Vec<String>,
}

impl Layout {
    pub fn of(p: &Pipeline) -> Layout {
        Layout {
            pipeline: p.name.clone(),
            version: p.version.clone(),
            fields: p
                .schema
                .fields()
                .iter()
                .map(|f| (f.name.clone(), f.ty.name().to_string()))
                .collect(),
            key: p
                .schema
                .field(p.key)
                .map(|f| f.name.clone())
                .unwrap_or_default(),
            aggregates: p.aggregates.iter().map(|a| a.source.clone()).collect(),
            detectors: p.detectors.iter().map(|d| d.name.clone()).collect(),
            rules: p.rules.iter().map(|r| r.name.clone()).collect(),
        }
    }

    /// The key a layout is stored under: `<pipeline>.<version>` (both are valid key tokens:
    /// pipeline names are letters, digits, `_` and `-`; versions are hex).
    pub fn key_of(pipeline: &str, version: &str) -> String {
        format!("{pipeline}.{version}")
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Layout> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Where a new field's value comes from.
#[derive(Debug, Clone, PartialEq)]
enum FieldMove {
    /// The old row's value at this index, as is.
    Keep(usize),
    /// The old row's value at this index, converted to the new field's type.
    Convert(usize),
    /// Not in the old version: the field's default (or null).
    Fill(Value),
}

/// How envelopes of one version read in another, computed once per pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    pub from: String,
    /// Nothing moves: same fields, aggregates, detectors and rules in the same order (a
    /// threshold, a message or a sink changed).
    identity: bool,
    fields: Vec<FieldMove>,
    /// For each new aggregate, its index in the old envelope's enrichment.
    aggregates: Vec<Option<usize>>,
    /// For each old detector index, the new one.
    detectors: Vec<Option<u32>>,
    /// For each old rule index, the new one.
    rules: Vec<Option<u32>>,
}

fn field_type(name: &str) -> Option<FieldType> {
    [
        FieldType::Str,
        FieldType::Int,
        FieldType::Float,
        FieldType::Bool,
        FieldType::Timestamp,
        FieldType::Enum,
    ]
    .into_iter()
    .find(|t| t.name() == name)
}

impl Migration {
    /// From envelopes laid out as `old` to `new`.
    pub fn between(old: &Layout, new: &Pipeline) -> Migration {
        let fields = new
            .schema
            .fields()
            .iter()
            .map(
                |f| match old.fields.iter().position(|(n, _)| *n == f.name) {
                    Some(i) if field_type(&old.fields[i].1) == Some(f.ty) => FieldMove::Keep(i),
                    // Enum and string travel alike; the allowed values may differ.
                    Some(i) => FieldMove::Convert(i),
                    None => FieldMove::Fill(f.default.clone()),
                },
            )
            .collect::<Vec<_>>();
        let aggregates = new
            .aggregates
            .iter()
            .map(|a| old.aggregates.iter().position(|o| *o == a.source))
            .collect::<Vec<_>>();
        let index_by_name = |names: &[String], new_names: &mut dyn Iterator<Item = &str>| {
            let new_names: Vec<&str> = new_names.collect();
            names
                .iter()
                .map(|n| new_names.iter().position(|m| m == n).map(|i| i as u32))
                .collect::<Vec<_>>()
        };
        let detectors = index_by_name(
            &old.detectors,
            &mut new.detectors.iter().map(|d| d.name.as_str()),
        );
        let rules = index_by_name(&old.rules, &mut new.rules.iter().map(|r| r.name.as_str()));
        let identity = fields
            .iter()
            .enumerate()
            .all(|(i, m)| *m == FieldMove::Keep(i))
            && old.fields.len() == fields.len()
            && aggregates.iter().enumerate().all(|(i, a)| *a == Some(i))
            && old.aggregates.len() == aggregates.len()
            && detectors
                .iter()
                .enumerate()
                .all(|(i, d)| *d == Some(i as u32))
            && old.detectors.len() == new.detectors.len()
            && rules.iter().enumerate().all(|(i, r)| *r == Some(i as u32))
            && old.rules.len() == new.rules.len();
        Migration {
            from: old.version.clone(),
            identity,
            fields,
            aggregates,
            detectors,
            rules,
        }
    }

    /// Whether envelopes of the old version read unchanged.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// Moves `env` (decoded, of the old version) over to `new`; afterwards it reads as if
    /// `new` had written it. Never fails: what cannot be carried over is null or dropped.
    pub fn apply(&self, env: &mut Envelope, new: &Pipeline) {
        env.meta.version = new.version.clone();
        if self.identity {
            return;
        }
        let old = std::mem::take(&mut env.data);
        env.data = self
            .fields
            .iter()
            .zip(new.schema.fields())
            .map(|(m, f)| match m {
                FieldMove::Keep(i) => old.get(*i).cloned().unwrap_or(Value::Null),
                FieldMove::Convert(i) => match old.get(*i) {
                    Some(v) => f.accept(raw_of(v)).unwrap_or_else(|_| f.default.clone()),
                    None => f.default.clone(),
                },
                FieldMove::Fill(v) => v.clone(),
            })
            .collect();
        if !env.enrichment.is_empty() {
            let old = std::mem::take(&mut env.enrichment);
            env.enrichment = self
                .aggregates
                .iter()
                .map(|a| a.and_then(|i| old.get(i).cloned()).unwrap_or(Value::Null))
                .collect();
        }
        let a = &mut env.analysis;
        a.scores.retain_mut(
            |s| match self.detectors.get(s.detector as usize).copied().flatten() {
                Some(d) => {
                    s.detector = d;
                    true
                }
                None => false,
            },
        );
        a.hits.retain_mut(
            |h| match self.rules.get(h.rule as usize).copied().flatten() {
                Some(r) => {
                    h.rule = r;
                    true
                }
                None => false,
            },
        );
        // An absence detection names its rule in `hits` too; one whose rule is gone (or is
        // no longer an absence rule) carries nothing left to alert on, which the rules stage
        // already treats as nothing to do.
        if a.absence.is_some()
            && !a
                .hits
                .iter()
                .any(|h| matches!(new.rules[h.rule as usize].kind, RuleKind::Absence(_)))
        {
            a.absence = None;
        }
    }
}

/// Where the layouts of other versions are looked up (a JetStream KV bucket in a worker;
/// see `anom_operators::layouts`). Called off the hot path: once per version a stage meets.
pub trait LayoutSource: Send + Sync {
    fn layout(&self, pipeline: &str, version: &str) -> Option<Layout>;
}

/// A handle on the layouts of other versions; `Layouts::default()` knows none (backtests and
/// unit tests, which run one version).
#[derive(Clone, Default)]
pub struct Layouts(Option<Arc<dyn LayoutSource>>);

impl Layouts {
    pub fn new(source: Arc<dyn LayoutSource>) -> Layouts {
        Layouts(Some(source))
    }

    fn get(&self, pipeline: &str, version: &str) -> Option<Layout> {
        self.0.as_ref()?.layout(pipeline, version)
    }
}

impl std::fmt::Debug for Layouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Layouts(source)"
        } else {
            "Layouts(none)"
        })
    }
}

/// Opens the envelopes a stage reads, of its own version or of any other whose layout is
/// known; each other version's [`Migration`] is computed once.
#[derive(Debug, Default)]
pub struct Reader {
    layouts: Layouts,
    migrations: HashMap<String, Arc<Migration>>,
}

impl Reader {
    pub fn new(layouts: Layouts) -> Reader {
        Reader {
            layouts,
            migrations: HashMap::new(),
        }
    }

    /// Decodes an envelope and types its data per `pipeline`'s schema, moving it over from
    /// the version that wrote it if that is another. Refused as `envelope` only when it does
    /// not decode, or its version's layout is nowhere to be found.
    pub fn open(&mut self, pipeline: &Pipeline, payload: &[u8]) -> Result<Envelope, Rejection> {
        let mut env = Envelope::decode(payload)
            .map_err(|e| Rejection::new(RejectKind::Envelope, e.to_string()))?;
        if env.meta.version != pipeline.version {
            let migration = match self.migrations.get(&env.meta.version) {
                Some(m) => m.clone(),
                None => {
                    // Not cached when missing: a layout written a moment ago may not have
                    // reached this process's view of the bucket yet.
                    let layout = self
                        .layouts
                        .get(&pipeline.name, &env.meta.version)
                        .filter(|l| l.pipeline == pipeline.name)
                        .ok_or_else(|| {
                            Rejection::new(
                                RejectKind::Envelope,
                                format!(
                                    "envelope was validated by version {} of pipeline `{}`, whose layout is not known (this worker runs version {})",
                                    env.meta.version, pipeline.name, pipeline.version
                                ),
                            )
                        })?;
                    let m = Arc::new(Migration::between(&layout, pipeline));
                    self.migrations.insert(env.meta.version.clone(), m.clone());
                    m
                }
            };
            migration.apply(&mut env, pipeline);
        }
        pipeline.schema.retype(&mut env.data);
        Ok(env)
    }
}

/// A row value as the validate stage would have decoded it, for converting it to another
/// field type.
fn raw_of(v: &Value) -> Raw<'_> {
    match v {
        Value::Null => Raw::Null,
        Value::Bool(b) => Raw::Bool(*b),
        Value::Int(i) | Value::Timestamp(i) => Raw::Int(*i),
        Value::Float(f) => Raw::Float(*f),
        Value::Str(s) => Raw::Str(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Analysis, DetectorScore, Meta, RuleHit, ENVELOPE_VERSION};

    fn pipeline(yaml: &str) -> Pipeline {
        Pipeline::from_yaml(yaml).unwrap()
    }

    const V1: &str = r#"name: cards
key: card
schema:
  card: string
  amount: int
  country: string
  note: string
aggregates:
  n: count()
  total: sum(amount)
rules:
  - name: big
    when: amount > 1000
  - name: many
    when: n > 3
"#;

    fn envelope(p: &Pipeline, data: Vec<Value>, enrichment: Vec<Value>) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            meta: Meta {
                pipeline: p.name.clone(),
                version: p.version.clone(),
                key: "c1".into(),
                partition: 0,
                event_time: 1,
                ingest_time_us: 1,
                origin_seq: 7,
                origin_index: 0,
            },
            data,
            analysis: Analysis::default(),
            enrichment,
        }
    }

    #[test]
    fn a_threshold_change_reads_old_envelopes_unchanged() {
        let v1 = pipeline(V1);
        let v2 = pipeline(&V1.replace("amount > 1000", "amount > 500"));
        assert_ne!(v1.version, v2.version);
        let m = Migration::between(&Layout::of(&v1), &v2);
        assert!(m.is_identity());
        let mut env = envelope(
            &v1,
            vec![
                Value::from("c1"),
                Value::Int(700),
                Value::from("FR"),
                Value::Null,
            ],
            vec![],
        );
        let before = env.clone();
        m.apply(&mut env, &v2);
        assert_eq!(env.meta.version, v2.version);
        assert_eq!(env.data, before.data);
    }

    #[test]
    fn fields_move_by_name_new_ones_take_their_default_removed_ones_go_and_types_convert() {
        let v1 = pipeline(V1);
        // `note` removed, `channel` added with a default, `score` added without one, `amount`
        // now a float, `country` moved to the end.
        let v2 = pipeline(
            r#"name: cards
key: card
schema:
  card: string
  channel: {type: string, default: web}
  amount: float
  score: int
  country: string
aggregates:
  n: count()
  total: sum(amount)
rules:
  - name: big
    when: amount > 1000
"#,
        );
        let m = Migration::between(&Layout::of(&v1), &v2);
        assert!(!m.is_identity());
        let mut env = envelope(
            &v1,
            vec![
                Value::from("c1"),
                Value::Int(700),
                Value::from("FR"),
                Value::from("gift"),
            ],
            vec![],
        );
        m.apply(&mut env, &v2);
        assert_eq!(
            env.data,
            vec![
                Value::from("c1"),
                Value::from("web"),
                Value::Float(700.0),
                Value::Null,
                Value::from("FR"),
            ]
        );
    }

    #[test]
    fn a_value_the_new_type_refuses_becomes_the_default_not_a_refusal() {
        let v1 = pipeline(V1);
        let v2 = pipeline(&V1.replace("  country: string\n", "  country: {type: int, min: 0}\n"));
        let m = Migration::between(&Layout::of(&v1), &v2);
        let mut env = envelope(
            &v1,
            vec![
                Value::from("c1"),
                Value::Int(700),
                Value::from("FR"),
                Value::Null,
            ],
            vec![],
        );
        m.apply(&mut env, &v2);
        assert_eq!(env.data[2], Value::Null);
    }

    #[test]
    fn aggregates_follow_their_definition_and_scores_and_hits_their_name() {
        let v1 = pipeline(V1);
        // `total` changed (another field), `n` kept, `top` added first; rule `many` gone,
        // `big` second.
        let v2 = pipeline(
            r#"name: cards
key: card
schema:
  card: string
  amount: int
  country: string
  note: string
aggregates:
  top: max(amount)
  n: count()
  total: sum(amount) over 1h
rules:
  - name: first
    when: n == 1
  - name: big
    when: amount > 1000
"#,
        );
        let m = Migration::between(&Layout::of(&v1), &v2);
        let mut env = envelope(
            &v1,
            vec![
                Value::from("c1"),
                Value::Int(7000),
                Value::from("FR"),
                Value::Null,
            ],
            vec![Value::Int(4), Value::Int(9000)],
        );
        env.analysis.hits = vec![
            RuleHit {
                rule: 0,
                name: "big".into(),
            },
            RuleHit {
                rule: 1,
                name: "many".into(),
            },
        ];
        env.analysis.scores = vec![DetectorScore {
            detector: 0,
            score: 1.0,
            flagged: true,
            explanation: String::new(),
            contributions: vec![],
        }];
        m.apply(&mut env, &v2);
        assert_eq!(
            env.enrichment,
            vec![Value::Null, Value::Int(4), Value::Null]
        );
        assert_eq!(
            env.analysis.hits,
            vec![RuleHit {
                rule: 1,
                name: "big".into()
            }]
        );
        // v1 has no detectors: a score naming one is not carried (nothing to name in v2).
        assert!(env.analysis.scores.is_empty());
    }

    struct Known(Vec<Layout>);

    impl LayoutSource for Known {
        fn layout(&self, pipeline: &str, version: &str) -> Option<Layout> {
            self.0
                .iter()
                .find(|l| l.pipeline == pipeline && l.version == version)
                .cloned()
        }
    }

    #[test]
    fn a_reader_moves_known_versions_over_and_names_an_unknown_one() {
        let v1 = pipeline(V1);
        let v2 = pipeline(&V1.replace("  note: string\n", ""));
        let env = envelope(
            &v1,
            vec![
                Value::from("c1"),
                Value::Int(700),
                Value::from("FR"),
                Value::from("gift"),
            ],
            vec![],
        );
        let mut blind = Reader::default();
        let refused = blind.open(&v2, &env.encode()).unwrap_err();
        assert_eq!(refused.kind, RejectKind::Envelope);
        assert!(
            refused.reason.contains(&format!(
                "validated by version {} of pipeline `cards`, whose layout is not known",
                v1.version
            )),
            "{}",
            refused.reason
        );
        let mut reader = Reader::new(Layouts::new(Arc::new(Known(vec![Layout::of(&v1)]))));
        let moved = reader.open(&v2, &env.encode()).unwrap();
        assert_eq!(moved.meta.version, v2.version);
        assert_eq!(moved.data.len(), 3);
        // Its own version reads without a layout.
        let own = envelope(
            &v2,
            vec![Value::from("c2"), Value::Int(1), Value::Null],
            vec![],
        );
        assert_eq!(blind.open(&v2, &own.encode()).unwrap().data, own.data);
    }

    #[test]
    fn a_layout_round_trips_and_names_its_key() {
        let v1 = pipeline(V1);
        let l = Layout::of(&v1);
        assert_eq!(l.key, "card");
        assert_eq!(l.aggregates, vec!["count()", "sum(amount)"]);
        assert_eq!(Layout::decode(&l.encode()), Some(l.clone()));
        assert_eq!(
            Layout::key_of("cards", &v1.version),
            format!("cards.{}", v1.version)
        );
    }
}
