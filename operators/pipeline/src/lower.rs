//! Lowering: what a condition asks to be computed before it runs.
//!
//! The expression parser reads inline aggregates (`sum(amount) over 1d`) and calls
//! (`prev(country)`, `route_id(fileName)`) as syntax. This pass walks a condition's tree and
//! lists them: each distinct inline aggregate becomes a hidden aggregate of the pipeline
//! (computed per key by the window stage), each distinct UDF call a hidden derived field
//! (computed by validate). Both are named by the text that asks for them — the aggregate as
//! written, the call as the parser prints it — and the row scope resolves that text
//! (`Scope::computed`), so the tree is type-checked as written and every message names what
//! the user wrote.

use anom_lang::expr::{Ast, AstKind};

/// A call the window stage computes: `prev(x)` takes no window but is an aggregate too.
const PREV: &str = "prev";

/// What one condition needs computed, in the order first written.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Needs {
    /// Inline aggregates: their spec as written (`sum(amount) over 1d`, `prev(country)`).
    pub aggregates: Vec<String>,
    /// UDF calls.
    pub calls: Vec<Call>,
}

/// A UDF call in a condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The call as printed (`route_id(fileName)`): the hidden field's name.
    pub text: String,
    pub udf: String,
    /// Its arguments: field names, or the text of an argument that is not one.
    pub args: Vec<Result<String, String>>,
}

/// Lists the inline aggregates and the calls of UDFs named in `udfs` that `ast` uses.
pub fn needs(ast: &Ast, udfs: &[&str]) -> Needs {
    let mut needs = Needs::default();
    walk(ast, udfs, &mut needs);
    needs
}

fn walk(ast: &Ast, udfs: &[&str], needs: &mut Needs) {
    match &ast.kind {
        AstKind::Aggregate { text, .. } => push_aggregate(needs, text.clone()),
        // The aggregate's own parser checks `prev`'s argument (one field).
        AstKind::Call { name, .. } if name == PREV => push_aggregate(needs, ast.to_string()),
        AstKind::Call { name, args } if udfs.contains(&name.as_str()) => {
            let text = ast.to_string();
            if !needs.calls.iter().any(|c| c.text == text) {
                needs.calls.push(Call {
                    text,
                    udf: name.clone(),
                    args: args
                        .iter()
                        .map(|a| match &a.kind {
                            AstKind::Field(f) => Ok(f.clone()),
                            _ => Err(a.to_string()),
                        })
                        .collect(),
                });
            }
        }
        AstKind::Literal(_) | AstKind::Field(_) => {}
        AstKind::Call { args, .. } => args.iter().for_each(|a| walk(a, udfs, needs)),
        AstKind::Unary { operand, .. } => walk(operand, udfs, needs),
        AstKind::Binary { left, right, .. } => {
            walk(left, udfs, needs);
            walk(right, udfs, needs);
        }
        AstKind::In { operand, list, .. } => {
            walk(operand, udfs, needs);
            list.iter().for_each(|a| walk(a, udfs, needs));
        }
    }
}

fn push_aggregate(needs: &mut Needs, text: String) {
    if !needs.aggregates.contains(&text) {
        needs.aggregates.push(text);
    }
}

/// Whether `text` is, as a whole, one inline aggregate a rule can use.
pub fn is_inline_aggregate(text: &str) -> bool {
    anom_lang::expr::parse(text).is_ok_and(|ast| match &ast.kind {
        AstKind::Aggregate { .. } => true,
        AstKind::Call { name, .. } => name == PREV,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anom_lang::expr::parse;

    fn of(when: &str, udfs: &[&str]) -> Needs {
        needs(&parse(when).unwrap(), udfs)
    }

    #[test]
    fn lists_inline_aggregates_once_as_written() {
        let n = of(
            "sum(amount) over 1d > 2000 and prev(country) != country and sum(amount) over 1d < 9",
            &[],
        );
        assert_eq!(n.aggregates, ["sum(amount) over 1d", "prev(country)"]);
        assert!(n.calls.is_empty());
        let n = of(
            "count() over calendar day tz Europe/Berlin > 5 and p99(ms) over 1h every 5m > 100",
            &[],
        );
        assert_eq!(
            n.aggregates,
            [
                "count() over calendar day tz Europe/Berlin",
                "p99(ms) over 1h every 5m"
            ]
        );
    }

    #[test]
    fn leaves_scalar_functions_plain_fields_and_quoted_text_alone() {
        let n = of("min(a, b) > 3 and max(x, 1) < overage and count > 1", &[]);
        assert_eq!(n, Needs::default());
        let when = r"fileName == 'count() over 5m' and `sum(x) over 1d` > 1 and note != 'it\'s prev(x)' and count() over 5m > 2";
        assert_eq!(of(when, &[]).aggregates, ["count() over 5m"]);
    }

    #[test]
    fn lists_calls_of_declared_udfs_with_their_arguments() {
        let n = of(
            "transfer_score(bytes, durationMs) > 0.8 and lower(route) == 'a' and route_id(1) > 0",
            &["transfer_score", "route_id"],
        );
        assert_eq!(n.calls.len(), 2);
        assert_eq!(n.calls[0].text, "transfer_score(bytes, durationMs)");
        assert_eq!(
            n.calls[0].args,
            [Ok("bytes".to_string()), Ok("durationMs".to_string())]
        );
        assert_eq!(n.calls[1].args, [Err("1".to_string())]);
    }

    #[test]
    fn knows_a_whole_inline_aggregate() {
        assert!(is_inline_aggregate("sum(amount) over 1d"));
        assert!(is_inline_aggregate("prev(country)"));
        assert!(!is_inline_aggregate("sum(amount) over 1 day"));
        assert!(!is_inline_aggregate("sum(amount)"));
    }
}
