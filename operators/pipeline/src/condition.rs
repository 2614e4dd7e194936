//! Structured conditions: a rule's `when` written as a map instead of an expression,
//! e.g. `{type: field_compare, field: durationMs, op: ">", value: 5000}`, for users whose
//! rules come from engines that keep conditions as JSON.
//!
//! A structured condition is translated into the expression language once, when the
//! pipeline loads (`durationMs > 5000`); from then on it is checked, compiled, evaluated and
//! shown exactly like a condition written as text. The translation remembers which key of
//! the map each piece of a leaf's text came from, so a problem is reported at
//! `rules[1].when.conditions[0].value`, not at a column of text nobody wrote.
//!
//! `Deserialize` is written by hand rather than derived with `#[serde(tag = "type")]`: serde
//! buffers an internally tagged enum before it picks the variant, and serde_norway then
//! loses the path and the line of everything inside (an unknown op deep in a tree would be
//! reported at the line where the rule starts, under `rules[1]`). Reading the map directly
//! keeps both. The result is the same: a map tagged by `type` that denies unknown keys.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use anom_lang::aggregate::AggFn;
use anom_lang::expr::{Ast, AstKind, Literal};

/// A rule's condition: an expression, or a structured condition translated into one.
#[derive(Clone, PartialEq)]
pub enum When {
    Expr(String),
    Structured(Condition),
}

impl fmt::Debug for When {
    /// An expression prints as the bare string it used to be, so the version hash of a
    /// pipeline written with expressions does not change.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            When::Expr(text) => fmt::Debug::fmt(text, f),
            When::Structured(c) => fmt::Debug::fmt(c, f),
        }
    }
}

impl When {
    /// The condition in the expression language: as written, or translated.
    pub fn to_expr(&self) -> String {
        match self {
            When::Expr(text) => text.clone(),
            When::Structured(c) => c.to_expr(),
        }
    }
}

impl From<&str> for When {
    fn from(text: &str) -> When {
        When::Expr(text.to_string())
    }
}

impl From<Condition> for When {
    fn from(c: Condition) -> When {
        When::Structured(c)
    }
}

/// A condition given as data.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `field op value`.
    FieldCompare {
        field: String,
        op: CompareOp,
        value: Scalar,
    },
    /// `field in [values]`.
    FieldIn { field: String, values: Vec<Scalar> },
    /// `field not in [values]`.
    FieldNotIn { field: String, values: Vec<Scalar> },
    /// `matches(field, 'pattern')`: the regex matches somewhere in the field.
    Matches { field: String, pattern: String },
    /// `is_null(field)`: the field is missing or null.
    IsNull { field: String },
    /// `is_present(field)`.
    NotNull { field: String },
    /// `function(field) over window op value`, an inline aggregate
    /// (`sum(amount) over 1d > 2000`, `count() over 5m >= 10`, `prev(country) != 'DE'`).
    AggregateCompare {
        function: AggFn,
        /// `None` for `count` and `rate`.
        field: Option<String>,
        /// The window as written after `over`; `None` only for `prev`.
        over: Option<String>,
        op: CompareOp,
        value: Scalar,
    },
    /// Every condition holds.
    All { conditions: Vec<Condition> },
    /// At least one condition holds.
    Any { conditions: Vec<Condition> },
    /// The condition does not hold.
    Not { condition: Box<Condition> },
    /// An expression, as a `when` string would give it.
    Expr { expr: String },
}

/// A comparison: `==`, `!=`, `>`, `>=`, `<`, `<=` (or `eq`, `ne`, `gt`, `gte`, `lt`, `lte`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    pub const ALL: [CompareOp; 6] = [
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Gt,
        CompareOp::Ge,
        CompareOp::Lt,
        CompareOp::Le,
    ];

    /// How the expression language writes it.
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
        }
    }
}

/// A literal value in a condition: a JSON number, string or bool (not null: test for a
/// missing value with `is_null`).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Int(i64),
    /// Always finite.
    Float(f64),
    Str(String),
    Bool(bool),
}

impl Scalar {
    /// The literal in the expression language, quoted and escaped as its lexer reads it.
    pub fn to_expr(&self) -> String {
        match self {
            Scalar::Int(i) => Literal::Int(*i).to_string(),
            Scalar::Float(x) => Literal::Float(*x).to_string(),
            Scalar::Str(s) => Literal::Str(s.clone()).to_string(),
            Scalar::Bool(b) => Literal::Bool(*b).to_string(),
        }
    }
}

/// A field name in the expression language: bare, or in backticks when it is a keyword
/// (`` `in` ``) or not a plain identifier.
fn field_expr(name: &str) -> String {
    Ast::new(AstKind::Field(name.to_string()), 1).to_string()
}

// ---------------------------------------------------------------------------------------
// Translation

/// How loosely a generated piece of text binds, to parenthesise it only where needed (and
/// where it helps the reader: a nested `all`/`any` is always in parentheses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Binding {
    /// An `expr` leaf, whose top operator is unknown, or an `any`.
    Or,
    And,
    Not,
    /// A comparison or `in`.
    Comparison,
    /// A function call.
    Call,
}

/// One leaf of a structured condition, on its own, to check it apart from the rest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Leaf {
    /// The leaf's path below `when`: empty for a leaf at the top, else like
    /// `.conditions[0].condition`.
    pub path: String,
    /// The leaf as an expression.
    pub text: String,
    /// Which key each stretch of `text` came from: first char, end char (exclusive, both
    /// counted in chars from 0) and the key's path below the leaf (`.value`, `.values[2]`).
    parts: Vec<(usize, usize, String)>,
    /// The key blamed for a problem outside every stretch.
    fallback: String,
    /// `expr` leaves: their text is the user's own, so a column in it means something.
    pub written: bool,
    /// `aggregate_compare` leaves: the aggregate, which `text` starts with.
    pub aggregate: Option<String>,
}

impl Leaf {
    /// The key (as a path suffix) that a problem reported at `column` (1-based, in chars of
    /// `text`) is about.
    pub fn blame(&self, column: usize) -> &str {
        let at = column.saturating_sub(1);
        self.parts
            .iter()
            .find(|(start, end, _)| *start <= at && at < *end)
            .map_or(self.fallback.as_str(), |(_, _, key)| key.as_str())
    }
}

/// Builds a leaf's text, recording where each key's piece lands.
struct LeafText {
    text: String,
    chars: usize,
    parts: Vec<(usize, usize, String)>,
}

impl LeafText {
    fn new() -> Self {
        LeafText {
            text: String::new(),
            chars: 0,
            parts: Vec::new(),
        }
    }

    fn push(&mut self, piece: &str, key: Option<&str>) -> &mut Self {
        let n = piece.chars().count();
        if let Some(key) = key {
            self.parts
                .push((self.chars, self.chars + n, key.to_string()));
        }
        self.text.push_str(piece);
        self.chars += n;
        self
    }

    /// ` op value`. The type checker reports a mismatch at the operator: it is the value
    /// that does not fit the field (or, for `>` on bools, the message says so).
    fn comparison(&mut self, op: CompareOp, value: &Scalar) -> &mut Self {
        self.push(" ", None)
            .push(op.symbol(), Some(".value"))
            .push(" ", None)
            .push(&value.to_expr(), Some(".value"))
    }

    fn leaf(self, path: &str, fallback: &str) -> Leaf {
        Leaf {
            path: path.to_string(),
            text: self.text,
            parts: self.parts,
            fallback: fallback.to_string(),
            written: false,
            aggregate: None,
        }
    }
}

impl Condition {
    /// The condition in the expression language, parenthesised so that it means exactly
    /// what the structure says.
    pub fn to_expr(&self) -> String {
        self.translate(String::new(), &mut Vec::new()).0
    }

    /// The condition's text, and each of its leaves on its own.
    pub(crate) fn leaves(&self) -> (String, Vec<Leaf>) {
        let mut leaves = Vec::new();
        let (text, _) = self.translate(String::new(), &mut leaves);
        (text, leaves)
    }

    fn translate(&self, path: String, leaves: &mut Vec<Leaf>) -> (String, Binding) {
        let (leaf, binding) = match self {
            Condition::All { conditions } | Condition::Any { conditions } => {
                let (joiner, binding) = match self {
                    Condition::All { .. } => (" and ", Binding::And),
                    _ => (" or ", Binding::Or),
                };
                let mut parts = Vec::with_capacity(conditions.len());
                for (i, c) in conditions.iter().enumerate() {
                    let (text, inner) = c.translate(format!("{path}.conditions[{i}]"), leaves);
                    if conditions.len() == 1 {
                        return (text, inner);
                    }
                    parts.push(if inner <= Binding::And {
                        format!("({text})")
                    } else {
                        text
                    });
                }
                return (parts.join(joiner), binding);
            }
            Condition::Not { condition } => {
                let (text, inner) = condition.translate(format!("{path}.condition"), leaves);
                let text = if inner == Binding::Call {
                    format!("not {text}")
                } else {
                    format!("not ({text})")
                };
                return (text, Binding::Not);
            }
            Condition::Expr { expr } => (
                Leaf {
                    path: path.clone(),
                    text: expr.clone(),
                    parts: Vec::new(),
                    fallback: ".expr".into(),
                    written: true,
                    aggregate: None,
                },
                Binding::Or,
            ),
            Condition::FieldCompare { field, op, value } => {
                let mut t = LeafText::new();
                t.push(&field_expr(field), Some(".field"))
                    .comparison(*op, value);
                (t.leaf(&path, ""), Binding::Comparison)
            }
            Condition::FieldIn { field, values } | Condition::FieldNotIn { field, values } => {
                let negated = matches!(self, Condition::FieldNotIn { .. });
                let mut t = LeafText::new();
                t.push(&field_expr(field), Some(".field")).push(" ", None);
                // `in` cannot test some types (timestamps): that is the field's doing.
                t.push(if negated { "not in" } else { "in" }, Some(".field"))
                    .push(" [", None);
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        t.push(", ", None);
                    }
                    t.push(&v.to_expr(), Some(&format!(".values[{i}]")));
                }
                t.push("]", None);
                (t.leaf(&path, ".values"), Binding::Comparison)
            }
            Condition::Matches { field, pattern } => {
                let mut t = LeafText::new();
                t.push("matches(", None)
                    .push(&field_expr(field), Some(".field"))
                    .push(", ", None)
                    .push(&Literal::Str(pattern.clone()).to_string(), Some(".pattern"))
                    .push(")", None);
                (t.leaf(&path, ""), Binding::Call)
            }
            Condition::IsNull { field } | Condition::NotNull { field } => {
                let function = match self {
                    Condition::IsNull { .. } => "is_null(",
                    _ => "is_present(",
                };
                let mut t = LeafText::new();
                t.push(function, None)
                    .push(&field_expr(field), Some(".field"))
                    .push(")", None);
                (t.leaf(&path, ".field"), Binding::Call)
            }
            Condition::AggregateCompare {
                function,
                field,
                over,
                op,
                value,
            } => {
                // Aggregates take fields by plain name, without backticks.
                let mut t = LeafText::new();
                t.push(function.name(), Some(".function"))
                    .push("(", Some(".function"))
                    .push(field.as_deref().unwrap_or(""), Some(".field"))
                    .push(")", Some(".function"));
                if let Some(over) = over {
                    t.push(" over ", Some(".over")).push(over, Some(".over"));
                }
                let aggregate = t.text.clone();
                t.comparison(*op, value);
                let mut leaf = t.leaf(&path, "");
                leaf.aggregate = Some(aggregate);
                (leaf, Binding::Comparison)
            }
        };
        let text = leaf.text.clone();
        leaves.push(leaf);
        (text, binding)
    }
}

// ---------------------------------------------------------------------------------------
// Deserialization

impl<'de> Deserialize<'de> for When {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = When;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an expression or a structured condition (a map with `type`)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<When, E> {
                Ok(When::Expr(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<When, E> {
                Ok(When::Expr(v))
            }
            // `when: true` was, and stays, the expression `true`; numbers go on to be
            // rejected as "expected a condition (bool)".
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<When, E> {
                Ok(When::Expr(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<When, E> {
                Ok(When::Expr(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<When, E> {
                Ok(When::Expr(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<When, E> {
                Ok(When::Expr(format!("{v:?}")))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<When, A::Error> {
                Condition::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(When::Structured)
            }
        }
        d.deserialize_any(V)
    }
}

/// The value of `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    FieldCompare,
    FieldIn,
    FieldNotIn,
    Matches,
    IsNull,
    NotNull,
    AggregateCompare,
    All,
    Any,
    Not,
    Expr,
}

impl Kind {
    const ALL: [Kind; 11] = [
        Kind::FieldCompare,
        Kind::FieldIn,
        Kind::FieldNotIn,
        Kind::Matches,
        Kind::IsNull,
        Kind::NotNull,
        Kind::AggregateCompare,
        Kind::All,
        Kind::Any,
        Kind::Not,
        Kind::Expr,
    ];
    const NAMES: [&'static str; 11] = [
        "field_compare",
        "field_in",
        "field_not_in",
        "matches",
        "is_null",
        "not_null",
        "aggregate_compare",
        "all",
        "any",
        "not",
        "expr",
    ];

    /// The keys a condition of this type takes.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::FieldCompare => &["type", "field", "op", "value"],
            Kind::FieldIn | Kind::FieldNotIn => &["type", "field", "values"],
            Kind::Matches => &["type", "field", "pattern"],
            Kind::IsNull | Kind::NotNull => &["type", "field"],
            Kind::AggregateCompare => &["type", "function", "field", "over", "op", "value"],
            Kind::All | Kind::Any => &["type", "conditions"],
            Kind::Not => &["type", "condition"],
            Kind::Expr => &["type", "expr"],
        }
    }
}

/// Every key of every type, for a key read before `type`.
const ALL_KEYS: &[&str] = &[
    "type",
    "field",
    "op",
    "value",
    "values",
    "pattern",
    "function",
    "over",
    "conditions",
    "condition",
    "expr",
];

const OP_NAMES: [&str; 12] = [
    "==", "!=", ">", ">=", "<", "<=", "eq", "ne", "gt", "gte", "lt", "lte",
];

fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads one of a fixed set of names, saying which were expected and which was meant.
struct Name<'a> {
    /// "condition type", "op", "aggregate function".
    what: &'static str,
    /// A short description for a value of the wrong kind: "a comparison such as `>`".
    expecting: &'static str,
    names: &'a [&'static str],
    /// The expected names as the message lists them.
    listed: String,
    /// Near misses that edit distance does not find (`=>` for `>=`), and what they mean.
    misses: &'a [(&'static str, &'static str)],
}

impl<'de> DeserializeSeed<'de> for Name<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Name<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        if let Some(i) = self.names.iter().position(|n| *n == v) {
            return Ok(i);
        }
        let miss = self.misses.iter().find(|(m, _)| *m == v).map(|(_, c)| *c);
        let hint = match miss.or_else(|| anom_lang::suggest::closest(v, self.names.iter().copied()))
        {
            Some(close) => format!("; did you mean `{close}`?"),
            None => String::new(),
        };
        Err(E::custom(format!(
            "unknown {} `{v}`, expected one of {}{hint}",
            self.what, self.listed
        )))
    }
}

/// A key of a condition map: one of `allowed`, or "unknown field".
struct Key(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = &'static str;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Key {
    type Value = &'static str;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key of a condition")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<&'static str, E> {
        self.0
            .iter()
            .find(|k| **k == v)
            .copied()
            .ok_or_else(|| E::unknown_field(v, self.0))
    }
}

/// A list that must not be empty (`values`, `conditions`).
struct NonEmpty<T> {
    what: &'static str,
    marker: PhantomData<T>,
}

impl<T> NonEmpty<T> {
    fn of(what: &'static str) -> Self {
        NonEmpty {
            what,
            marker: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for NonEmpty<T> {
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for NonEmpty<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of {}s", self.what)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        if items.is_empty() {
            return Err(de::Error::custom(format!(
                "expected at least one {}, found an empty list",
                self.what
            )));
        }
        Ok(items)
    }
}

/// A field name: any non-empty string.
struct FieldName;

impl<'de> DeserializeSeed<'de> for FieldName {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldName {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        if v.is_empty() {
            return Err(E::custom("expected a field name, found an empty string"));
        }
        Ok(v.to_string())
    }
}

fn out_of_range<E: de::Error>(v: impl fmt::Display) -> E {
    E::custom(format!(
        "integer {v} is out of range (from {} to {})",
        i64::MIN,
        i64::MAX
    ))
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, a string or a bool")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| out_of_range(v))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| out_of_range(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| out_of_range(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                if v.is_finite() {
                    Ok(Scalar::Float(v))
                } else {
                    Err(E::custom(format!("expected a finite number, found {v}")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Err(E::custom(
                    "expected a number, a string or a bool, found null; \
                     test for a missing value with `type: is_null`",
                ))
            }
            fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
                self.visit_unit()
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ConditionVisitor)
    }
}

struct ConditionVisitor;

/// The keys read so far, whatever the type.
#[derive(Default)]
struct Keys {
    field: Option<String>,
    op: Option<CompareOp>,
    value: Option<Scalar>,
    values: Option<Vec<Scalar>>,
    pattern: Option<String>,
    function: Option<AggFn>,
    over: Option<String>,
    conditions: Option<Vec<Condition>>,
    condition: Option<Box<Condition>>,
    expr: Option<String>,
}

fn required<T, E: de::Error>(value: Option<T>, key: &'static str) -> Result<T, E> {
    value.ok_or_else(|| E::missing_field(key))
}

impl<'de> Visitor<'de> for ConditionVisitor {
    type Value = Condition;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(
            "a condition (a map with `type`; an expression inside one is written \
             `{type: expr, expr: ...}`)",
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Condition, A::Error> {
        let mut kind: Option<Kind> = None;
        let mut seen: Vec<&'static str> = Vec::new();
        let mut k = Keys::default();
        while let Some(key) = map.next_key_seed(Key(kind.map_or(ALL_KEYS, Kind::keys)))? {
            if seen.contains(&key) {
                return Err(de::Error::duplicate_field(key));
            }
            seen.push(key);
            match key {
                "type" => {
                    let t = Kind::ALL[map.next_value_seed(Name {
                        what: "condition type",
                        expecting: "a condition type such as `field_compare`",
                        names: &Kind::NAMES,
                        listed: backticked(&Kind::NAMES),
                        misses: &[],
                    })?];
                    // Keys read before `type` must belong to it too.
                    if let Some(other) = seen.iter().find(|s| !t.keys().contains(s)) {
                        return Err(de::Error::unknown_field(other, t.keys()));
                    }
                    kind = Some(t);
                }
                "field" => k.field = Some(map.next_value_seed(FieldName)?),
                "op" => {
                    let i = map.next_value_seed(Name {
                        what: "op",
                        expecting: "a comparison such as `>`",
                        names: &OP_NAMES,
                        listed: format!(
                            "{} (or {})",
                            backticked(&OP_NAMES[..6]),
                            backticked(&OP_NAMES[6..])
                        ),
                        misses: &[("=", "=="), ("<>", "!="), ("=>", ">="), ("=<", "<=")],
                    })?;
                    k.op = Some(CompareOp::ALL[i % 6]);
                }
                "value" => k.value = Some(map.next_value()?),
                "values" => k.values = Some(map.next_value_seed(NonEmpty::of("value"))?),
                "pattern" => k.pattern = Some(map.next_value()?),
                "function" => {
                    let names: Vec<&'static str> = AggFn::ALL.iter().map(|f| f.name()).collect();
                    let i = map.next_value_seed(Name {
                        what: "aggregate function",
                        expecting: "an aggregate function such as `sum`",
                        names: &names,
                        listed: backticked(&names),
                        misses: &[],
                    })?;
                    k.function = Some(AggFn::ALL[i]);
                }
                "over" => k.over = Some(map.next_value::<String>()?.trim().to_string()),
                "conditions" => {
                    k.conditions = Some(map.next_value_seed(NonEmpty::of("condition"))?)
                }
                "condition" => k.condition = Some(Box::new(map.next_value()?)),
                _ => k.expr = Some(map.next_value()?),
            }
        }
        let Some(kind) = kind else {
            return Err(de::Error::custom(format!(
                "missing field `type`, expected one of {}",
                backticked(&Kind::NAMES)
            )));
        };
        Ok(match kind {
            Kind::FieldCompare => Condition::FieldCompare {
                field: required(k.field, "field")?,
                op: required(k.op, "op")?,
                value: required(k.value, "value")?,
            },
            Kind::FieldIn => Condition::FieldIn {
                field: required(k.field, "field")?,
                values: required(k.values, "values")?,
            },
            Kind::FieldNotIn => Condition::FieldNotIn {
                field: required(k.field, "field")?,
                values: required(k.values, "values")?,
            },
            Kind::Matches => Condition::Matches {
                field: required(k.field, "field")?,
                pattern: required(k.pattern, "pattern")?,
            },
            Kind::IsNull => Condition::IsNull {
                field: required(k.field, "field")?,
            },
            Kind::NotNull => Condition::NotNull {
                field: required(k.field, "field")?,
            },
            Kind::AggregateCompare => {
                let function = required(k.function, "function")?;
                let name = function.name();
                match (function.takes_field(), &k.field) {
                    (true, None) => {
                        return Err(de::Error::custom(format!(
                            "missing field `field`: `{name}` needs a field, e.g. `field: amount`"
                        )))
                    }
                    (false, Some(_)) => {
                        return Err(de::Error::custom(format!(
                            "`{name}` takes no field: remove `field`"
                        )))
                    }
                    _ => {}
                }
                match (function, &k.over) {
                    (AggFn::Prev, Some(_)) => {
                        return Err(de::Error::custom(
                            "`prev` takes no window: it is always the key's previous event; remove `over`",
                        ))
                    }
                    (AggFn::Prev, None) | (_, Some(_)) => {}
                    (_, None) => {
                        return Err(de::Error::custom(
                            "missing field `over`: an aggregate in a rule needs a window, e.g. \
                             `over: 1d`; declare one over the key's whole history under \
                             `aggregates:` and compare it with `field_compare`",
                        ))
                    }
                }
                Condition::AggregateCompare {
                    function,
                    field: k.field,
                    over: k.over,
                    op: required(k.op, "op")?,
                    value: required(k.value, "value")?,
                }
            }
            Kind::All => Condition::All {
                conditions: required(k.conditions, "conditions")?,
            },
            Kind::Any => Condition::Any {
                conditions: required(k.conditions, "conditions")?,
            },
            Kind::Not => Condition::Not {
                condition: required(k.condition, "condition")?,
            },
            Kind::Expr => Condition::Expr {
                expr: required(k.expr, "expr")?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use anom_lang::expr::{parse, BinaryOp, UnaryOp};

    fn condition(yaml: &str) -> Condition {
        serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn expr(yaml: &str) -> String {
        condition(yaml).to_expr()
    }

    #[test]
    fn every_type_translates_into_an_expression() {
        let cases = [
            (
                r#"{type: field_compare, field: durationMs, op: ">", value: 5000}"#,
                "durationMs > 5000",
            ),
            (
                "{type: field_compare, field: durationMs, op: gte, value: 1.5}",
                "durationMs >= 1.5",
            ),
            (
                "{type: field_compare, field: durationMs, op: lt, value: -3}",
                "durationMs < -3",
            ),
            (
                r#"{type: field_compare, field: status, op: "!=", value: OK}"#,
                "status != 'OK'",
            ),
            (
                "{type: field_compare, field: flag, op: eq, value: true}",
                "flag == true",
            ),
            (
                r#"{type: field_compare, field: code, op: "==", value: "5000"}"#,
                "code == '5000'",
            ),
            (
                "{type: field_in, field: status, values: [FAILED, TIMEOUT]}",
                "status in ['FAILED', 'TIMEOUT']",
            ),
            (
                "{type: field_not_in, field: code, values: [1, 2.5]}",
                "code not in [1, 2.5]",
            ),
            (
                r"{type: matches, field: fileName, pattern: '^[a-z]+\.csv$'}",
                r"matches(fileName, '^[a-z]+\\.csv$')",
            ),
            ("{type: is_null, field: fileName}", "is_null(fileName)"),
            ("{type: not_null, field: fileName}", "is_present(fileName)"),
            (
                r#"{type: aggregate_compare, function: sum, field: amount, over: 1d, op: ">", value: 2000}"#,
                "sum(amount) over 1d > 2000",
            ),
            (
                "{type: aggregate_compare, function: count, over: 5m, op: gte, value: 10}",
                "count() over 5m >= 10",
            ),
            (
                r#"{type: aggregate_compare, function: p99, field: ms, over: 1h every 5m, op: ">", value: 250.5}"#,
                "p99(ms) over 1h every 5m > 250.5",
            ),
            (
                "{type: aggregate_compare, function: prev, field: country, op: ne, value: DE}",
                "prev(country) != 'DE'",
            ),
            (
                "{type: expr, expr: \"durationMs > 5000 or status == 'FAILED'\"}",
                "durationMs > 5000 or status == 'FAILED'",
            ),
            (
                "{type: all, conditions: [{type: is_null, field: a}, {type: not_null, field: b}]}",
                "is_null(a) and is_present(b)",
            ),
            (
                "{type: any, conditions: [{type: is_null, field: a}, {type: not_null, field: b}]}",
                "is_null(a) or is_present(b)",
            ),
            (
                "{type: not, condition: {type: field_compare, field: a, op: gt, value: 1}}",
                "not (a > 1)",
            ),
            (
                "{type: not, condition: {type: is_null, field: a}}",
                "not is_null(a)",
            ),
        ];
        for (yaml, want) in cases {
            let got = expr(yaml);
            assert_eq!(got, want, "{yaml}");
            // Inline aggregates included: they are syntax.
            parse(&got).unwrap_or_else(|e| panic!("{got}: {e}"));
        }
    }

    #[test]
    fn nested_conditions_are_parenthesised_as_their_structure() {
        let yaml = "
type: all
conditions:
  - type: any
    conditions:
      - {type: field_compare, field: a, op: gt, value: 1}
      - {type: field_compare, field: b, op: lt, value: 2}
  - type: not
    condition:
      type: all
      conditions:
        - {type: is_null, field: c}
        - {type: expr, expr: 'd or e'}
  - {type: expr, expr: 'f or g'}
  - type: any
    conditions: [{type: is_null, field: h}]
";
        assert_eq!(
            expr(yaml),
            "(a > 1 or b < 2) and not (is_null(c) and (d or e)) and (f or g) and is_null(h)"
        );
        // A nested `all` is parenthesised too, though `and` would not need it.
        let yaml = "{type: any, conditions: [{type: all, conditions: [{type: is_null, field: a}, {type: is_null, field: b}]}, {type: is_null, field: c}]}";
        assert_eq!(expr(yaml), "(is_null(a) and is_null(b)) or is_null(c)");
    }

    #[test]
    fn strings_and_field_names_are_quoted_as_the_lexer_reads_them() {
        let value = r#"it's a "quote", a \ backslash, a \d and a	tab"#;
        let c = Condition::FieldCompare {
            field: "in".into(),
            op: CompareOp::Eq,
            value: Scalar::Str(value.into()),
        };
        let text = c.to_expr();
        assert_eq!(
            text,
            r#"`in` == 'it\'s a "quote", a \\ backslash, a \\d and a\ttab'"#
        );
        let AstKind::Binary { left, right, .. } = parse(&text).unwrap().kind else {
            panic!("{text}");
        };
        assert_eq!(left.kind, AstKind::Field("in".into()));
        assert_eq!(right.kind, AstKind::Literal(Literal::Str(value.into())));
        assert_eq!(field_expr("odd`name"), "`odd``name`");
        assert_eq!(field_expr("AND"), "`AND`");
    }

    #[test]
    fn json_is_read_like_yaml() {
        let w: When = serde_json::from_str(
            r#"{"type": "any", "conditions": [
                {"type": "field_compare", "field": "durationMs", "op": ">", "value": 5000},
                {"type": "field_in", "field": "status", "values": ["FAILED"]}]}"#,
        )
        .unwrap();
        assert_eq!(w.to_expr(), "durationMs > 5000 or status in ['FAILED']");
        let w: When = serde_json::from_str(r#""durationMs > 5000""#).unwrap();
        assert_eq!(w, When::Expr("durationMs > 5000".into()));
        let e = serde_json::from_str::<When>(
            r#"{"type": "field_compare", "field": "x", "op": "=>", "value": 1}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("unknown op `=>`, expected one of `==`, `!=`, `>`, `>=`, `<`, `<=` (or `eq`, `ne`, `gt`, `gte`, `lt`, `lte`); did you mean `>=`?"),
            "{e}"
        );
    }

    #[test]
    fn an_expression_keeps_the_debug_form_of_a_string() {
        // The pipeline's version is a hash of the definition's Debug form.
        assert_eq!(
            format!("{:?}", When::Expr("a > 1".into())),
            format!("{:?}", "a > 1")
        );
    }

    #[test]
    fn leaves_know_which_key_each_column_comes_from() {
        let c = condition(
            "{type: all, conditions: [{type: field_in, field: s, values: [a, b]}, {type: expr, expr: x}]}",
        );
        let (text, leaves) = c.leaves();
        assert_eq!(text, "s in ['a', 'b'] and (x)");
        assert_eq!(leaves.len(), 2);
        let l = &leaves[0];
        assert_eq!(l.path, ".conditions[0]");
        assert_eq!(l.text, "s in ['a', 'b']");
        assert_eq!(l.blame(1), ".field");
        assert_eq!(l.blame(3), ".field");
        assert_eq!(l.blame(7), ".values[0]");
        assert_eq!(l.blame(12), ".values[1]");
        assert_eq!(l.blame(15), ".values");
        assert_eq!(leaves[1].path, ".conditions[1]");
        assert!(leaves[1].written);
        assert_eq!(leaves[1].blame(1), ".expr");
    }

    // ---- property: the text parses back to exactly the structure ----

    fn scalar() -> impl Strategy<Value = Scalar> {
        prop_oneof![
            any::<i64>().prop_map(Scalar::Int),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(Scalar::Float),
            any::<String>().prop_map(Scalar::Str),
            any::<bool>().prop_map(Scalar::Bool),
        ]
    }

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
            prop::sample::select(vec!["in", "not", "null", "And", "TRUE", "a b", "x`y", "é"])
                .prop_map(String::from),
            "\\PC{1,6}",
        ]
    }

    fn op() -> impl Strategy<Value = CompareOp> {
        prop::sample::select(CompareOp::ALL.to_vec())
    }

    fn leaf() -> impl Strategy<Value = Condition> {
        prop_oneof![
            (field(), op(), scalar()).prop_map(|(field, op, value)| Condition::FieldCompare {
                field,
                op,
                value
            }),
            (
                field(),
                prop::collection::vec(scalar(), 1..4),
                any::<bool>()
            )
                .prop_map(|(field, values, negated)| if negated {
                    Condition::FieldNotIn { field, values }
                } else {
                    Condition::FieldIn { field, values }
                }),
            (field(), any::<String>())
                .prop_map(|(field, pattern)| Condition::Matches { field, pattern }),
            field().prop_map(|field| Condition::IsNull { field }),
            field().prop_map(|field| Condition::NotNull { field }),
            prop::sample::select(vec!["a or b", "a and b", "not a", "a == 1", "f(a)"])
                .prop_map(|e| Condition::Expr { expr: e.into() }),
        ]
    }

    fn tree() -> impl Strategy<Value = Condition> {
        leaf().prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..4)
                    .prop_map(|conditions| Condition::All { conditions }),
                prop::collection::vec(inner.clone(), 1..4)
                    .prop_map(|conditions| Condition::Any { conditions }),
                inner.prop_map(|c| Condition::Not {
                    condition: Box::new(c)
                }),
            ]
        })
    }

    fn node(kind: AstKind) -> Ast {
        Ast::new(kind, 1)
    }

    fn literal(v: &Scalar) -> Ast {
        node(AstKind::Literal(match v {
            Scalar::Int(i) => Literal::Int(*i),
            Scalar::Float(x) => Literal::Float(*x),
            Scalar::Str(s) => Literal::Str(s.clone()),
            Scalar::Bool(b) => Literal::Bool(*b),
        }))
    }

    fn call(name: &str, args: Vec<Ast>) -> Ast {
        node(AstKind::Call {
            name: name.into(),
            args,
        })
    }

    /// The syntax tree the condition stands for.
    fn expected(c: &Condition) -> Ast {
        let field = |f: &String| node(AstKind::Field(f.clone()));
        match c {
            Condition::FieldCompare {
                field: f,
                op,
                value,
            } => node(AstKind::Binary {
                op: match op {
                    CompareOp::Eq => BinaryOp::Eq,
                    CompareOp::Ne => BinaryOp::Ne,
                    CompareOp::Gt => BinaryOp::Gt,
                    CompareOp::Ge => BinaryOp::Ge,
                    CompareOp::Lt => BinaryOp::Lt,
                    CompareOp::Le => BinaryOp::Le,
                },
                left: Box::new(field(f)),
                right: Box::new(literal(value)),
            }),
            Condition::FieldIn { field: f, values }
            | Condition::FieldNotIn { field: f, values } => node(AstKind::In {
                operand: Box::new(field(f)),
                list: values.iter().map(literal).collect(),
                negated: matches!(c, Condition::FieldNotIn { .. }),
            }),
            Condition::Matches { field: f, pattern } => call(
                "matches",
                vec![
                    field(f),
                    node(AstKind::Literal(Literal::Str(pattern.clone()))),
                ],
            ),
            Condition::IsNull { field: f } => call("is_null", vec![field(f)]),
            Condition::NotNull { field: f } => call("is_present", vec![field(f)]),
            Condition::AggregateCompare { .. } => unreachable!("not generated"),
            Condition::All { conditions } | Condition::Any { conditions } => {
                let op = match c {
                    Condition::All { .. } => BinaryOp::And,
                    _ => BinaryOp::Or,
                };
                let mut items = conditions.iter().map(expected);
                let first = items.next().unwrap();
                items.fold(first, |left, right| {
                    node(AstKind::Binary {
                        op,
                        left: Box::new(left),
                        right: Box::new(right),
                    })
                })
            }
            Condition::Not { condition } => node(AstKind::Unary {
                op: UnaryOp::Not,
                operand: Box::new(expected(condition)),
            }),
            Condition::Expr { expr } => parse(expr).unwrap(),
        }
    }

    proptest! {
        #[test]
        fn generated_text_parses_back_to_the_structure(c in tree()) {
            let text = c.to_expr();
            let ast = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(ast, expected(&c), "{}", text);
            let (whole, leaves) = c.leaves();
            prop_assert_eq!(whole, text);
            for leaf in leaves {
                prop_assert!(parse(&leaf.text).is_ok(), "{}", leaf.text);
            }
        }
    }
}
