//! The built-in functions: their signatures, argument type rules and lowering.

use regex::Regex;

use super::eval::{Node, StrTest};
use super::parser::{quote_str, Ast, AstKind, Literal};
use super::typecheck::{describe, fold, suggest, Checker, Typed};
use super::ExprError;
use crate::value::ValueType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Func {
    Contains,
    StartsWith,
    EndsWith,
    Matches,
    Lower,
    Upper,
    Len,
    Abs,
    Min,
    Max,
    Coalesce,
    IsNull,
    IsPresent,
}

struct Signature {
    func: Func,
    name: &'static str,
    usage: &'static str,
    min_args: usize,
    /// `None` for variadic functions.
    max_args: Option<usize>,
}

const fn sig(
    func: Func,
    name: &'static str,
    usage: &'static str,
    min_args: usize,
    max_args: Option<usize>,
) -> Signature {
    Signature {
        func,
        name,
        usage,
        min_args,
        max_args,
    }
}

const FUNCTIONS: [Signature; 13] = [
    sig(Func::Contains, "contains", "contains(s, sub)", 2, Some(2)),
    sig(
        Func::StartsWith,
        "starts_with",
        "starts_with(s, prefix)",
        2,
        Some(2),
    ),
    sig(
        Func::EndsWith,
        "ends_with",
        "ends_with(s, suffix)",
        2,
        Some(2),
    ),
    sig(Func::Matches, "matches", "matches(s, 'regex')", 2, Some(2)),
    sig(Func::Lower, "lower", "lower(s)", 1, Some(1)),
    sig(Func::Upper, "upper", "upper(s)", 1, Some(1)),
    sig(Func::Len, "len", "len(s)", 1, Some(1)),
    sig(Func::Abs, "abs", "abs(n)", 1, Some(1)),
    sig(Func::Min, "min", "min(a, b, ...)", 2, None),
    sig(Func::Max, "max", "max(a, b, ...)", 2, None),
    sig(Func::Coalesce, "coalesce", "coalesce(a, b, ...)", 2, None),
    sig(Func::IsNull, "is_null", "is_null(x)", 1, Some(1)),
    sig(Func::IsPresent, "is_present", "is_present(x)", 1, Some(1)),
];

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

pub(crate) fn check_call(
    checker: &mut Checker<'_>,
    name: &str,
    args: &[Ast],
    column: usize,
) -> Result<Typed, ExprError> {
    let Some(sig) = FUNCTIONS.iter().find(|s| s.name == name) else {
        return Err(unknown_function(checker, name, column));
    };
    let arity_ok = args.len() >= sig.min_args && sig.max_args.is_none_or(|max| args.len() <= max);
    if !arity_ok {
        let expected = match sig.max_args {
            Some(max) if max == sig.min_args => format!("{max} argument{}", plural(max)),
            _ => format!("at least {} argument{}", sig.min_args, plural(sig.min_args)),
        };
        return Err(ExprError::new(
            column,
            format!(
                "`{name}` takes {expected}, found {} (usage: {})",
                args.len(),
                sig.usage
            ),
        ));
    }
    let mut typed = Vec::with_capacity(args.len());
    for arg in args {
        typed.push(checker.check(arg)?);
    }
    let call = Call { sig, args };
    let types: Vec<ValueType> = typed.iter().map(|t| t.ty).collect();
    let mut nodes = typed.into_iter().map(|t| t.node);
    let mut next = || {
        Box::new(
            nodes
                .next()
                .unwrap_or(Node::Const(crate::value::Value::Null)),
        )
    };

    use ValueType::*;
    let (node, ty) = match sig.func {
        Func::Contains | Func::StartsWith | Func::EndsWith => {
            call.expect_all(&types, "a string", |t| t == Str)?;
            let test = match sig.func {
                Func::Contains => StrTest::Contains,
                Func::StartsWith => StrTest::StartsWith,
                _ => StrTest::EndsWith,
            };
            (Node::StrTest(test, next(), next()), Bool)
        }
        Func::Matches => {
            call.expect_all(&types, "a string", |t| t == Str)?;
            let regex = call.regex_argument()?;
            (Node::Matches(next(), regex), Bool)
        }
        Func::Lower | Func::Upper | Func::Len => {
            call.expect_all(&types, "a string", |t| t == Str)?;
            match sig.func {
                Func::Lower => (Node::Lower(next()), Str),
                Func::Upper => (Node::Upper(next()), Str),
                _ => (Node::Len(next()), Int),
            }
        }
        Func::Abs => {
            call.expect_all(&types, "a number", ValueType::is_numeric)?;
            (Node::Abs(next()), types.first().copied().unwrap_or(Null))
        }
        Func::Min | Func::Max => {
            call.expect_all(&types, "a number", ValueType::is_numeric)?;
            let ty = if types.contains(&Float) {
                Float
            } else if types.contains(&Int) {
                Int
            } else {
                Null
            };
            let args = promote(nodes.by_ref(), &types, ty);
            let node = if sig.func == Func::Min {
                Node::Min(args)
            } else {
                Node::Max(args)
            };
            (node, ty)
        }
        Func::Coalesce => {
            let ty = call.common_type(&types)?;
            (Node::Coalesce(promote(nodes.by_ref(), &types, ty)), ty)
        }
        Func::IsNull => (Node::IsNull(next()), Bool),
        Func::IsPresent => (Node::IsPresent(next()), Bool),
    };
    Ok(fold(node, ty))
}

/// Wraps int arguments in `ToFloat` when the result is a float, so every argument,
/// and so the result, has the result's type at run time.
fn promote(nodes: impl Iterator<Item = Node>, types: &[ValueType], ty: ValueType) -> Vec<Node> {
    nodes
        .zip(types)
        .map(|(node, &arg_ty)| {
            if ty == ValueType::Float && arg_ty == ValueType::Int {
                Node::ToFloat(Box::new(node))
            } else {
                node
            }
        })
        .collect()
}

fn unknown_function(checker: &Checker<'_>, name: &str, column: usize) -> ExprError {
    let message = if let Some(close) = suggest(name, FUNCTIONS.iter().map(|s| s.name)) {
        format!("unknown function `{name}`, did you mean `{close}`?")
    } else if checker.scope.field(name).is_some() {
        format!("`{name}` is a field, not a function")
    } else {
        let names: Vec<&str> = FUNCTIONS.iter().map(|s| s.name).collect();
        format!(
            "unknown function `{name}` (the functions are {})",
            names.join(", ")
        )
    };
    ExprError::new(column, message)
}

/// A call being checked, for argument error messages.
struct Call<'a> {
    sig: &'a Signature,
    args: &'a [Ast],
}

impl Call<'_> {
    fn arg_error(&self, index: usize, expected: &str, ty: ValueType) -> ExprError {
        let (column, found) = match self.args.get(index) {
            Some(arg) => (arg.column, describe(arg, ty)),
            None => (1, ty.to_string()),
        };
        ExprError::new(
            column,
            format!(
                "argument {} of `{}` must be {expected}, found {found}",
                index + 1,
                self.sig.name
            ),
        )
    }

    /// Every argument must satisfy `ok` or be null.
    fn expect_all(
        &self,
        types: &[ValueType],
        expected: &str,
        ok: impl Fn(ValueType) -> bool,
    ) -> Result<(), ExprError> {
        let bad = types
            .iter()
            .enumerate()
            .find(|(_, &t)| t != ValueType::Null && !ok(t));
        match bad {
            Some((index, &ty)) => Err(self.arg_error(index, expected, ty)),
            None => Ok(()),
        }
    }

    /// The regex of `matches`, which must be a literal so it is compiled once, here.
    fn regex_argument(&self) -> Result<Regex, ExprError> {
        let Some(arg) = self.args.get(1) else {
            return Err(ExprError::new(1, "`matches` needs a regex"));
        };
        let AstKind::Literal(Literal::Str(pattern)) = &arg.kind else {
            return Err(ExprError::new(
                arg.column,
                format!(
                    "argument 2 of `matches` must be a string literal (the regex is compiled \
                     when the rule loads), found `{arg}`"
                ),
            ));
        };
        Regex::new(pattern).map_err(|e| {
            // The crate's message spans several lines with a caret; keep its last line.
            let text = e.to_string();
            let reason = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .trim_start_matches("error: ")
                .to_string();
            ExprError::new(
                arg.column,
                format!(
                    "invalid regex {} in `matches`: {reason}",
                    quote_str(pattern)
                ),
            )
        })
    }

    /// `coalesce`: all non-null arguments share a type; ints and floats unify to float.
    fn common_type(&self, types: &[ValueType]) -> Result<ValueType, ExprError> {
        let mut common = ValueType::Null;
        let mut first = 0;
        for (index, &ty) in types.iter().enumerate() {
            common = match (common, ty) {
                (c, ValueType::Null) => c,
                (ValueType::Null, t) => {
                    first = index;
                    t
                }
                (c, t) if c == t => c,
                (c, t) if c.is_numeric() && t.is_numeric() => ValueType::Float,
                (c, t) => {
                    let first_arg = self
                        .args
                        .get(first)
                        .map(|a| describe(a, c))
                        .unwrap_or_default();
                    let this = self
                        .args
                        .get(index)
                        .map(|a| describe(a, t))
                        .unwrap_or_default();
                    return Err(ExprError::new(
                        self.args.get(index).map_or(1, |a| a.column),
                        format!(
                            "the arguments of `coalesce` must have one type: argument {} is {first_arg} \
                             but argument {} is {this}",
                            first + 1,
                            index + 1
                        ),
                    ));
                }
            };
        }
        Ok(common)
    }
}
