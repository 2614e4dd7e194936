//! The rule expression parser.

use anom_lang::expr::parse;
use arbitrary::Arbitrary;

/// A parsed expression prints as text that parses to the same expression (printing is a
/// fixpoint), and a refusal says where and why.
fn check(source: &str) {
    match parse(source) {
        Ok(ast) => {
            let printed = ast.to_string();
            let again = parse(&printed).unwrap_or_else(|e| {
                panic!("`{source}` printed as `{printed}`, which does not parse: {e:?}")
            });
            assert_eq!(
                again.to_string(),
                printed,
                "printing `{source}` is not a fixpoint"
            );
        }
        Err(e) => assert!(!format!("{e:?}").is_empty()),
    }
}

pub fn bytes(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
}

/// Expressions built from the grammar's pieces, so the parser's deeper paths are reached.
#[derive(Debug, Arbitrary)]
pub enum Expr {
    Field(u8),
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    Binary(Box<Expr>, u8, Box<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Call(u8, Vec<Expr>),
    Over(u8, Box<Expr>, u8),
    In(Box<Expr>, Vec<Expr>),
    Paren(Box<Expr>),
    Raw(String),
}

const FIELDS: [&str; 5] = ["amount", "status", "durationMs", "user", "at"];
const OPS: [&str; 16] = [
    "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or", "=~", "in", "not in",
];
const CALLS: [&str; 8] = [
    "abs", "coalesce", "is_null", "lower", "prev", "len", "round", "nope",
];
const AGGS: [&str; 5] = ["sum", "count", "avg", "max", "distinct"];
const WINDOWS: [&str; 5] = ["5m", "1h", "1d", "0s", "99999999999d"];

impl Expr {
    fn render(&self, out: &mut String, depth: usize) {
        if depth > 48 {
            out.push('1');
            return;
        }
        match self {
            Expr::Field(i) => out.push_str(FIELDS[*i as usize % FIELDS.len()]),
            Expr::Int(i) => out.push_str(&i.to_string()),
            Expr::Float(f) => out.push_str(&f.to_string()),
            Expr::Text(s) => {
                out.push('\'');
                out.push_str(&s.replace('\'', "\\'"));
                out.push('\'');
            }
            Expr::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Expr::Binary(a, op, b) => {
                a.render(out, depth + 1);
                out.push(' ');
                out.push_str(OPS[*op as usize % OPS.len()]);
                out.push(' ');
                b.render(out, depth + 1);
            }
            Expr::Not(e) => {
                out.push_str("not ");
                e.render(out, depth + 1);
            }
            Expr::Neg(e) => {
                out.push('-');
                e.render(out, depth + 1);
            }
            Expr::Call(f, args) => {
                out.push_str(CALLS[*f as usize % CALLS.len()]);
                out.push('(');
                for (i, a) in args.iter().take(4).enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    a.render(out, depth + 1);
                }
                out.push(')');
            }
            Expr::Over(f, e, w) => {
                out.push_str(AGGS[*f as usize % AGGS.len()]);
                out.push('(');
                e.render(out, depth + 1);
                out.push_str(") over ");
                out.push_str(WINDOWS[*w as usize % WINDOWS.len()]);
            }
            Expr::In(e, items) => {
                e.render(out, depth + 1);
                out.push_str(" in [");
                for (i, a) in items.iter().take(4).enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    a.render(out, depth + 1);
                }
                out.push(']');
            }
            Expr::Paren(e) => {
                out.push('(');
                e.render(out, depth + 1);
                out.push(')');
            }
            Expr::Raw(s) => out.push_str(s),
        }
    }
}

pub fn structured(e: Expr) {
    let mut text = String::new();
    e.render(&mut text, 0);
    check(&text);
}
