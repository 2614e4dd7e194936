//! Alert message templates: `Route {route} took {durationMs} ms`, compiled once against the
//! schema so rendering is a walk over literal pieces and field indexes.

use std::fmt::Write;

use super::scope::RowScope;
use anom_lang::expr::ExprError;
use anom_lang::value::Value;

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Field(usize),
    Key,
    Rule,
    Severity,
    Silence,
}

#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// What a template can refer to besides the event's fields.
pub struct Context<'a> {
    pub key: &'a str,
    pub rule: &'a str,
    pub severity: &'a str,
    /// For absence rules: how long the key has been silent.
    pub silence: Option<&'a str>,
}

impl Template {
    /// Parses `text`; `{{` and `}}` stand for literal braces.
    pub fn compile(text: &str, scope: &RowScope) -> Result<Template, ExprError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(ExprError {
                            column: text[..at].chars().count() + 1,
                            message: "`{` is not closed; write `{{` for a literal brace".into(),
                        });
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    let name = name.trim();
                    pieces.push(match name {
                        "key" => Piece::Key,
                        "rule" => Piece::Rule,
                        "severity" => Piece::Severity,
                        "silence" => Piece::Silence,
                        _ => match scope.index_of(name) {
                            Some(i) => Piece::Field(i),
                            None => {
                                let mut names: Vec<&str> = scope.names().collect();
                                names.extend(["key", "rule", "severity", "silence"]);
                                return Err(ExprError {
                                    column: text[..at].chars().count() + 1,
                                    message: format!(
                                        "unknown field `{name}` in the message{}",
                                        anom_lang::suggest::did_you_mean(
                                            name,
                                            names.iter().copied()
                                        )
                                    ),
                                });
                            }
                        },
                    });
                }
                '}' => {
                    return Err(ExprError {
                        column: text[..at].chars().count() + 1,
                        message: "unmatched `}`; write `}}` for a literal brace".into(),
                    })
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    pub fn render(&self, row: &[Value], ctx: &Context<'_>) -> String {
        let mut out = String::with_capacity(64);
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(i) => match row.get(*i) {
                    Some(v) => {
                        let _ = write!(out, "{v}");
                    }
                    None => out.push_str("null"),
                },
                Piece::Key => out.push_str(ctx.key),
                Piece::Rule => out.push_str(ctx.rule),
                Piece::Severity => out.push_str(ctx.severity),
                Piece::Silence => out.push_str(ctx.silence.unwrap_or("")),
            }
        }
        out
    }
}
