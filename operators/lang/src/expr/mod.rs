//! The rule expression language: conditions such as
//! `durationMs > 5000 and status in ['FAILED', 'TIMEOUT']`.
//!
//! An expression goes through three stages, all but the last at load time:
//!
//! 1. The lexer turns the source into tokens, each with its 1-based column (in chars).
//! 2. [`parse`] builds an [`Ast`] with a precedence-climbing (Pratt) parser. The AST
//!    prints back as canonical source ([`Ast`]'s `Display`) that re-parses to an equal AST.
//!    Inline aggregates (`sum(amount) over 1d`) are syntax too ([`AstKind::Aggregate`]);
//!    what computes them, and UDF calls, is the caller's ([`Scope::computed`]).
//! 3. [`compile`] resolves field names through a [`Scope`], checks types statically and
//!    lowers the AST into a [`CompiledExpr`]: fields are read by index, regexes are
//!    compiled, `in` lists become sets and constant sub-expressions are folded.
//!
//! Evaluation ([`CompiledExpr::eval`]) never panics and never fails: a null or missing
//! input, a division by zero, an integer overflow or a non-finite float result gives
//! `Null`, and `and`/`or`/`not` follow three-valued (Kleene) logic. A rule fires only
//! when its condition is exactly `true` ([`CompiledExpr::matches`]).
//!
//! Precedence, lowest first: `or` (`||`); `and` (`&&`); prefix `not` (`!`); the
//! comparisons `== != < <= > >=` (`=`, `<>`), `in [...]`, `not in [...]`, which do not
//! chain; `+ -`; `* / %`; unary `-`; literals, fields, calls and parentheses.
//!
//! Functions: `contains(s, sub)`, `starts_with(s, prefix)`, `ends_with(s, suffix)`,
//! `matches(s, 'regex')` (the regex must be a literal: it is compiled at load time),
//! `lower(s)`, `upper(s)`, `len(s)` (in chars), `abs(n)`, `min(a, b, ...)`,
//! `max(a, b, ...)`, `coalesce(a, b, ...)`, `is_null(x)`, `is_present(x)`.
//!
//! Types are checked when the expression is compiled. Ints and floats mix (the result
//! is a float; `==` and ordering compare an int with a float exactly), `/` always gives
//! a float, `%` takes ints, `+` also joins strings, and timestamps (ms) take
//! `timestamp - timestamp -> int` and `timestamp ± int -> timestamp`. The literal `null`
//! fits any type, but comparing with it directly is an error, since the result would
//! always be null: use `is_null(x)`.

mod eval;
mod functions;
mod lexer;
mod parser;
mod typecheck;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use crate::value::ValueType;

pub use eval::CompiledExpr;
pub use parser::{parse, Ast, AstKind, BinaryOp, Literal, UnaryOp};

/// What an expression may know about one field of the schema it runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldInfo<'a> {
    /// Position of the field's value in a row.
    pub index: usize,
    pub ty: ValueType,
    /// For enum fields: the values the field can take, so comparisons with a
    /// misspelt value are caught at load time instead of silently never matching.
    pub allowed: Option<&'a [String]>,
}

/// Resolves field names while compiling; implemented by the schema.
pub trait Scope {
    fn field(&self, name: &str) -> Option<FieldInfo<'_>>;
    /// Every field name, for "did you mean" suggestions.
    fn field_names(&self) -> Vec<&str>;
    /// A value computed before the expression runs, named by the text that asks for it: an
    /// inline aggregate (`sum(amount) over 1d`, `prev(country)`) or a UDF call
    /// (`route_id(fileName)`, as [`Ast`] prints it). A pipeline's compiler lowers those into
    /// hidden aggregates and derived fields and resolves them here; other scopes have none.
    fn computed(&self, text: &str) -> Option<FieldInfo<'_>> {
        let _ = text;
        None
    }
}

/// A load-time error in an expression, located at a 1-based column counted in chars.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ExprError {
    pub column: usize,
    pub message: String,
}

impl ExprError {
    pub(crate) fn new(column: usize, message: impl Into<String>) -> Self {
        ExprError {
            column,
            message: message.into(),
        }
    }
}

/// Parses and type-checks `source` against `scope`. The result may be of any type.
pub fn compile(source: &str, scope: &dyn Scope) -> Result<CompiledExpr, ExprError> {
    let ast = parse(source)?;
    compile_ast(&ast, source, scope)
}

/// Type-checks an expression already parsed from `source`, against `scope`.
pub fn compile_ast(ast: &Ast, source: &str, scope: &dyn Scope) -> Result<CompiledExpr, ExprError> {
    typecheck::compile_ast(ast, source, scope)
}

/// Like [`compile`], but the expression must be a condition (of type bool).
pub fn compile_predicate(source: &str, scope: &dyn Scope) -> Result<CompiledExpr, ExprError> {
    predicate(compile(source, scope)?)
}

/// Like [`compile_ast`], but the expression must be a condition (of type bool).
pub fn compile_ast_predicate(
    ast: &Ast,
    source: &str,
    scope: &dyn Scope,
) -> Result<CompiledExpr, ExprError> {
    predicate(compile_ast(ast, source, scope)?)
}

fn predicate(compiled: CompiledExpr) -> Result<CompiledExpr, ExprError> {
    match compiled.result_type() {
        ValueType::Bool => Ok(compiled),
        other => Err(ExprError::new(
            1,
            format!("expected a condition (bool), found an expression of type {other}"),
        )),
    }
}
