//! The compiler: a parsed [`PipelineDef`] checked completely and built into a [`Pipeline`].
//!
//! [`compile`] runs small passes in order, each reporting into one [`Diagnostics`] so that
//! every problem is found in one go and located in the source:
//!
//! 1. `header`: name, partitions, event size;
//! 2. `schema`, then `key_and_event_time` and `timezone` against it;
//! 3. `udf_fields`: plugins loaded and checked, `derive:` fields and `kind: udf` scores;
//! 4. `conditions`: structured conditions become expressions, every condition is parsed once
//!    and what it asks to be computed is listed (`lower`);
//! 5. `udf_calls`: UDF calls in conditions become hidden derived fields;
//! 6. `aggregate_leaves`: the aggregates of structured leaves, checked at the leaf's keys;
//! 7. `aggregates`: declared and inline aggregates compiled (inline ones named by their text);
//! 8. detectors, over the row scope of fields and aggregates;
//! 9. `rules` and `absence`, type-checked against the whole row scope;
//! 10. the `alerts:` section.
//!
//! Nothing is built while a problem is outstanding: the plan exists only for a definition
//! without any.

use std::time::Duration;

use anom_lang::aggregate::{self, Aggregate};
use anom_lang::expr;
use anom_udf::{Udf, UdfType};

use crate::condition::{self, When};
use crate::definition::{self, PipelineDef};
use crate::diagnostics::Diagnostics;
use crate::schema::{self, Schema};
use crate::scope::RowScope;
use crate::subjects::Subjects;
use crate::template::Template;
use crate::udfs::{self, Derive};
use crate::{
    alert_policy, detectors, lower, valid_pipeline_name, version_of, Absence, DefinitionErrors,
    NamedAggregate, Pipeline, Rule, RuleKind,
};

/// Checks a parsed definition and builds the plan. `source` (the YAML text, if any) is used
/// to point problems at a line and column, and for the version.
pub fn compile(def: &PipelineDef, source: &str) -> Result<Pipeline, DefinitionErrors> {
    let mut c = Compiler {
        def,
        diags: Diagnostics::new(source),
        names: def.schema.0.iter().map(|(k, _)| k.as_str()).collect(),
        schema: None,
        derives: Vec::new(),
        detector_scores: vec![None; def.detectors.len()],
    };
    c.header();
    c.schema();
    let (key, event_time) = c.key_and_event_time();
    c.timezone();
    let udfs = c.udf_fields();
    let conditions = c.conditions(&udfs);
    c.udf_calls(&conditions, &udfs);
    let rule_failed = c.aggregate_leaves(&conditions);
    let (aggregates, failed_inline) = c.aggregates(&conditions, &rule_failed);
    let scope = c
        .schema
        .as_ref()
        .map(|schema| RowScope::new(schema, &aggregates));
    // Detectors read fields and aggregates; rules and messages can also use their scores.
    let detectors = match &scope {
        Some(scope) => detectors::compile(&def.detectors, scope, &c.detector_scores, &mut c.diags),
        None => Vec::new(),
    };
    let scope = scope.map(|s| s.with_detectors(&detectors));
    let mut rule_names = Vec::new();
    let mut rules = c.rules(
        &conditions,
        &udfs,
        &rule_failed,
        &failed_inline,
        scope.as_ref(),
        &mut rule_names,
    );
    c.absence(scope.as_ref(), &mut rule_names, &mut rules);
    for (i, d) in def.detectors.iter().enumerate() {
        if rules.iter().any(|r| r.name == d.name) {
            c.diags.report(format!("detectors[{i}].name"), format!("`{}` is already the name of a rule: alerts name their rule or detector, so the names must differ", d.name));
        }
    }
    if def.units.publish_enriched
        && def.aggregates.0.is_empty()
        && def.absence.is_empty()
        && def.detectors.is_empty()
    {
        c.diags.report(
            "units.publish_enriched",
            format!("there is nothing to enrich: the pipeline has no aggregates, absence rules or detectors (its validated events are on anom.{}.valid.<partition>); remove `publish_enriched` or add an aggregate", def.name),
        );
    }
    let schema = c.schema;
    let alerting = alert_policy::compile(
        &def.alerts,
        &|name| schema.as_ref().and_then(|s| s.index_of(name)),
        &mut c.diags,
    );

    c.diags.finish()?;
    let (Some(schema), Some(key), Some(scope)) = (schema, key, scope) else {
        unreachable!("a missing schema or key field was reported above")
    };
    Ok(Pipeline {
        subjects: Subjects::new(&def.name),
        name: def.name.clone(),
        version: version_of(source),
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
        derives: c.derives,
        allowed_lateness: def.allowed_lateness,
        timezone: def.timezone.clone(),
        state: def.state.clone(),
        units: def.units.clone(),
        retention: def.retention.map(|d| d.0),
    })
}

/// What the passes share.
struct Compiler<'d, 's> {
    def: &'d PipelineDef,
    diags: Diagnostics<'s>,
    /// The schema's field names as declared (for "did you mean").
    names: Vec<&'d str>,
    /// `None` once the schema had a problem: later passes then check what they can alone.
    schema: Option<Schema>,
    /// Fields computed by UDFs, in order (a derive may read earlier ones).
    derives: Vec<Derive>,
    /// Per detector: the row index of its score, for `kind: udf` detectors.
    detector_scores: Vec<Option<usize>>,
}

/// The declared UDFs: those loaded, and every declared one's name and result type.
struct Udfs<'d> {
    loaded: Vec<std::sync::Arc<Udf>>,
    declared: Vec<(&'d str, UdfType)>,
}

impl Udfs<'_> {
    fn names(&self) -> Vec<&str> {
        self.declared.iter().map(|(name, _)| *name).collect()
    }
}

/// The rules' conditions, each as text, parsed, and what it asks to be computed.
struct Conditions {
    /// For a structured condition: its text and its leaves (to report problems at their keys).
    structured: Vec<Option<(String, Vec<condition::Leaf>)>>,
    texts: Vec<String>,
    /// A parse error is reported where the rule is compiled, in the rules' order.
    parsed: Vec<Result<expr::Ast, expr::ExprError>>,
    needs: Vec<lower::Needs>,
}

impl<'d> Compiler<'d, '_> {
    fn header(&mut self) {
        let def = self.def;
        if !valid_pipeline_name(&def.name) {
            self.diags.report("name", format!("`{}` is not a valid pipeline name: expected lowercase letters, digits, `_` and `-` (it becomes part of NATS subjects)", def.name));
        }
        if def.partitions == 0 || def.partitions > 1024 {
            self.diags.report(
                "partitions",
                format!(
                    "expected a partition count between 1 and 1024, found {}",
                    def.partitions
                ),
            );
        }
        if def.max_event_bytes < 64 {
            self.diags.report(
                "max_event_bytes",
                format!("expected at least 64 bytes, found {}", def.max_event_bytes),
            );
        }
    }

    fn schema(&mut self) {
        let field_defs: Vec<(String, definition::FieldDef)> = self
            .def
            .schema
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        self.schema = schema::compile(&field_defs, self.def.unknown_fields, &mut self.diags);
    }

    fn unknown_field(&self, name: &str) -> String {
        format!(
            "unknown field `{name}`{}",
            anom_lang::suggest::did_you_mean(name, self.names.iter().copied())
        )
    }

    fn key_and_event_time(&mut self) -> (Option<usize>, Option<usize>) {
        let def = self.def;
        let key = self.names.iter().position(|n| *n == def.key);
        if key.is_none() {
            let message = self.unknown_field(&def.key);
            self.diags.report("key", message);
        }
        let mut event_time = None;
        if let Some(et) = &def.event_time {
            match self.names.iter().position(|n| n == et) {
                None => {
                    let message = self.unknown_field(et);
                    self.diags.report("event_time", message);
                }
                Some(i) => {
                    let ty = def.schema.0[i].1 .0.ty;
                    if ty != definition::TypeName::Timestamp {
                        self.diags.report(
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
        (key, event_time)
    }

    fn timezone(&mut self) {
        if jiff::tz::TimeZone::get(&self.def.timezone).is_err() {
            self.diags.report(
                "timezone",
                format!(
                    "unknown time zone `{}`: expected an IANA name such as Europe/Berlin or UTC",
                    self.def.timezone
                ),
            );
        }
    }

    /// UDFs: loaded and checked once; `derive:` fields and `kind: udf` detectors' scores
    /// become derived fields (see `udfs`).
    fn udf_fields(&mut self) -> Udfs<'d> {
        let def = self.def;
        let udfs = Udfs {
            loaded: udfs::load(&def.udfs, &mut self.diags),
            declared: def
                .udfs
                .iter()
                .map(|u| (u.name.as_str(), u.returns))
                .collect(),
        };
        let derive_uses = udfs::derive_uses(&def.derive.0, &mut self.diags);
        let detector_uses = udfs::detector_uses(&def.detectors, &mut self.diags);
        if let Some(schema) = &mut self.schema {
            for u in &derive_uses {
                if let Some(d) =
                    udfs::compile_use(u, &udfs.loaded, &udfs.declared, schema, &mut self.diags)
                {
                    self.derives.push(d);
                }
            }
            for (i, u) in &detector_uses {
                if let Some(d) =
                    udfs::compile_use(u, &udfs.loaded, &udfs.declared, schema, &mut self.diags)
                {
                    self.detector_scores[*i] = Some(d.field);
                    self.derives.push(d);
                }
            }
        }
        udfs
    }

    /// Structured conditions become expressions here, once; each leaf is also kept on its
    /// own. Every condition is parsed once, and what it asks to be computed (inline
    /// aggregates, UDF calls) is listed for the lowering passes.
    fn conditions(&self, udfs: &Udfs) -> Conditions {
        let rules = &self.def.rules;
        let structured: Vec<Option<(String, Vec<condition::Leaf>)>> = rules
            .iter()
            .map(|r| match &r.when {
                When::Expr(_) => None,
                When::Structured(c) => Some(c.leaves()),
            })
            .collect();
        let texts: Vec<String> = rules
            .iter()
            .zip(&structured)
            .map(|(r, s)| {
                s.as_ref()
                    .map_or_else(|| r.when.to_expr(), |(t, _)| t.clone())
            })
            .collect();
        let parsed: Vec<Result<expr::Ast, expr::ExprError>> =
            texts.iter().map(|t| expr::parse(t)).collect();
        let udf_names = udfs.names();
        let needs = parsed
            .iter()
            .map(|ast| {
                ast.as_ref().map_or_else(
                    |_| lower::Needs::default(),
                    |ast| lower::needs(ast, &udf_names),
                )
            })
            .collect();
        Conditions {
            structured,
            texts,
            parsed,
            needs,
        }
    }

    /// UDF calls in conditions become hidden derived fields, computed in batches by
    /// validate, named by the call's text.
    fn udf_calls(&mut self, conditions: &Conditions, udfs: &Udfs) {
        let mut called: Vec<&str> = Vec::new();
        for (rule, need) in conditions.needs.iter().enumerate() {
            for call in &need.calls {
                if called.contains(&call.text.as_str()) {
                    continue;
                }
                called.push(&call.text);
                let Some(schema) = &mut self.schema else {
                    continue;
                };
                let path = format!("rules[{rule}].when");
                if let Some(bad) = call.args.iter().find_map(|a| a.as_ref().err()) {
                    self.diags.report(
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
                if let Some(d) =
                    udfs::compile_use(&u, &udfs.loaded, &udfs.declared, schema, &mut self.diags)
                {
                    self.derives.push(d);
                }
            }
        }
    }

    /// The aggregates of `aggregate_compare` leaves are checked against the schema first, so
    /// that their problems name the leaf's keys; a rule with such a problem goes no further.
    fn aggregate_leaves(&mut self, conditions: &Conditions) -> Vec<bool> {
        let mut rule_failed = vec![false; self.def.rules.len()];
        let Some(schema) = &self.schema else {
            return rule_failed;
        };
        for (i, leaves) in conditions.structured.iter().enumerate() {
            for leaf in leaves.iter().flat_map(|(_, leaves)| leaves) {
                if let Err((key, message)) =
                    check_aggregate_leaf(leaf, schema, &self.names, &self.def.timezone)
                {
                    self.diags
                        .report(format!("rules[{i}].when{}{key}", leaf.path), message);
                    rule_failed[i] = true;
                }
            }
        }
        rule_failed
    }

    /// Declared aggregates, then the inline ones (`sum(amount) over 1d > 2000`), each named by
    /// its text (see `lower`). Returns them compiled, and the inline ones that failed: the
    /// rules using those are not compiled, or each would add a second error about the same
    /// text.
    fn aggregates(
        &mut self,
        conditions: &Conditions,
        rule_failed: &[bool],
    ) -> (Vec<NamedAggregate>, Vec<String>) {
        let def = self.def;
        // (name, text, path, inline)
        let mut declared: Vec<(String, String, String, bool)> = def
            .aggregates
            .0
            .iter()
            .map(|(name, text)| {
                (
                    name.clone(),
                    text.clone(),
                    format!("aggregates.{name}"),
                    false,
                )
            })
            .collect();
        for (rule, need) in conditions.needs.iter().enumerate() {
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
                // In a structured condition, the aggregate was written in an `expr` leaf
                // (those of `aggregate_compare` leaves were checked above).
                if let Some(leaf) = conditions.structured[rule]
                    .as_ref()
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
        let mut failed_inline = Vec::new();
        let mut aggregate_names: Vec<&str> = Vec::new();
        for (name, text, path, is_inline) in &declared {
            let compiled_before = aggregates.len();
            if !is_inline {
                if !schema::valid_field_name(name) {
                    self.diags.report(path.clone(), format!("`{name}` is not a valid aggregate name: expected letters, digits and `_`, not starting with a digit"));
                }
                if self.names.contains(&name.as_str()) || aggregate_names.contains(&name.as_str()) {
                    self.diags.report(
                        path.clone(),
                        format!("`{name}` is already the name of a field or aggregate"),
                    );
                }
            }
            aggregate_names.push(name);
            if let Some(aggregate) = self.aggregate(name, text, path, *is_inline) {
                aggregates.push(aggregate);
            }
            if *is_inline && aggregates.len() == compiled_before {
                failed_inline.push(name.clone());
            }
        }
        (aggregates, failed_inline)
    }

    /// One aggregate against the schema.
    fn aggregate(
        &mut self,
        name: &str,
        text: &str,
        path: &str,
        inline: bool,
    ) -> Option<NamedAggregate> {
        let schema = self.schema.as_ref()?;
        let spec = match aggregate::parse_spec(text, &self.def.timezone) {
            Ok(spec) => spec,
            Err(e) => {
                self.diags.report_in(path, e.to_string(), text, e.column);
                return None;
            }
        };
        let field = match spec.field.as_deref() {
            None => None,
            Some(f) => match schema.index_of(f) {
                Some(i) => Some((i, schema.fields()[i].ty.value_type())),
                None => {
                    let message = self.unknown_field(f);
                    self.diags.report_in(path, message, text, 1);
                    return None;
                }
            },
        };
        // Late-but-allowed events must still find their panes.
        match Aggregate::compile(&spec, field).map(|a| a.with_lateness(self.def.allowed_lateness)) {
            Ok(aggregate) => Some(NamedAggregate {
                name: name.to_string(),
                source: text.to_string(),
                inline,
                aggregate,
            }),
            Err(e) => {
                self.diags.report_in(path, e, text, 1);
                None
            }
        }
    }

    /// Rule and absence names end up in alert identities: valid and distinct.
    fn check_rule_name(&mut self, path: &str, name: &str, seen: &mut Vec<String>) {
        if !valid_pipeline_name(name) {
            self.diags.report(format!("{path}.name"), format!("`{name}` is not a valid rule name: expected lowercase letters, digits, `_` and `-`"));
        }
        if seen.iter().any(|n| n == name) {
            self.diags.report(
                format!("{path}.name"),
                format!("rule `{name}` is declared twice"),
            );
        }
        seen.push(name.to_string());
    }

    /// Condition rules, type-checked against the whole row (fields, aggregates, scores).
    fn rules(
        &mut self,
        conditions: &Conditions,
        udfs: &Udfs,
        rule_failed: &[bool],
        failed_inline: &[String],
        scope: Option<&RowScope>,
        rule_names: &mut Vec<String>,
    ) -> Vec<Rule> {
        let udf_names = udfs.names();
        let uses_failed =
            |need: &lower::Needs| need.aggregates.iter().any(|a| failed_inline.contains(a));
        let mut rules = Vec::new();
        for (i, r) in self.def.rules.iter().enumerate() {
            let path = format!("rules[{i}]");
            self.check_rule_name(&path, &r.name, rule_names);
            let Some(scope) = scope else { continue };
            let text = &conditions.texts[i];
            let condition = if let Some((_, leaves)) = &conditions.structured[i] {
                // Each leaf on its own first, so a problem is reported at the leaf's keys
                // rather than at a column of the generated text.
                let mut ok = !rule_failed[i] && !uses_failed(&conditions.needs[i]);
                for leaf in leaves {
                    if rule_failed[i] && leaf.aggregate.is_some() {
                        continue;
                    }
                    let leaf_ast = match expr::parse(&leaf.text) {
                        Ok(ast) => ast,
                        Err(e) => {
                            ok = false;
                            self.report_leaf(&path, leaf, e);
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
                    if let Err(e) = expr::compile_ast_predicate(&leaf_ast, &leaf.text, scope) {
                        ok = false;
                        self.report_leaf(&path, leaf, e);
                    }
                }
                match ok.then(|| {
                    conditions.parsed[i]
                        .clone()
                        .and_then(|ast| expr::compile_ast_predicate(&ast, text, scope))
                }) {
                    None => None,
                    Some(Ok(c)) => Some(c),
                    Some(Err(e)) => {
                        self.diags.report(format!("{path}.when"), e.to_string());
                        None
                    }
                }
            } else if uses_failed(&conditions.needs[i]) {
                None
            } else {
                match conditions.parsed[i]
                    .clone()
                    .and_then(|ast| expr::compile_ast_predicate(&ast, text, scope))
                {
                    Ok(c) => Some(c),
                    Err(e) => {
                        self.diags
                            .report_in(format!("{path}.when"), e.to_string(), text, e.column);
                        None
                    }
                }
            };
            let message_text = r.message.clone().unwrap_or_else(|| default_message(text));
            let message = self.message(&message_text, r.message.as_deref(), scope, &path);
            if let (Some(condition), Some(message)) = (condition, message) {
                rules.push(Rule {
                    name: r.name.clone(),
                    when: text.clone(),
                    severity: r.severity,
                    message,
                    labels: r.labels.clone(),
                    kind: RuleKind::Condition(condition),
                    for_: r.for_.map_or(Duration::ZERO, |d| d.0),
                    keep_firing_for: r.keep_firing_for.map_or(Duration::ZERO, |d| d.0),
                });
            }
        }
        rules
    }

    /// Absence rules, after the condition rules (a hit names a rule by its index).
    fn absence(
        &mut self,
        scope: Option<&RowScope>,
        rule_names: &mut Vec<String>,
        rules: &mut Vec<Rule>,
    ) {
        for (i, a) in self.def.absence.iter().enumerate() {
            let path = format!("absence[{i}]");
            self.check_rule_name(&path, &a.name, rule_names);
            if a.after.is_zero() {
                self.diags
                    .report(format!("{path}.after"), "expected a duration above zero");
            }
            let Some(scope) = scope else { continue };
            let text = a.message.clone().unwrap_or_else(|| match &a.stale {
                Some(f) => format!("{{key}}: `{f}` has not changed for {{silence}}"),
                None => "No event from {key} for {silence}".to_string(),
            });
            let stale = match &a.stale {
                None => None,
                Some(f) => match self.names.iter().position(|n| n == f) {
                    Some(i) => Some(i),
                    None => {
                        let message = self.unknown_field(f);
                        self.diags.report(format!("{path}.stale"), message);
                        continue;
                    }
                },
            };
            if let Some(message) = self.message(&text, a.message.as_deref(), scope, &path) {
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
    }

    /// A message template; a problem is located in the text the user wrote, if any.
    fn message(
        &mut self,
        text: &str,
        written: Option<&str>,
        scope: &RowScope,
        path: &str,
    ) -> Option<Template> {
        match Template::compile(text, scope) {
            Ok(t) => Some(t),
            Err(e) => {
                let at = format!("{path}.message");
                match written {
                    Some(m) => self.diags.report_in(at, e.to_string(), m, e.column),
                    None => self.diags.report(at, e.to_string()),
                }
                None
            }
        }
    }

    /// A problem in one leaf of a structured condition: at its text when the user wrote it
    /// (an `expr` leaf), else at the leaf's keys only.
    fn report_leaf(&mut self, rule: &str, leaf: &condition::Leaf, e: expr::ExprError) {
        let at = format!("{rule}.when{}{}", leaf.path, leaf.blame(e.column));
        if leaf.written {
            self.diags
                .report_in(at, e.to_string(), &leaf.text, e.column);
        } else {
            self.diags.report(at, e.message);
        }
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
