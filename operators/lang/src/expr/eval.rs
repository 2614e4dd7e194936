//! The compiled form of an expression and its evaluation on a row.
//!
//! Types were checked at load time, so evaluation only dispatches on the values it
//! meets; any combination it does not expect (which a row that breaks its schema could
//! produce) yields `Null` rather than a panic.

use std::borrow::{Borrow, Cow};
use std::cmp::Ordering;
use std::collections::HashSet;
use std::hash::Hash;

use regex::Regex;

use crate::value::{Value, ValueType};

/// A value during evaluation. Strings borrow from the row or the compiled constants,
/// so comparisons and logic on fields allocate nothing; only functions that build a
/// new string (`lower`, `upper`, `+` on strings) own theirs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Timestamp(i64),
}

impl<'a> Val<'a> {
    fn from_value(value: &'a Value) -> Val<'a> {
        match value {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Int(i) => Val::Int(*i),
            Value::Float(x) => float(*x),
            Value::Str(s) => Val::Str(Cow::Borrowed(s)),
            Value::Timestamp(t) => Val::Timestamp(*t),
        }
    }

    pub(crate) fn into_value(self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(b),
            Val::Int(i) => Value::Int(i),
            Val::Float(x) => Value::Float(x),
            Val::Str(s) => Value::Str(s.as_ref().into()),
            Val::Timestamp(t) => Value::Timestamp(t),
        }
    }
}

/// A float result: NaN and infinities become `Null`, so they never propagate.
fn float<'a>(x: f64) -> Val<'a> {
    if x.is_finite() {
        Val::Float(x)
    } else {
        Val::Null
    }
}

fn int<'a>(i: Option<i64>) -> Val<'a> {
    i.map_or(Val::Null, Val::Int)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn test(self, ordering: Ordering) -> bool {
        match self {
            CmpOp::Eq => ordering == Ordering::Equal,
            CmpOp::Ne => ordering != Ordering::Equal,
            CmpOp::Lt => ordering == Ordering::Less,
            CmpOp::Le => ordering != Ordering::Greater,
            CmpOp::Gt => ordering == Ordering::Greater,
            CmpOp::Ge => ordering != Ordering::Less,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StrTest {
    Contains,
    StartsWith,
    EndsWith,
}

/// A compiled expression node.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    Const(Value),
    /// Reads `row[index]`; a value that is not of type `ty` reads as `Null`.
    Field {
        index: usize,
        ty: ValueType,
    },
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Neg(Box<Node>),
    Arith(ArithOp, Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    In {
        operand: Box<Node>,
        set: InSet,
        negated: bool,
    },
    StrTest(StrTest, Box<Node>, Box<Node>),
    Matches(Box<Node>, Regex),
    Lower(Box<Node>),
    Upper(Box<Node>),
    Len(Box<Node>),
    Abs(Box<Node>),
    Min(Vec<Node>),
    Max(Vec<Node>),
    Coalesce(Vec<Node>),
    IsNull(Box<Node>),
    IsPresent(Box<Node>),
    /// Int to float, inserted where an int meets floats in `min`/`max`/`coalesce` so the
    /// result has the statically checked type.
    ToFloat(Box<Node>),
}

impl Node {
    /// Whether every child is a constant, so the node can be evaluated at load time.
    pub(crate) fn children_are_const(&self) -> bool {
        let is_const = |n: &Node| matches!(n, Node::Const(_));
        match self {
            Node::Const(_) | Node::Field { .. } => false,
            Node::Not(a)
            | Node::Neg(a)
            | Node::In { operand: a, .. }
            | Node::Matches(a, _)
            | Node::Lower(a)
            | Node::Upper(a)
            | Node::Len(a)
            | Node::Abs(a)
            | Node::IsNull(a)
            | Node::IsPresent(a)
            | Node::ToFloat(a) => is_const(a),
            Node::And(a, b)
            | Node::Or(a, b)
            | Node::Arith(_, a, b)
            | Node::Cmp(_, a, b)
            | Node::StrTest(_, a, b) => is_const(a) && is_const(b),
            Node::Min(args) | Node::Max(args) | Node::Coalesce(args) => args.iter().all(is_const),
        }
    }

    pub(crate) fn eval<'a>(&'a self, row: &'a [Value]) -> Val<'a> {
        match self {
            Node::Const(value) => Val::from_value(value),
            Node::Field { index, ty } => read_field(row, *index, *ty),
            Node::Not(a) => match a.eval(row) {
                Val::Bool(b) => Val::Bool(!b),
                _ => Val::Null,
            },
            // Kleene logic: a `false` (for `and`) or `true` (for `or`) on either side
            // decides, whatever the other side is; otherwise null is contagious.
            Node::And(a, b) => match a.eval(row) {
                Val::Bool(false) => Val::Bool(false),
                left => match (left, b.eval(row)) {
                    (_, Val::Bool(false)) => Val::Bool(false),
                    (Val::Bool(true), Val::Bool(true)) => Val::Bool(true),
                    _ => Val::Null,
                },
            },
            Node::Or(a, b) => match a.eval(row) {
                Val::Bool(true) => Val::Bool(true),
                left => match (left, b.eval(row)) {
                    (_, Val::Bool(true)) => Val::Bool(true),
                    (Val::Bool(false), Val::Bool(false)) => Val::Bool(false),
                    _ => Val::Null,
                },
            },
            Node::Neg(a) => match a.eval(row) {
                Val::Int(i) => int(i.checked_neg()),
                Val::Float(x) => float(-x),
                _ => Val::Null,
            },
            Node::Arith(op, a, b) => match a.eval(row) {
                Val::Null => Val::Null,
                left => arith(*op, left, b.eval(row)),
            },
            Node::Cmp(op, a, b) => match a.eval(row) {
                Val::Null => Val::Null,
                left => match compare(&left, &b.eval(row)) {
                    Some(ordering) => Val::Bool(op.test(ordering)),
                    None => Val::Null,
                },
            },
            Node::In {
                operand,
                set,
                negated,
            } => match set.contains(&operand.eval(row)) {
                Some(found) => Val::Bool(found != *negated),
                None => Val::Null,
            },
            Node::StrTest(test, a, b) => match (a.eval(row), b.eval(row)) {
                (Val::Str(s), Val::Str(part)) => Val::Bool(match test {
                    StrTest::Contains => s.contains(part.as_ref()),
                    StrTest::StartsWith => s.starts_with(part.as_ref()),
                    StrTest::EndsWith => s.ends_with(part.as_ref()),
                }),
                _ => Val::Null,
            },
            Node::Matches(a, regex) => match a.eval(row) {
                Val::Str(s) => Val::Bool(regex.is_match(&s)),
                _ => Val::Null,
            },
            Node::Lower(a) => match a.eval(row) {
                Val::Str(s) => Val::Str(Cow::Owned(s.to_lowercase())),
                _ => Val::Null,
            },
            Node::Upper(a) => match a.eval(row) {
                Val::Str(s) => Val::Str(Cow::Owned(s.to_uppercase())),
                _ => Val::Null,
            },
            // In chars, as a person counts them, not in bytes.
            Node::Len(a) => match a.eval(row) {
                Val::Str(s) => int(i64::try_from(s.chars().count()).ok()),
                _ => Val::Null,
            },
            Node::Abs(a) => match a.eval(row) {
                Val::Int(i) => int(i.checked_abs()),
                Val::Float(x) => float(x.abs()),
                _ => Val::Null,
            },
            Node::Min(args) => extremum(args, row, Ordering::Less),
            Node::Max(args) => extremum(args, row, Ordering::Greater),
            Node::Coalesce(args) => args
                .iter()
                .map(|arg| arg.eval(row))
                .find(|v| !matches!(v, Val::Null))
                .unwrap_or(Val::Null),
            Node::IsNull(a) => Val::Bool(matches!(a.eval(row), Val::Null)),
            Node::IsPresent(a) => Val::Bool(!matches!(a.eval(row), Val::Null)),
            Node::ToFloat(a) => match a.eval(row) {
                Val::Int(i) => float(i as f64),
                other => other,
            },
        }
    }
}

/// Reads a field, treating a missing one, a non-finite float or a value of another
/// type than the schema's as `Null` so results always have the checked type.
fn read_field(row: &[Value], index: usize, ty: ValueType) -> Val<'_> {
    match (ty, row.get(index)) {
        (ValueType::Bool, Some(Value::Bool(b))) => Val::Bool(*b),
        (ValueType::Int, Some(Value::Int(i))) => Val::Int(*i),
        (ValueType::Float, Some(Value::Float(x))) => float(*x),
        (ValueType::Float, Some(Value::Int(i))) => float(*i as f64),
        (ValueType::Str, Some(Value::Str(s))) => Val::Str(Cow::Borrowed(s)),
        (ValueType::Timestamp, Some(Value::Timestamp(t))) => Val::Timestamp(*t),
        _ => Val::Null,
    }
}

fn arith<'a>(op: ArithOp, left: Val<'a>, right: Val<'a>) -> Val<'a> {
    use ArithOp::*;
    match (left, right) {
        (Val::Int(a), Val::Int(b)) => match op {
            Add => int(a.checked_add(b)),
            Sub => int(a.checked_sub(b)),
            Mul => int(a.checked_mul(b)),
            Div if b == 0 => Val::Null,
            Div => float(a as f64 / b as f64),
            // `None` for a zero divisor and for i64::MIN % -1.
            Mod => int(a.checked_rem(b)),
        },
        (Val::Int(a), Val::Float(b)) => float_arith(op, a as f64, b),
        (Val::Float(a), Val::Int(b)) => float_arith(op, a, b as f64),
        (Val::Float(a), Val::Float(b)) => float_arith(op, a, b),
        (Val::Str(a), Val::Str(b)) if op == Add => {
            let mut joined = String::with_capacity(a.len() + b.len());
            joined.push_str(&a);
            joined.push_str(&b);
            Val::Str(Cow::Owned(joined))
        }
        (Val::Timestamp(t), Val::Int(ms)) => match op {
            Add => int(t.checked_add(ms)).into_timestamp(),
            Sub => int(t.checked_sub(ms)).into_timestamp(),
            _ => Val::Null,
        },
        (Val::Int(ms), Val::Timestamp(t)) if op == Add => int(t.checked_add(ms)).into_timestamp(),
        (Val::Timestamp(a), Val::Timestamp(b)) if op == Sub => int(a.checked_sub(b)),
        _ => Val::Null,
    }
}

impl Val<'_> {
    fn into_timestamp(self) -> Self {
        match self {
            Val::Int(t) => Val::Timestamp(t),
            other => other,
        }
    }
}

fn float_arith<'a>(op: ArithOp, a: f64, b: f64) -> Val<'a> {
    match op {
        ArithOp::Add => float(a + b),
        ArithOp::Sub => float(a - b),
        ArithOp::Mul => float(a * b),
        ArithOp::Div | ArithOp::Mod if b == 0.0 => Val::Null,
        ArithOp::Div => float(a / b),
        ArithOp::Mod => float(a % b),
    }
}

/// Orders two values of comparable types; `None` for null or incomparable ones.
pub(crate) fn compare(left: &Val<'_>, right: &Val<'_>) -> Option<Ordering> {
    match (left, right) {
        (Val::Int(a), Val::Int(b)) => Some(a.cmp(b)),
        (Val::Float(a), Val::Float(b)) => a.partial_cmp(b),
        (Val::Int(a), Val::Float(b)) => cmp_int_float(*a, *b),
        (Val::Float(a), Val::Int(b)) => cmp_int_float(*b, *a).map(Ordering::reverse),
        (Val::Str(a), Val::Str(b)) => Some(a.as_ref().cmp(b.as_ref())),
        (Val::Timestamp(a), Val::Timestamp(b)) => Some(a.cmp(b)),
        (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// 2^63, exact as an f64: every finite float outside [-2^63, 2^63) is beyond any i64.
const TWO_63: f64 = 9_223_372_036_854_775_808.0;

/// Compares an int with a float exactly, where `i as f64` would round large ints.
pub(crate) fn cmp_int_float(i: i64, x: f64) -> Option<Ordering> {
    if x.is_nan() {
        return None;
    }
    if x >= TWO_63 {
        return Some(Ordering::Less);
    }
    if x < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let whole = x.trunc();
    // In range and integral, so the cast is exact.
    let whole_int = whole as i64;
    Some(i.cmp(&whole_int).then_with(|| {
        let fraction = x - whole;
        0.0f64.partial_cmp(&fraction).unwrap_or(Ordering::Equal)
    }))
}

/// The float as an i64 if it is integral and in range.
fn exact_int(x: f64) -> Option<i64> {
    (x.fract() == 0.0 && (-TWO_63..TWO_63).contains(&x)).then_some(x as i64)
}

/// `min`/`max`: null if any argument is null. Arguments are all ints or all floats.
fn extremum<'a>(args: &'a [Node], row: &'a [Value], keep: Ordering) -> Val<'a> {
    let mut best = Val::Null;
    for arg in args {
        let value = arg.eval(row);
        if value == Val::Null {
            return Val::Null;
        }
        if best == Val::Null || compare(&value, &best) == Some(keep) {
            best = value;
        }
    }
    best
}

/// A set of literals to test membership in; small sets scan a vector, which beats
/// hashing for the few values a rule usually lists.
#[derive(Clone, Debug)]
pub(crate) enum Set<T: Eq + Hash> {
    Few(Vec<T>),
    Many(HashSet<T>),
}

impl<T: Eq + Hash> Set<T> {
    const SCAN_LIMIT: usize = 8;

    pub(crate) fn new(mut items: Vec<T>) -> Self {
        if items.len() <= Self::SCAN_LIMIT {
            let mut unique = Vec::with_capacity(items.len());
            for item in items.drain(..) {
                if !unique.contains(&item) {
                    unique.push(item);
                }
            }
            Set::Few(unique)
        } else {
            Set::Many(items.into_iter().collect())
        }
    }

    fn contains<Q>(&self, item: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            Set::Few(items) => items.iter().any(|x| x.borrow() == item),
            Set::Many(items) => items.contains(item),
        }
    }
}

/// The literals of an `in` list, by the kind of the left-hand side.
#[derive(Clone, Debug)]
pub(crate) enum InSet {
    /// Ints and floats apart, so ints compare exactly.
    Num {
        ints: Set<i64>,
        floats: Vec<f64>,
    },
    Str(Set<Box<str>>),
    Bool {
        has_true: bool,
        has_false: bool,
    },
}

impl InSet {
    /// `None` when the value is null (or of a kind the list cannot hold).
    fn contains(&self, value: &Val<'_>) -> Option<bool> {
        match (self, value) {
            (InSet::Num { ints, floats }, Val::Int(i)) => Some(
                ints.contains(i)
                    || floats
                        .iter()
                        .any(|x| cmp_int_float(*i, *x) == Some(Ordering::Equal)),
            ),
            (InSet::Num { ints, floats }, Val::Float(x)) => {
                Some(floats.contains(x) || exact_int(*x).is_some_and(|i| ints.contains(&i)))
            }
            (InSet::Str(strs), Val::Str(s)) => Some(strs.contains(s.as_ref())),
            (
                InSet::Bool {
                    has_true,
                    has_false,
                },
                Val::Bool(b),
            ) => Some(if *b { *has_true } else { *has_false }),
            _ => None,
        }
    }
}

/// A parsed, type-checked expression, ready to evaluate on rows.
#[derive(Clone, Debug)]
pub struct CompiledExpr {
    root: Node,
    ty: ValueType,
    fields: Vec<usize>,
    source: String,
}

impl CompiledExpr {
    pub(crate) fn new(root: Node, ty: ValueType, fields: Vec<usize>, source: &str) -> Self {
        CompiledExpr {
            root,
            ty,
            fields,
            source: source.to_string(),
        }
    }

    /// The expression's value on `row` (one value per schema field, in schema order).
    /// Fields past the end of `row` read as `Null`.
    pub fn eval(&self, row: &[Value]) -> Value {
        // A bare field keeps its `Arc` instead of copying the string.
        if let Node::Field { index, .. } = self.root {
            if let Some(value @ Value::Str(_)) = row.get(index) {
                if self.ty == ValueType::Str {
                    return value.clone();
                }
            }
        }
        self.root.eval(row).into_value()
    }

    /// Whether a rule with this condition fires: only when it is exactly `true`.
    pub fn matches(&self, row: &[Value]) -> bool {
        matches!(self.root.eval(row), Val::Bool(true))
    }

    /// The static type of the result; `eval` returns a value of it or `Null`.
    pub fn result_type(&self) -> ValueType {
        self.ty
    }

    /// The distinct field indexes the expression reads, in order of first use.
    pub fn fields(&self) -> Vec<usize> {
        self.fields.clone()
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    #[cfg(test)]
    pub(crate) fn root_for_tests(&self) -> &Node {
        &self.root
    }
}
