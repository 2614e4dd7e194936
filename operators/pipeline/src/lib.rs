//! Pipelines: the definition a user writes (`definition`), checked and compiled into the
//! plan the operators run (`Pipeline`). Parsing and checking happen here, once; the hot path
//! only sees typed, compiled parts.
//!
//! Also here, because every part of Anom speaks them: what flows between units ([`event`]
//! decoding raw input against the schema, the [`envelope`] between stages), the vocabulary of
//! refusals ([`rejection`]), the subjects and units a pipeline runs as ([`subjects`],
//! [`unit`]), and label [`matcher`]s.

pub mod alert_policy;
pub mod compile;
pub mod condition;
pub mod csv;
pub mod definition;
pub mod detectors;
pub mod diagnostics;
pub mod envelope;
pub mod event;
pub mod layout;
pub mod lower;
pub mod matcher;
mod position;
pub mod rejection;
pub mod schema;
pub mod scope;
pub mod sinks;
pub mod subjects;
pub mod template;
pub mod topology;
pub mod udfs;
pub mod unit;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use alert_policy::{AlertPolicy, Grouping, Inhibit, Route};
pub use compile::compile;
pub use condition::{CompareOp, Condition, Scalar, When};
pub use definition::{
    AlertOn, Clock, Direction, ModelOutput, PipelineDef, Severity, StateDef, UnitsDef,
};
pub use detectors::{DetectorKind, DetectorSpec, ModelRef};
pub use schema::{Field, FieldType, Schema};
pub use scope::RowScope;
pub use sinks::{
    EmailDef, PagerDutyDef, RateLimit, Retry, Secret, SinkDef, SlackDef, SmtpDef, SmtpTls,
    WebhookDef,
};
pub use template::Template;

use std::time::Duration;

use crate::diagnostics::Diagnostics;
use crate::subjects::Subjects;
use anom_lang::aggregate::Aggregate;
use anom_lang::expr::CompiledExpr;

/// A compiled, checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// Content hash of the definition, so outputs can say which version produced them.
    pub version: String,
    pub description: Option<String>,
    pub schema: Schema,
    /// Index of the key field in the schema.
    pub key: usize,
    /// Index of the event-time field, if any.
    pub event_time: Option<usize>,
    pub partitions: u32,
    pub max_event_bytes: usize,
    /// Condition rules first, then absence rules; a hit names a rule by its index here.
    pub rules: Vec<Rule>,
    pub sinks: Vec<SinkDef>,
    /// The compiled `alerts:` section: alert labels, routes, inhibitions.
    pub alerting: AlertPolicy,
    pub subjects: Subjects,
    /// Per-key aggregates, in declaration order: the envelope's `enrichment` holds their
    /// values in this order, after the schema's fields in the rules' rows.
    pub aggregates: Vec<NamedAggregate>,
    /// Names rules and messages can use: fields, then aggregates, then detector scores.
    pub scope: RowScope,
    /// Detectors in declaration order: `analysis.scores` names them by index here.
    pub detectors: Vec<DetectorSpec>,
    /// Which causes raise alerts.
    pub alert_on: AlertOn,
    /// Fields the validate stage computes with UDFs, in order (a derive may read earlier
    /// ones): `derive:` entries, UDF calls in conditions, `kind: udf` detectors' scores.
    pub derives: Vec<udfs::Derive>,
    pub allowed_lateness: Duration,
    pub timezone: String,
    pub state: StateDef,
    /// Fused into one unit per partition, or a unit per stage.
    pub units: UnitsDef,
    /// How long the raw events are kept for backtests (a history stream); `None`: no own
    /// history.
    pub retention: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// The condition as written (empty for absence rules), for explanations.
    pub when: String,
    pub severity: Severity,
    pub message: Template,
    pub labels: BTreeMap<String, String>,
    pub kind: RuleKind,
    /// How long the condition must hold for a key (in event time) before the alert fires.
    pub for_: Duration,
    /// How long the alert keeps firing after the condition stopped holding.
    pub keep_firing_for: Duration,
}

#[derive(Debug, Clone)]
pub enum RuleKind {
    /// Evaluated on every event by the rules stage.
    Condition(CompiledExpr),
    /// Fired by the window stage's timers when a key goes silent.
    Absence(Absence),
}

#[derive(Debug, Clone)]
pub struct Absence {
    pub after: Duration,
    pub keys: Vec<String>,
    pub clock: Clock,
    /// For `stale:` rules, the schema index of the field that must keep changing.
    pub stale: Option<usize>,
}

impl Rule {
    pub fn condition(&self) -> Option<&CompiledExpr> {
        match &self.kind {
            RuleKind::Condition(c) => Some(c),
            RuleKind::Absence(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NamedAggregate {
    /// The name rules use (for an inline aggregate, the hidden identifier that replaced it).
    pub name: String,
    /// As written, for messages and listings.
    pub source: String,
    /// Written inline in a rule rather than declared under `aggregates:`.
    pub inline: bool,
    pub aggregate: Aggregate,
}

impl NamedAggregate {
    /// How people see it: its name, or for an inline aggregate its text.
    pub fn display(&self) -> &str {
        if self.inline {
            &self.source
        } else {
            &self.name
        }
    }
}

impl Pipeline {
    /// Whether the pipeline runs the score stage.
    pub fn has_detectors(&self) -> bool {
        !self.detectors.is_empty()
    }

    /// The length of the rows detectors read: fields, then aggregates.
    pub fn enriched_width(&self) -> usize {
        self.schema.len() + self.aggregates.len()
    }

    /// Whether the pipeline needs the keyed window stage (aggregates or absence rules).
    pub fn is_keyed(&self) -> bool {
        !self.aggregates.is_empty()
            || self
                .rules
                .iter()
                .any(|r| matches!(r.kind, RuleKind::Absence(_)))
    }
}

/// One problem in a pipeline definition, located as precisely as the source allows.
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionError {
    pub file: Option<PathBuf>,
    /// Where in the definition: `rules[2].when`, `schema.amount.min`.
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(col) = self.column {
                    write!(f, ":{col}")?;
                }
            }
            f.write_str(": ")?;
        } else if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_empty() && self.path != "." {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one definition (all of them, not just the first).
#[derive(Debug, Clone, thiserror::Error)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Pipeline {
    /// Reads and compiles one pipeline file.
    pub fn load(path: &Path) -> Result<Pipeline, DefinitionErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            DefinitionErrors(vec![DefinitionError {
                file: Some(path.to_path_buf()),
                path: String::new(),
                line: None,
                column: None,
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        Self::from_yaml(&text).map_err(|mut errors| {
            for e in &mut errors.0 {
                e.file = Some(path.to_path_buf());
            }
            errors
        })
    }

    /// Parses and compiles a definition given as YAML text.
    pub fn from_yaml(text: &str) -> Result<Pipeline, DefinitionErrors> {
        if text.len() > MAX_DEFINITION_BYTES {
            return Err(DefinitionErrors(vec![DefinitionError {
                file: None,
                path: String::new(),
                line: None,
                column: None,
                message: format!(
                    "the definition is {} bytes: expected at most {MAX_DEFINITION_BYTES} (the coordinator stores every version and each worker loads it); split it into several pipelines",
                    text.len()
                ),
            }]));
        }
        // serde_norway's messages already name the path (`rules[2]: unknown field ...`).
        let def: PipelineDef = serde_norway::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (Some(l.line()), Some(l.column())))
                .unwrap_or((None, None));
            DefinitionErrors(vec![DefinitionError {
                file: None,
                path: String::new(),
                line,
                column,
                message: strip_location(&e.to_string()),
            }])
        })?;
        compile(&def, text)
    }
}

/// Problems found after compiling (e.g. by `model_registry::check_models`), located in
/// `source` the way the compiler locates its own.
pub fn located(problems: Vec<(String, String)>, source: &str) -> DefinitionErrors {
    let mut diags = Diagnostics::new(source);
    for (path, message) in problems {
        diags.report(path, message);
    }
    diags.finish().err().unwrap_or(DefinitionErrors(Vec::new()))
}

/// A pipeline version: the first 8 bytes (hex) of the SHA-256 of the definition's canonical
/// form — its YAML parsed into a document and written back as JSON, so comments, layout and
/// quoting do not make a new version, while every value and the order of every mapping (the
/// schema's order is the rows' layout) do. The same text gives the same version on every
/// process and every release; a coordinator also numbers the versions it stores (v1, v2, …).
pub fn version_of(source: &str) -> String {
    use sha2::Digest as _;
    let canonical = serde_norway::from_str::<serde_norway::Value>(source)
        .ok()
        .and_then(|doc| serde_json::to_vec(&doc).ok())
        .unwrap_or_else(|| source.as_bytes().to_vec());
    let digest = sha2::Sha256::digest(&canonical);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// serde_norway appends " at line L column C" to messages; we report the location apart.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// The largest definition accepted, comments included (256 KiB: thousands of rules).
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;

/// Why `name` is refused when pipeline `other` exists.
pub fn collision_message(name: &str, other: &str) -> String {
    format!(
        "pipeline `{name}` would share its streams (ANOM_{}_…) with pipeline `{other}`: names that differ only in `-` and `_` map to the same streams; choose another name",
        subjects::stream_token(name)
    )
}

/// Pipeline, rule and sink names end up in NATS subjects and consumer names.
pub fn valid_pipeline_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Loads every `*.yaml`/`*.yml` file in a directory, sorted by file name. All files are
/// checked; any error fails the whole load.
pub fn load_dir(dir: &Path) -> Result<Vec<Pipeline>, DefinitionErrors> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            DefinitionErrors(vec![DefinitionError {
                file: Some(dir.to_path_buf()),
                path: String::new(),
                line: None,
                column: None,
                message: format!("cannot read the pipelines directory: {e}"),
            }])
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    let mut pipelines: Vec<Pipeline> = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match Pipeline::load(&path) {
            Ok(p) => {
                if pipelines.iter().any(|q| q.name == p.name) {
                    errors.push(DefinitionError {
                        file: Some(path.clone()),
                        path: "name".into(),
                        line: None,
                        column: None,
                        message: format!("pipeline `{}` is defined by another file too", p.name),
                    });
                } else if let Some(other) =
                    subjects::stream_collision(&p.name, pipelines.iter().map(|q| q.name.as_str()))
                {
                    errors.push(DefinitionError {
                        file: Some(path.clone()),
                        path: "name".into(),
                        line: None,
                        column: None,
                        message: collision_message(&p.name, other),
                    });
                }
                pipelines.push(p)
            }
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(pipelines)
    } else {
        Err(DefinitionErrors(errors))
    }
}

#[cfg(test)]
mod tests;
