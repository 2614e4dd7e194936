//! Pipelines: the definition a user writes (`definition`), checked and compiled into the
//! plan the operators run (`Pipeline`). Parsing and checking happen here, once; the hot path
//! only sees typed, compiled parts.
//!
//! Also here, because every part of Anom speaks them: what flows between units ([`event`]
//! decoding raw input against the schema, the [`envelope`] between stages), the vocabulary of
//! refusals ([`rejection`]), the subjects and units a pipeline runs as ([`subjects`],
//! [`unit`]), and label [`matcher`]s.

pub mod alert_policy;
pub mod condition;
pub mod definition;
pub mod detectors;
pub mod diagnostics;
pub mod envelope;
pub mod event;
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
pub use condition::{CompareOp, Condition, Scalar, When};
pub use definition::{AlertOn, Clock, Direction, ModelOutput, PipelineDef, Severity, StateDef};
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
use anom_lang::aggregate::{self, Aggregate};
use anom_lang::expr::{self, CompiledExpr};

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

/// Checks a parsed definition and builds the plan. `source` (the YAML text, if any) is only
/// used to point errors at a line.
pub fn compile(def: &PipelineDef, source: &str) -> Result<Pipeline, DefinitionErrors> {
    let mut diags = Diagnostics::new(source);

    if !valid_pipeline_name(&def.name) {
        diags.report("name", format!("`{}` is not a valid pipeline name: expected lowercase letters, digits, `_` and `-` (it becomes part of NATS subjects)", def.name));
    }
    if def.partitions == 0 || def.partitions > 1024 {
        diags.report(
            "partitions",
            format!(
                "expected a partition count between 1 and 1024, found {}",
                def.partitions
            ),
        );
    }
    if def.max_event_bytes < 64 {
        diags.report(
            "max_event_bytes",
            format!("expected at least 64 bytes, found {}", def.max_event_bytes),
        );
    }
    let field_defs: Vec<(String, definition::FieldDef)> = def
        .schema
        .0
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let mut schema = schema::compile(&field_defs, def.unknown_fields, &mut diags);
    let names: Vec<&str> = def.schema.0.iter().map(|(k, _)| k.as_str()).collect();
    let key = names.iter().position(|n| *n == def.key);
    if key.is_none() {
        diags.report(
            "key",
            format!(
                "unknown field `{}`{}",
                def.key,
                anom_lang::suggest::did_you_mean(&def.key, names.iter().copied())
            ),
        );
    }
    let mut event_time = None;
    if let Some(et) = &def.event_time {
        match names.iter().position(|n| n == et) {
            None => diags.report(
                "event_time",
                format!(
                    "unknown field `{et}`{}",
                    anom_lang::suggest::did_you_mean(et, names.iter().copied())
                ),
            ),
            Some(i) => {
                let ty = def.schema.0[i].1 .0.ty;
                if ty != definition::TypeName::Timestamp {
                    diags.report(
                        "event_time",
                        format!(
                            "field `{et}` must be of type timestamp, found {}",
                            ty.name()
                        ),
                    );
                }
                event_time = Some(i);
            }
        }
    }

    if jiff::tz::TimeZone::get(&def.timezone).is_err() {
        diags.report(
            "timezone",
            format!(
                "unknown time zone `{}`: expected an IANA name such as Europe/Berlin or UTC",
                def.timezone
            ),
        );
    }
    // UDFs: loaded and checked once; every use becomes a derived field (see `udfs`).
    let loaded = udfs::load(&def.udfs, &mut diags);
    let declared_udfs: Vec<(&str, anom_udf::UdfType)> = def
        .udfs
        .iter()
        .map(|u| (u.name.as_str(), u.returns))
        .collect();
    let udf_names: Vec<&str> = declared_udfs.iter().map(|(name, _)| *name).collect();
    let mut derives = Vec::new();
    let mut detector_scores = vec![None; def.detectors.len()];
    let derive_uses = udfs::derive_uses(&def.derive.0, &mut diags);
    let detector_uses = udfs::detector_uses(&def.detectors, &mut diags);
    if let Some(schema) = &mut schema {
        for u in &derive_uses {
            if let Some(d) = udfs::compile_use(u, &loaded, &declared_udfs, schema, &mut diags) {
                derives.push(d);
            }
        }
        for (i, u) in &detector_uses {
            if let Some(d) = udfs::compile_use(u, &loaded, &declared_udfs, schema, &mut diags) {
                detector_scores[*i] = Some(d.field);
                derives.push(d);
            }
        }
    }
    // Structured conditions become expressions here, once; from now on they are text like
    // any other, but each leaf is also kept on its own to report problems at its keys.
    let structured: Vec<Option<(String, Vec<condition::Leaf>)>> = def
        .rules
        .iter()
        .map(|r| match &r.when {
            When::Expr(_) => None,
            When::Structured(c) => Some(c.leaves()),
        })
        .collect();
    let texts: Vec<String> = def
        .rules
        .iter()
        .zip(&structured)
        .map(|(r, s)| {
            s.as_ref()
                .map_or_else(|| r.when.to_expr(), |(t, _)| t.clone())
        })
        .collect();
    // Parse every condition once; what it asks to be computed (inline aggregates, UDF
    // calls) is lowered below into hidden aggregates and derived fields (see `lower`). A
    // parse error is reported where the rule is compiled, in the rules' order.
    let parsed: Vec<Result<expr::Ast, expr::ExprError>> =
        texts.iter().map(|t| expr::parse(t)).collect();
    let needs: Vec<lower::Needs> = parsed
        .iter()
        .map(|ast| {
            ast.as_ref().map_or_else(
                |_| lower::Needs::default(),
                |ast| lower::needs(ast, &udf_names),
            )
        })
        .collect();
    // UDF calls in conditions become hidden derived fields, computed in batches by validate.
    let mut called: Vec<&str> = Vec::new();
    for (rule, need) in needs.iter().enumerate() {
        for call in &need.calls {
            if called.contains(&call.text.as_str()) {
                continue;
            }
            called.push(&call.text);
            let Some(schema) = &mut schema else { continue };
            let path = format!("rules[{rule}].when");
            if let Some(bad) = call.args.iter().find_map(|a| a.as_ref().err()) {
                diags.report(
                    path,
                    format!(
                        "the arguments of a UDF call are fields, found `{bad}` in `{}`",
                        call.text
                    ),
                );
                continue;
            }
            let u = udfs::Use {
                name: call.text.clone(),
                hidden: true,
                args: call
                    .args
                    .iter()
                    .flatten()
                    .map(|f| (f.clone(), path.clone()))
                    .collect(),
                path,
                udf: call.udf.clone(),
                score: false,
                source: call.text.clone(),
            };
            if let Some(d) = udfs::compile_use(&u, &loaded, &declared_udfs, schema, &mut diags) {
                derives.push(d);
            }
        }
    }
    // The aggregates of `aggregate_compare` leaves are checked against the schema first, so
    // that their problems name the leaf's keys; a rule with such a problem goes no further.
    let mut rule_failed = vec![false; def.rules.len()];
    if let Some(schema) = &schema {
        for (i, leaves) in structured.iter().enumerate() {
            for leaf in leaves.iter().flat_map(|(_, leaves)| leaves) {
                if let Err((key, message)) =
                    check_aggregate_leaf(leaf, schema, &names, &def.timezone)
                {
                    diags.report(format!("rules[{i}].when{}{key}", leaf.path), message);
                    rule_failed[i] = true;
                }
            }
        }
    }
    // Inline aggregates (`sum(amount) over 1d > 2000`) become hidden ones, named by their
    // text; see `lower`.
    let mut declared: Vec<(String, String, String, bool)> = Vec::new();
    for (name, text) in &def.aggregates.0 {
        declared.push((
            name.clone(),
            text.clone(),
            format!("aggregates.{name}"),
            false,
        ));
    }
    for (rule, need) in needs.iter().enumerate() {
        if rule_failed[rule] {
            continue;
        }
        for spec in &need.aggregates {
            if declared
                .iter()
                .any(|(name, _, _, inline)| *inline && name == spec)
            {
                continue;
            }
            let mut path = format!("rules[{rule}].when");
            // In a structured condition, the aggregate was written in an `expr` leaf (those
            // of `aggregate_compare` leaves were checked above).
            if let Some(leaf) =
                structured
                    .get(rule)
                    .and_then(Option::as_ref)
                    .and_then(|(_, leaves)| {
                        leaves
                            .iter()
                            .find(|l| l.written && l.text.contains(spec.as_str()))
                    })
            {
                path = format!("{path}{}.expr", leaf.path);
            }
            declared.push((spec.clone(), spec.clone(), path, true));
        }
    }
    let mut aggregates = Vec::new();
    // Inline aggregates already reported as invalid: the rules using them are not compiled,
    // or each would add a confusing second error about the same text.
    let mut failed_inline: Vec<&str> = Vec::new();
    let mut aggregate_names: Vec<&str> = Vec::new();
    for (name, text, path, is_inline) in &declared {
        let compiled_before = aggregates.len();
        let path = path.clone();
        if !is_inline {
            if !schema::valid_field_name(name) {
                diags.report(path.clone(), format!("`{name}` is not a valid aggregate name: expected letters, digits and `_`, not starting with a digit"));
            }
            if names.contains(&name.as_str()) || aggregate_names.contains(&name.as_str()) {
                diags.report(
                    path.clone(),
                    format!("`{name}` is already the name of a field or aggregate"),
                );
            }
        }
        aggregate_names.push(name);
        let Some(schema) = &schema else { continue };
        let spec = match aggregate::parse_spec(text, &def.timezone) {
            Ok(spec) => spec,
            Err(e) => {
                diags.report_in(path, e.to_string(), text.as_str(), e.column);
                continue;
            }
        };
        let field = match spec.field.as_deref() {
            None => None,
            Some(f) => match schema.index_of(f) {
                Some(i) => Some((i, schema.fields()[i].ty.value_type())),
                None => {
                    diags.report_in(
                        path,
                        format!(
                            "unknown field `{f}`{}",
                            anom_lang::suggest::did_you_mean(f, names.iter().copied())
                        ),
                        text.as_str(),
                        1,
                    );
                    continue;
                }
            },
        };
        // Late-but-allowed events must still find their panes.
        match Aggregate::compile(&spec, field).map(|a| a.with_lateness(def.allowed_lateness)) {
            Ok(aggregate) => aggregates.push(NamedAggregate {
                name: name.clone(),
                source: text.clone(),
                inline: *is_inline,
                aggregate,
            }),
            Err(e) => diags.report_in(path, e, text.as_str(), 1),
        }
        if *is_inline && aggregates.len() == compiled_before {
            failed_inline.push(name.as_str());
        }
    }
    let scope = schema
        .as_ref()
        .map(|schema| RowScope::new(schema, &aggregates));
    // Detectors read fields and aggregates; rules and messages can also use their scores.
    let detectors = match &scope {
        Some(scope) => detectors::compile(&def.detectors, scope, &detector_scores, &mut diags),
        None => Vec::new(),
    };
    let scope = scope.map(|s| s.with_detectors(&detectors));

    let mut rules = Vec::new();
    let mut rule_names: Vec<String> = Vec::new();
    let mut check_rule_name = |path: &str, name: &'_ str, diags: &mut Diagnostics| {
        if !valid_pipeline_name(name) {
            diags.report(format!("{path}.name"), format!("`{name}` is not a valid rule name: expected lowercase letters, digits, `_` and `-`"));
        }
        if rule_names.iter().any(|n| n == name) {
            diags.report(
                format!("{path}.name"),
                format!("rule `{name}` is declared twice"),
            );
        }
        rule_names.push(name.to_string());
    };
    for (i, r) in def.rules.iter().enumerate() {
        let path = format!("rules[{i}]");
        check_rule_name(&path, &r.name, &mut diags);
        let Some(scope) = &scope else { continue };
        let uses_failed = |need: &lower::Needs| {
            need.aggregates
                .iter()
                .any(|a| failed_inline.contains(&a.as_str()))
        };
        let condition = if let Some((_, leaves)) = &structured[i] {
            // Each leaf on its own first, so a problem is reported at the leaf's keys
            // rather than at a column of the generated text.
            let mut ok = !rule_failed[i] && !uses_failed(&needs[i]);
            for leaf in leaves {
                if rule_failed[i] && leaf.aggregate.is_some() {
                    continue;
                }
                let leaf_ast = match expr::parse(&leaf.text) {
                    Ok(ast) => ast,
                    Err(e) => {
                        ok = false;
                        let at = format!("{path}.when{}{}", leaf.path, leaf.blame(e.column));
                        report_leaf(&mut diags, at, leaf, e);
                        continue;
                    }
                };
                let need = lower::needs(&leaf_ast, &udf_names);
                if (rule_failed[i] && !need.aggregates.is_empty()) || uses_failed(&need) {
                    // Its aggregate is invalid (reported above) or belongs to a rule that
                    // failed: there is nothing to compile it against.
                    ok = false;
                    continue;
                }
                let Err(e) = expr::compile_ast_predicate(&leaf_ast, &leaf.text, scope) else {
                    continue;
                };
                ok = false;
                let at = format!("{path}.when{}{}", leaf.path, leaf.blame(e.column));
                report_leaf(&mut diags, at, leaf, e);
            }
            match ok.then(|| {
                parsed[i]
                    .clone()
                    .and_then(|ast| expr::compile_ast_predicate(&ast, &texts[i], scope))
            }) {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    diags.report(format!("{path}.when"), e.to_string());
                    None
                }
            }
        } else if uses_failed(&needs[i]) {
            None
        } else {
            match parsed[i]
                .clone()
                .and_then(|ast| expr::compile_ast_predicate(&ast, &texts[i], scope))
            {
                Ok(c) => Some(c),
                Err(e) => {
                    diags.report_in(format!("{path}.when"), e.to_string(), &texts[i], e.column);
                    None
                }
            }
        };
        let message_text = r
            .message
            .clone()
            .unwrap_or_else(|| default_message(&texts[i]));
        let message = compile_message(
            &message_text,
            r.message.as_deref(),
            scope,
            &path,
            &mut diags,
        );
        if let (Some(condition), Some(message)) = (condition, message) {
            rules.push(Rule {
                name: r.name.clone(),
                when: texts[i].clone(),
                severity: r.severity,
                message,
                labels: r.labels.clone(),
                kind: RuleKind::Condition(condition),
                for_: r.for_.map_or(Duration::ZERO, |d| d.0),
                keep_firing_for: r.keep_firing_for.map_or(Duration::ZERO, |d| d.0),
            });
        }
    }
    for (i, a) in def.absence.iter().enumerate() {
        let path = format!("absence[{i}]");
        check_rule_name(&path, &a.name, &mut diags);
        if a.after.is_zero() {
            diags.report(format!("{path}.after"), "expected a duration above zero");
        }
        let Some(scope) = &scope else { continue };
        let text = a.message.clone().unwrap_or_else(|| match &a.stale {
            Some(f) => format!("{{key}}: `{f}` has not changed for {{silence}}"),
            None => "No event from {key} for {silence}".to_string(),
        });
        let stale = match &a.stale {
            None => None,
            Some(f) => match names.iter().position(|n| n == f) {
                Some(i) => Some(i),
                None => {
                    diags.report(
                        format!("{path}.stale"),
                        format!(
                            "unknown field `{f}`{}",
                            anom_lang::suggest::did_you_mean(f, names.iter().copied())
                        ),
                    );
                    continue;
                }
            },
        };
        if let Some(message) =
            compile_message(&text, a.message.as_deref(), scope, &path, &mut diags)
        {
            rules.push(Rule {
                name: a.name.clone(),
                when: String::new(),
                severity: a.severity,
                message,
                labels: a.labels.clone(),
                for_: Duration::ZERO,
                keep_firing_for: Duration::ZERO,
                kind: RuleKind::Absence(Absence {
                    after: a.after,
                    keys: a.keys.clone(),
                    clock: a.clock,
                    stale,
                }),
            });
        }
    }

    for (i, d) in def.detectors.iter().enumerate() {
        if rules.iter().any(|r| r.name == d.name) {
            diags.report(format!("detectors[{i}].name"), format!("`{}` is already the name of a rule: alerts name their rule or detector, so the names must differ", d.name));
        }
    }

    let alerting = alert_policy::compile(
        &def.alerts,
        &|name| schema.as_ref().and_then(|s| s.index_of(name)),
        &mut diags,
    );

    diags.finish()?;
    let (Some(schema), Some(key), Some(scope)) = (schema, key, scope) else {
        unreachable!("a missing schema or key field was reported above")
    };
    let version = version_of(source);
    Ok(Pipeline {
        subjects: Subjects::new(&def.name),
        name: def.name.clone(),
        version,
        description: def.description.clone(),
        schema,
        key,
        event_time,
        partitions: def.partitions,
        max_event_bytes: def.max_event_bytes,
        rules,
        sinks: def.alerts.sinks.clone(),
        alerting,
        aggregates,
        scope,
        detectors,
        alert_on: def.decision.alert_on,
        derives,
        allowed_lateness: def.allowed_lateness,
        timezone: def.timezone.clone(),
        state: def.state.clone(),
        retention: def.retention.map(|d| d.0),
    })
}

fn compile_message(
    text: &str,
    written: Option<&str>,
    scope: &RowScope,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<Template> {
    match Template::compile(text, scope) {
        Ok(t) => Some(t),
        Err(e) => {
            let at = format!("{path}.message");
            match written {
                Some(m) => diags.report_in(at, e.to_string(), m, e.column),
                None => diags.report(at, e.to_string()),
            }
            None
        }
    }
}

/// Reports a problem in one leaf of a structured condition: at its text when the user wrote
/// it (an `expr` leaf), else at the leaf's keys only.
fn report_leaf(diags: &mut Diagnostics, at: String, leaf: &condition::Leaf, e: expr::ExprError) {
    if leaf.written {
        diags.report_in(at, e.to_string(), &leaf.text, e.column);
    } else {
        diags.report(at, e.message);
    }
}

fn default_message(when: &str) -> String {
    format!(
        "{{rule}} on {{key}}: {}",
        when.replace('{', "{{").replace('}', "}}")
    )
}

/// Checks the aggregate of an `aggregate_compare` leaf against the schema, as the aggregate
/// it will become; a problem comes back with the key it is about (`.over`, `.field`).
fn check_aggregate_leaf(
    leaf: &condition::Leaf,
    schema: &Schema,
    names: &[&str],
    timezone: &str,
) -> Result<(), (String, String)> {
    let Some(text) = &leaf.aggregate else {
        return Ok(());
    };
    let spec = aggregate::parse_spec(text, timezone)
        .map_err(|e| (leaf.blame(e.column).to_string(), e.message))?;
    if !lower::is_inline_aggregate(text) {
        let over = text.split_once(" over ").map_or("", |(_, over)| over);
        return Err((
            ".over".into(),
            format!("`{over}` is not a window a rule can use: expected e.g. `5m`, `1h every 5m`, `tumbling 1h`, `session 30m` or `calendar day`"),
        ));
    }
    let field = match spec.field.as_deref() {
        None => None,
        Some(f) => match schema.index_of(f) {
            Some(i) => Some((i, schema.fields()[i].ty.value_type())),
            None => {
                return Err((
                    ".field".into(),
                    format!(
                        "unknown field `{f}`{}",
                        anom_lang::suggest::did_you_mean(f, names.iter().copied())
                    ),
                ))
            }
        },
    };
    Aggregate::compile(&spec, field).map_err(|e| (".field".into(), e))?;
    Ok(())
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
