//! The `udfs:` section and what uses it: `derive:` fields, UDF calls in rule conditions and
//! `kind: udf` detectors.
//!
//! All three become derived fields, computed by the validate stage in batches (one plugin
//! call per UDF use per batch) and appended to the schema's fields, so that windows,
//! detectors, rules and messages read them like any field:
//! - `derive: {route: route_id(fileName)}` is a field named `route`;
//! - a call in a condition (`transfer_score(bytes, durationMs) > 0.8`) becomes a hidden field
//!   named by the call's text, which the condition's syntax tree resolves (see `lower`);
//! - a `kind: udf` detector reads a hidden field holding its score, checked to be in [0, 1].

use crate::diagnostics::Diagnostics;
use std::path::Path;
use std::sync::Arc;

use super::definition::{DetectorDef, UdfDef};
use super::schema::{FieldType, Schema};
use anom_lang::expr::AstKind;
use anom_lang::value::ValueType;
use anom_udf::{Udf, UdfType};

/// One derived field: the validate stage sets `row[field]` to `udf(row[args[0]], ...)`.
#[derive(Debug, Clone)]
pub struct Derive {
    /// The field's name (hidden ones start with `_`).
    pub name: String,
    /// What the user wrote, for messages: `route_id(fileName)`.
    pub source: String,
    /// Its index in rows (after the schema's own fields).
    pub field: usize,
    pub udf: Arc<Udf>,
    /// Row indexes of the arguments.
    pub args: Vec<usize>,
    /// A detector's score: a value outside [0, 1] dead-letters the event.
    pub score: bool,
}

/// What the `udfs:` and `derive:` sections compile to.
#[derive(Debug, Default)]
pub struct Compiled {
    pub derives: Vec<Derive>,
    /// Per detector (by index): the row index of its score, for `kind: udf` detectors.
    pub detector_scores: Vec<Option<usize>>,
}

/// Names a condition already gives a meaning to: built-in functions, aggregates, keywords.
const RESERVED: &[&str] = &[
    "contains",
    "starts_with",
    "ends_with",
    "matches",
    "lower",
    "upper",
    "len",
    "abs",
    "min",
    "max",
    "coalesce",
    "is_null",
    "is_present",
    "count",
    "sum",
    "avg",
    "stddev",
    "last",
    "distinct",
    "p50",
    "p90",
    "p99",
    "rate",
    "prev",
    "and",
    "or",
    "not",
    "in",
    "true",
    "false",
    "null",
];

/// Loads every declared UDF (each library once per process) and checks its signature.
/// Relative library paths are read from the working directory: the same for `anom check`,
/// a worker, or a coordinator's agent compiling the definition it was sent as text.
pub fn load(defs: &[UdfDef], diags: &mut Diagnostics) -> Vec<Arc<Udf>> {
    let mut udfs: Vec<Arc<Udf>> = Vec::new();
    for (i, d) in defs.iter().enumerate() {
        let path = format!("udfs[{i}]");
        if !super::schema::valid_field_name(&d.name) {
            diags.report(format!("{path}.name"),
                format!("`{}` is not a valid UDF name: expected letters, digits and `_`, not starting with a digit", d.name));
            continue;
        }
        if RESERVED.contains(&d.name.as_str()) {
            diags.report(format!("{path}.name"),
                format!("`{}` is the name of a built-in function or aggregate: give the UDF another name", d.name));
            continue;
        }
        if defs[..i].iter().any(|o| o.name == d.name) {
            diags.report(
                format!("{path}.name"),
                format!("udf `{}` is declared twice", d.name),
            );
            continue;
        }
        match Udf::load(&d.name, Path::new(&d.library), &d.args, d.returns) {
            Ok(udf) => udfs.push(Arc::new(udf)),
            Err(e) => {
                let at = match e {
                    anom_udf::UdfError::NoArguments => ".args",
                    anom_udf::UdfError::Signature { .. } => "",
                    _ => ".library",
                };
                diags.report(format!("{path}{at}"), e.to_string());
            }
        }
    }
    udfs
}

/// Whether a field of type `field` can be passed where `arg` is expected.
fn accepts(arg: UdfType, field: ValueType) -> bool {
    matches!(
        (arg, field),
        (UdfType::String, ValueType::Str)
            | (UdfType::Int, ValueType::Int | ValueType::Timestamp)
            | (UdfType::Float, ValueType::Float | ValueType::Int)
            | (UdfType::Bool, ValueType::Bool)
    )
}

fn field_type(t: UdfType) -> FieldType {
    match t {
        UdfType::String => FieldType::Str,
        UdfType::Int => FieldType::Int,
        UdfType::Float => FieldType::Float,
        UdfType::Bool => FieldType::Bool,
    }
}

/// One use of a UDF to compile into a derived field.
pub struct Use {
    /// The derived field's name.
    pub name: String,
    /// Hidden: named by the program (a call in a condition, a detector's score), not by the
    /// user, so not held to the rules of field names.
    pub hidden: bool,
    /// Where problems are reported (`derive.route`, `rules[0].when`, `detectors[1]`).
    pub path: String,
    /// The UDF's name.
    pub udf: String,
    /// Argument field names, and where each is written (for problems).
    pub args: Vec<(String, String)>,
    pub score: bool,
    pub source: String,
}

/// Parses `derive:` entries (`udf(a, b)`, read by the expression parser) into uses.
pub fn derive_uses(derive: &[(String, String)], diags: &mut Diagnostics) -> Vec<Use> {
    let mut uses = Vec::new();
    for (name, text) in derive {
        let path = format!("derive.{name}");
        let Some((udf, fields)) = call_on_fields(text) else {
            diags.report(
                path,
                format!("expected a UDF call on fields, e.g. `route_id(fileName)`, found `{text}`"),
            );
            continue;
        };
        uses.push(Use {
            name: name.clone(),
            hidden: false,
            args: fields.into_iter().map(|f| (f, path.clone())).collect(),
            path,
            udf,
            score: false,
            source: text.trim().to_string(),
        });
    }
    uses
}

/// `udf(a, b)`: the function's name and its arguments, if the text is one call on fields.
fn call_on_fields(text: &str) -> Option<(String, Vec<String>)> {
    let ast = anom_lang::expr::parse(text).ok()?;
    let AstKind::Call { name, args } = ast.kind else {
        return None;
    };
    let fields = args
        .into_iter()
        .map(|a| match a.kind {
            AstKind::Field(f) => Some(f),
            _ => None,
        })
        .collect::<Option<Vec<String>>>()?;
    Some((name, fields))
}

/// The hidden uses of `kind: udf` detectors, and the hidden field name of each.
pub fn detector_uses(detectors: &[DetectorDef], diags: &mut Diagnostics) -> Vec<(usize, Use)> {
    let mut uses = Vec::new();
    for (i, d) in detectors.iter().enumerate() {
        if d.kind != "udf" {
            if d.udf.is_some() {
                diags.report(
                    format!("detectors[{i}].udf"),
                    format!("`udf` applies to udf detectors, not {}", d.kind),
                );
            }
            continue;
        }
        let path = format!("detectors[{i}]");
        let Some(udf) = &d.udf else {
            diags.report(format!("{path}.udf"), "expected the UDF that scores events (`udf: transfer_score`), declared under `udfs:`");
            continue;
        };
        if d.features.is_empty() {
            diags.report(
                format!("{path}.features"),
                "expected the fields passed to the UDF, in order (`features: [bytes, durationMs]`)",
            );
            continue;
        }
        uses.push((
            i,
            Use {
                name: format!("_score_{}", d.name),
                hidden: true,
                path: path.clone(),
                udf: udf.clone(),
                args: d
                    .features
                    .iter()
                    .enumerate()
                    .map(|(j, f)| (f.clone(), format!("{path}.features[{j}]")))
                    .collect(),
                score: true,
                source: format!("{udf}({})", d.features.join(", ")),
            },
        ));
    }
    uses
}

/// Compiles one use against the schema (fields and the derived fields before it), appending
/// its field to the schema. `declared` names every declared UDF, loaded or not, with its
/// declared result type.
pub fn compile_use(
    u: &Use,
    udfs: &[Arc<Udf>],
    declared: &[(&str, UdfType)],
    schema: &mut Schema,
    diags: &mut Diagnostics,
) -> Option<Derive> {
    let Some(udf) = udfs.iter().find(|f| f.name == u.udf) else {
        if let Some((_, returns)) = declared.iter().find(|(name, _)| *name == u.udf) {
            // Declared but not loaded (reported at `udfs:`): the field still exists, so that
            // what uses it is checked without a cascade of "unknown field" errors.
            if schema.index_of(&u.name).is_none() {
                schema.push_derived(&u.name, field_type(*returns));
            }
            return None;
        }
        diags.report(
            u.path.clone(),
            format!(
                "unknown udf `{}`{}",
                u.udf,
                anom_lang::suggest::did_you_mean(&u.udf, declared.iter().map(|(name, _)| *name))
            ),
        );
        return None;
    };
    if u.args.len() != udf.args.len() {
        diags.report(
            u.path.clone(),
            format!(
                "udf `{}` takes {} argument{} {}, found {}",
                udf.name,
                udf.args.len(),
                if udf.args.len() == 1 { "" } else { "s" },
                anom_udf::show_args(&udf.args),
                u.args.len()
            ),
        );
        return None;
    }
    let mut args = Vec::new();
    for ((arg, at), ty) in u.args.iter().zip(&udf.args) {
        let Some(index) = schema.index_of(arg) else {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name.as_str()).collect();
            diags.report(
                at.clone(),
                format!(
                    "unknown field `{arg}`{}",
                    anom_lang::suggest::did_you_mean(arg, names.into_iter())
                ),
            );
            return None;
        };
        let field_ty = schema.fields()[index].ty.value_type();
        if !accepts(*ty, field_ty) {
            diags.report(
                at.clone(),
                format!(
                    "udf `{}` takes {} here, but `{arg}` is a {field_ty}",
                    udf.name, ty
                ),
            );
            return None;
        }
        args.push(index);
    }
    if u.score && udf.returns != UdfType::Float {
        diags.report(
            format!("{}.udf", u.path),
            format!(
                "a udf detector scores with a float in [0, 1], but udf `{}` returns {}",
                udf.name, udf.returns
            ),
        );
        return None;
    }
    if schema.index_of(&u.name).is_some() {
        diags.report(
            u.path.clone(),
            format!("`{}` is already the name of a field", u.name),
        );
        return None;
    }
    if !u.hidden && !super::schema::valid_field_name(&u.name) {
        diags.report(u.path.clone(),
            format!("`{}` is not a valid field name: expected letters, digits and `_`, not starting with a digit", u.name));
        return None;
    }
    let field = schema.push_derived(&u.name, field_type(udf.returns));
    Some(Derive {
        name: u.name.clone(),
        source: u.source.clone(),
        field,
        udf: udf.clone(),
        args,
        score: u.score,
    })
}

#[cfg(test)]
mod tests {
    use crate::{DetectorKind, Pipeline};
    use anom_lang::value::ValueType;
    use anom_testkit::plugins::plugin;

    /// A routes pipeline declaring the example plugins, with `extra` appended.
    fn yaml(route_args: &str, extra: &str) -> String {
        format!(
            r#"name: routes
key: route
schema:
  route: string
  durationMs: int
  fileName: string
  bytes: int
  finishedAt: timestamp
udfs:
  - name: route_id
    library: {}
    args: [{route_args}]
    returns: string
  - name: transfer_score
    library: {}
    args: [int, int]
    returns: float
{extra}"#,
            plugin("route_id").display(),
            plugin("transfer_score").display()
        )
    }

    fn errors(text: &str) -> Vec<String> {
        match Pipeline::from_yaml(text) {
            Ok(_) => panic!("expected the definition to be rejected"),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn derived_fields_rule_calls_and_udf_detectors_become_derived_fields() {
        let p = Pipeline::from_yaml(&yaml(
            "string",
            r#"derive:
  file_route: route_id(fileName)
rules:
  - name: misrouted
    when: file_route != route and transfer_score(bytes, durationMs) > 0.9
    message: "{fileName} is {file_route}'s"
detectors:
  - name: slow_transfer
    kind: udf
    udf: transfer_score
    features: [bytes, durationMs]
    threshold: 0.8
"#,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.derives.len(), 3);
        let names: Vec<&str> = p.derives.iter().map(|d| d.source.as_str()).collect();
        assert_eq!(
            names,
            [
                "route_id(fileName)",
                "transfer_score(bytes, durationMs)",
                "transfer_score(bytes, durationMs)"
            ]
        );
        // Derived fields follow the schema's own fields, in the order they are computed.
        assert_eq!(p.derives[0].field, 5);
        assert_eq!(p.derives[0].args, vec![2]);
        assert_eq!(p.schema.fields()[5].name, "file_route");
        use anom_lang::expr::Scope;
        assert_eq!(
            p.scope.field("file_route").map(|f| f.ty),
            Some(ValueType::Str)
        );
        assert!(p.derives[1].score);
        assert!(matches!(&p.detectors[0].kind, DetectorKind::Udf(u) if u == "transfer_score"));
        assert_eq!(p.detectors[0].inputs, vec![p.derives[1].field]);
        // The condition as written is kept for explanations.
        assert!(p.rules[0]
            .when
            .contains("transfer_score(bytes, durationMs) > 0.9"));
    }

    #[test]
    fn a_signature_that_disagrees_with_the_library_is_a_located_definition_error() {
        let lib = plugin("route_id").display().to_string();
        let e = errors(&yaml("int", ""));
        assert_eq!(
            e,
            [format!(
                "line 10: udfs[0]: udf `route_id` takes (int) -> string but library {lib} takes (string) -> string"
            )]
        );
    }

    #[test]
    fn a_missing_library_is_a_definition_error_at_its_path() {
        let text =
            yaml("string", "").replacen(&plugin("route_id").display().to_string(), "./x.so", 1);
        let e = errors(&text);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].ends_with("udfs[0].library: library ./x.so not found"),
            "{e:?}"
        );
    }

    #[test]
    fn uses_of_udfs_are_checked_against_fields_and_signatures() {
        let e = errors(&yaml(
            "string",
            r#"derive:
  a: route_id(bytes)
  b: route_ids(fileName)
  c: transfer_score(bytes)
  d: route_id(filename)
  route: route_id(fileName)
  e: fileName + 1
rules:
  - name: r
    when: route_id(nope) == 'X'
detectors:
  - name: s
    kind: udf
    udf: route_id
    features: [fileName]
    threshold: 0.5
"#,
        ));
        let joined = e.join("\n");
        for expected in [
            "derive.a: udf `route_id` takes string here, but `bytes` is a int",
            "derive.b: unknown udf `route_ids`, did you mean `route_id`?",
            "derive.c: udf `transfer_score` takes 2 arguments (int, int), found 1",
            "derive.d: unknown field `filename`, did you mean `fileName`?",
            "derive.route: `route` is already the name of a field",
            "derive.e: expected a UDF call on fields, e.g. `route_id(fileName)`, found `fileName + 1`",
            "rules[0].when: unknown field `nope`",
            "detectors[0].udf: a udf detector scores with a float in [0, 1], but udf `route_id` returns string",
        ] {
            assert!(joined.contains(expected), "missing `{expected}` in:\n{joined}");
        }
        let e = errors(&yaml("string", "").replacen("name: route_id", "name: lower", 1));
        assert!(
            e.iter().any(|m| m.ends_with(
                "udfs[0].name: `lower` is the name of a built-in function or aggregate: give the UDF another name"
            )),
            "{e:?}"
        );
    }

    #[test]
    fn calls_in_conditions_are_syntax_and_quoted_text_is_left_alone() {
        let when = "fileName != 'route_id(x)' and route_id(fileName) == route and route_id( fileName ) != 'A'";
        let needs = crate::lower::needs(&anom_lang::expr::parse(when).unwrap(), &["route_id"]);
        // The same call however it is spaced: one hidden field, named as the parser prints it.
        assert_eq!(needs.calls.len(), 1);
        assert_eq!(needs.calls[0].text, "route_id(fileName)");
    }
}
