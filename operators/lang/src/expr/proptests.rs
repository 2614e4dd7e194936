//! Property tests: robustness on arbitrary input, printer/parser round trips,
//! type soundness of evaluation, and agreement with Rust's own semantics.

use std::cmp::Ordering;

use proptest::prelude::*;

use super::parser::quote_str;
use super::tests::scope;
use super::*;
use crate::value::Value;

// ---- (1) arbitrary text never panics ----

fn source_like() -> impl Strategy<Value = String> {
    let tokens = prop::sample::select(vec![
        "durationMs",
        "status",
        "'FAILED'",
        "'FAILD'",
        "ok",
        "flag",
        "ts",
        "temperature",
        "and",
        "or",
        "not",
        "in",
        "AND",
        "[",
        "]",
        "(",
        ")",
        ",",
        "==",
        "=",
        "<>",
        "<",
        ">=",
        "+",
        "-",
        "*",
        "/",
        "%",
        "!",
        "&&",
        "1",
        "0",
        "2.5",
        "1e308",
        "-9223372036854775808",
        "9223372036854775807",
        "null",
        "true",
        "contains",
        "matches",
        "'^a+$'",
        "'[a-'",
        "lower",
        "len",
        "abs",
        "min",
        "coalesce",
        "is_null",
        "`file-name`",
        "'unterminated",
        "\"x\"",
        "é",
        "`",
    ]);
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9_ ()\\[\\],.'\"`<>=!&|+*/%\\\\-]{0,40}",
        prop::collection::vec(tokens.clone(), 0..24).prop_map(|t| t.join(" ")),
        prop::collection::vec(tokens, 0..24).prop_map(|t| t.concat()),
        mutated_expr(),
    ]
}

/// A valid expression with a few chars deleted or inserted: nearly right input
/// reaches deeper into the parser and checker than random text.
fn mutated_expr() -> impl Strategy<Value = String> {
    let edit = (
        any::<prop::sample::Index>(),
        prop::option::of(prop::sample::select(vec![
            '(', ')', '[', ']', ',', '\'', '"', '`', '-', '!', '<', '=', 'x', ' ', '\\', '9', '.',
        ])),
    );
    (typed_expr(), prop::collection::vec(edit, 1..4)).prop_map(|((src, _), edits)| {
        let mut chars: Vec<char> = src.chars().collect();
        for (at, insert) in edits {
            let i = at.index(chars.len() + 1);
            match insert {
                Some(c) => chars.insert(i, c),
                None if i < chars.len() => {
                    chars.remove(i);
                }
                None => {}
            }
        }
        chars.into_iter().collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(src in source_like()) {
        let len = src.chars().count();
        let scope = scope();
        let check = |result: Result<(), ExprError>| -> Result<(), TestCaseError> {
            if let Err(e) = result {
                prop_assert!(
                    (1..=len + 1).contains(&e.column),
                    "column {} out of 1..={} for {:?}: {}", e.column, len + 1, src, e
                );
                prop_assert!(!e.message.is_empty());
            }
            Ok(())
        };
        check(parse(&src).map(|_| ()))?;
        check(compile_predicate(&src, &scope).map(|_| ()))?;
        if let Ok(compiled) = compile(&src, &scope) {
            let _ = compiled.eval(&[]);
            let _ = compiled.matches(&[Value::Int(i64::MIN), Value::from("FAILED")]);
        }
    }
}

// ---- (2) printing and re-parsing gives an equal tree ----

fn finite_f64() -> impl Strategy<Value = f64> {
    use prop::num::f64::*;
    prop_oneof![
        (POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            0.1,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE
        ]),
    ]
}

fn any_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -1000..1000i64,
        prop::sample::select(vec![0, 1, -1, 2, i64::MAX, i64::MIN, i64::MIN + 1]),
    ]
}

fn arb_literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        Just(Literal::Null),
        any::<bool>().prop_map(Literal::Bool),
        any_int().prop_map(Literal::Int),
        finite_f64().prop_map(Literal::Float),
        any::<String>().prop_map(Literal::Str),
    ]
}

fn is_keyword(name: &str) -> bool {
    super::lexer::KEYWORDS.contains(&name)
}

fn arb_ast() -> impl Strategy<Value = Ast> {
    let node = |kind| Ast::new(kind, 1);
    let field_name = prop_oneof![
        "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
        any::<String>().prop_filter("non-empty", |s| !s.is_empty()),
    ];
    let leaf = prop_oneof![
        arb_literal().prop_map(move |l| node(AstKind::Literal(l))),
        field_name.prop_map(move |n| node(AstKind::Field(n))),
    ];
    let call_name = "[a-z_][a-z0-9_]{0,8}".prop_filter("not a keyword", |n| !is_keyword(n));
    let binary_op = prop::sample::select(vec![
        BinaryOp::Or,
        BinaryOp::And,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Mod,
    ]);
    leaf.prop_recursive(6, 64, 4, move |inner| {
        prop_oneof![
            (
                prop::sample::select(vec![UnaryOp::Not, UnaryOp::Neg]),
                inner.clone()
            )
                .prop_map(move |(op, operand)| node(AstKind::Unary {
                    op,
                    operand: Box::new(operand)
                })),
            (binary_op.clone(), inner.clone(), inner.clone()).prop_map(move |(op, left, right)| {
                node(AstKind::Binary {
                    op,
                    left: Box::new(left),
                    right: Box::new(right),
                })
            }),
            (
                inner.clone(),
                prop::collection::vec(inner.clone(), 0..4),
                any::<bool>()
            )
                .prop_map(move |(operand, list, negated)| node(AstKind::In {
                    operand: Box::new(operand),
                    list,
                    negated
                })),
            (call_name.clone(), prop::collection::vec(inner, 0..4))
                .prop_map(move |(name, args)| node(AstKind::Call { name, args })),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn display_round_trips(ast in arb_ast()) {
        let text = ast.to_string();
        let reparsed = parse(&text);
        prop_assert!(reparsed.is_ok(), "{:?} printed as {:?}: {:?}", ast, text, reparsed);
        let reparsed = reparsed.unwrap();
        prop_assert_eq!(&reparsed, &ast, "printed as {:?}", text);
        // The canonical form is a fixed point.
        prop_assert_eq!(reparsed.to_string(), text);
    }
}

// ---- (3) well-typed expressions evaluate to their type or null ----

const BOOL: usize = 0;
const INT: usize = 1;
const FLOAT: usize = 2;
const STR: usize = 3;
const TS: usize = 4;

type Gen = BoxedStrategy<String>;

fn pick(options: &[&'static str]) -> Gen {
    prop::sample::select(options.to_vec())
        .prop_map(str::to_string)
        .boxed()
}

fn leaves() -> [Gen; 5] {
    let int_lit = any_int().prop_map(|i| i.to_string());
    let float_lit = finite_f64().prop_map(|x| format!("{x:?}"));
    let str_lit = "[a-zA-Z'\\\\ é-]{0,6}".prop_map(|s| quote_str(&s));
    [
        pick(&["true", "false", "ok", "flag", "(null and true)"]),
        prop_oneof![
            int_lit,
            pick(&["durationMs", "count", "(null + 0)", "len(status)"])
        ]
        .boxed(),
        prop_oneof![float_lit, pick(&["temperature", "ratio", "(null * 1.5)"])].boxed(),
        prop_oneof![
            str_lit,
            pick(&[
                "route",
                "file",
                "`file-name`",
                "lower(null)",
                "coalesce(status, 'OK')"
            ])
        ]
        .boxed(),
        pick(&["ts", "ts2", "(ts + null)"]),
    ]
}

/// Expressions of each type, built from those one level down.
fn level(sub: &[Gen; 5]) -> [Gen; 5] {
    let [b, i, f, s, t] = sub.clone();
    let any = prop_oneof![b.clone(), i.clone(), f.clone(), s.clone(), t.clone()];
    let f2 = |g1: &Gen, g2: &Gen, fmt: fn(String, String) -> String| -> Gen {
        (g1.clone(), g2.clone())
            .prop_map(move |(x, y)| fmt(x, y))
            .boxed()
    };
    let f1 = |g: &Gen, fmt: fn(String) -> String| -> Gen { g.clone().prop_map(fmt).boxed() };
    let num_list = (
        prop::collection::vec(any_int(), 0..10),
        prop::collection::vec(finite_f64(), 0..4),
    )
        .prop_map(|(ints, floats)| {
            let ints = ints.iter().map(i64::to_string);
            let floats = floats.iter().map(|x| format!("{x:?}"));
            ints.chain(floats).collect::<Vec<_>>().join(", ")
        });
    let str_list = prop::collection::vec("[a-c]{0,2}", 0..10).prop_map(|v| {
        v.iter()
            .map(|x| quote_str(x))
            .collect::<Vec<_>>()
            .join(", ")
    });
    let bool_gen = prop_oneof![
        b.clone(),
        f2(&b, &b, |x, y| format!("({x} and {y})")),
        f2(&b, &b, |x, y| format!("({x} or {y})")),
        f2(&b, &b, |x, y| format!("({x} != {y})")),
        f1(&b, |x| format!("(not {x})")),
        f2(&i, &i, |x, y| format!("({x} < {y})")),
        f2(&i, &f, |x, y| format!("({x} == {y})")),
        f2(&f, &i, |x, y| format!("({x} >= {y})")),
        f2(&f, &f, |x, y| format!("({x} > {y})")),
        f2(&s, &s, |x, y| format!("({x} == {y})")),
        f2(&s, &s, |x, y| format!("({x} <= {y})")),
        f2(&t, &t, |x, y| format!("({x} != {y})")),
        (i.clone(), num_list).prop_map(|(x, l)| format!("({x} in [{l}])")),
        (s.clone(), str_list).prop_map(|(x, l)| format!("({x} not in [{l}])")),
        f2(&s, &s, |x, y| format!("contains({x}, {y})")),
        f2(&s, &s, |x, y| format!("starts_with({x}, {y})")),
        f2(&s, &s, |x, y| format!("ends_with({x}, {y})")),
        (s.clone(), pick(&["'^a'", "'b+$'", "'(?i)x|y'", "''"]))
            .prop_map(|(x, re)| format!("matches({x}, {re})")),
        any.clone().prop_map(|x| format!("is_null({x})")),
        any.prop_map(|x| format!("is_present({x})")),
        f2(&b, &b, |x, y| format!("coalesce({x}, {y})")),
        pick(&["(status == 'FAILED')", "(status in ['OK', 'TIMEOUT'])"]),
    ]
    .boxed();
    let int_gen = prop_oneof![
        i.clone(),
        f2(&i, &i, |x, y| format!("({x} + {y})")),
        f2(&i, &i, |x, y| format!("({x} - {y})")),
        f2(&i, &i, |x, y| format!("({x} * {y})")),
        f2(&i, &i, |x, y| format!("({x} % {y})")),
        f1(&i, |x| format!("(-{x})")),
        f1(&i, |x| format!("abs({x})")),
        f1(&s, |x| format!("len({x})")),
        f2(&i, &i, |x, y| format!("min({x}, {y})")),
        f2(&i, &i, |x, y| format!("max({x}, {y}, {x})")),
        f2(&i, &i, |x, y| format!("coalesce({x}, {y})")),
        f2(&t, &t, |x, y| format!("({x} - {y})")),
    ]
    .boxed();
    let float_gen = prop_oneof![
        f.clone(),
        f2(&f, &f, |x, y| format!("({x} + {y})")),
        f2(&i, &f, |x, y| format!("({x} + {y})")),
        f2(&f, &i, |x, y| format!("({x} - {y})")),
        f2(&f, &f, |x, y| format!("({x} * {y})")),
        f2(&i, &i, |x, y| format!("({x} / {y})")),
        f2(&f, &f, |x, y| format!("({x} / {y})")),
        f1(&f, |x| format!("(-{x})")),
        f1(&f, |x| format!("abs({x})")),
        f2(&f, &i, |x, y| format!("min({x}, {y})")),
        f2(&i, &f, |x, y| format!("max({x}, {y})")),
        f2(&f, &i, |x, y| format!("coalesce({x}, {y})")),
    ]
    .boxed();
    let str_gen = prop_oneof![
        s.clone(),
        f2(&s, &s, |x, y| format!("({x} + {y})")),
        f1(&s, |x| format!("lower({x})")),
        f1(&s, |x| format!("upper({x})")),
        f2(&s, &s, |x, y| format!("coalesce({x}, {y})")),
    ]
    .boxed();
    let ts_gen = prop_oneof![
        t.clone(),
        f2(&t, &i, |x, y| format!("({x} + {y})")),
        f2(&i, &t, |x, y| format!("({x} + {y})")),
        f2(&t, &i, |x, y| format!("({x} - {y})")),
        f2(&t, &t, |x, y| format!("coalesce({x}, {y})")),
    ]
    .boxed();
    [bool_gen, int_gen, float_gen, str_gen, ts_gen]
}

fn typed_expr() -> impl Strategy<Value = (String, usize)> {
    let mut gens = leaves();
    for _ in 0..3 {
        gens = level(&gens);
    }
    let [b, i, f, s, t] = gens;
    prop_oneof![
        3 => b.prop_map(|x| (x, BOOL)),
        1 => i.prop_map(|x| (x, INT)),
        1 => f.prop_map(|x| (x, FLOAT)),
        1 => s.prop_map(|x| (x, STR)),
        1 => t.prop_map(|x| (x, TS)),
    ]
}

fn value_of(ty: ValueType) -> BoxedStrategy<Value> {
    let extreme_int = any_int();
    match ty {
        ValueType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        ValueType::Int => extreme_int.prop_map(Value::Int).boxed(),
        ValueType::Float => prop_oneof![
            any::<f64>(),
            prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::MAX, -0.0, 1e300])
        ]
        .prop_map(Value::Float)
        .boxed(),
        ValueType::Str => prop_oneof![
            any::<String>(),
            prop::sample::select(vec!["OK", "FAILED", "TIMEOUT", "a", "ab", ""])
                .prop_map(String::from)
        ]
        .prop_map(|s| Value::from(s.as_str()))
        .boxed(),
        ValueType::Timestamp => extreme_int.prop_map(Value::Timestamp).boxed(),
        ValueType::Null => Just(Value::Null).boxed(),
    }
}

fn arb_row() -> impl Strategy<Value = Vec<Value>> {
    let scope = scope();
    let names = scope.field_names();
    let anything = prop_oneof![
        value_of(ValueType::Bool),
        value_of(ValueType::Int),
        value_of(ValueType::Float),
        value_of(ValueType::Str),
        value_of(ValueType::Timestamp),
    ];
    let cells: Vec<BoxedStrategy<Value>> = names
        .iter()
        .map(|name| {
            let ty = scope.field(name).map_or(ValueType::Null, |f| f.ty);
            prop_oneof![
                6 => value_of(ty),
                2 => Just(Value::Null),
                1 => anything.clone(),
            ]
            .boxed()
        })
        .collect();
    let len = names.len();
    (cells, 0..=len + 3).prop_map(|(mut row, keep)| {
        row.truncate(keep);
        row
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn well_typed_expressions_evaluate_soundly(
        (src, ty) in typed_expr(),
        rows in prop::collection::vec(arb_row(), 4),
    ) {
        let expected = [ValueType::Bool, ValueType::Int, ValueType::Float, ValueType::Str, ValueType::Timestamp][ty];
        let compiled = compile(&src, &scope());
        prop_assert!(compiled.is_ok(), "{}: {}", src, compiled.unwrap_err());
        let compiled = compiled.unwrap();
        prop_assert_eq!(compiled.result_type(), expected, "{}", src);
        let field_count = scope().field_names().len();
        prop_assert!(compiled.fields().iter().all(|&i| i < field_count));
        for row in &rows {
            let value = compiled.eval(row);
            prop_assert!(
                value.is_null() || value.value_type() == expected,
                "{} gave {:?} on {:?}", src, value, row
            );
            if let Value::Float(x) = value {
                prop_assert!(x.is_finite());
            }
            prop_assert_eq!(compiled.matches(row), value == Value::Bool(true));
        }
    }
}

// ---- (4) semantics agree with Rust ----

fn ints(a: i64, b: i64) -> Vec<Value> {
    let mut row = vec![Value::Null; 12];
    row[0] = Value::Int(a); // durationMs
    row[9] = Value::Int(b); // count
    row
}

fn floats(a: f64, b: f64) -> Vec<Value> {
    let mut row = vec![Value::Null; 12];
    row[4] = Value::Float(a); // temperature
    row[10] = Value::Float(b); // ratio
    row
}

fn strs(a: &str, b: &str) -> Vec<Value> {
    let mut row = vec![Value::Null; 12];
    row[2] = Value::from(a); // route
    row[5] = Value::from(b); // file
    row
}

fn eval(src: &str, row: &[Value]) -> Value {
    match compile(src, &scope()) {
        Ok(compiled) => compiled.eval(row),
        Err(e) => panic!("{src}: {e}"),
    }
}

fn cmp_results(ordering: Option<Ordering>) -> [Value; 6] {
    let test = |f: fn(Ordering) -> bool| ordering.map_or(Value::Null, |o| Value::Bool(f(o)));
    [
        test(|o| o == Ordering::Equal),
        test(|o| o != Ordering::Equal),
        test(|o| o == Ordering::Less),
        test(|o| o != Ordering::Greater),
        test(|o| o == Ordering::Greater),
        test(|o| o != Ordering::Less),
    ]
}

const CMP_OPS: [&str; 6] = ["==", "!=", "<", "<=", ">", ">="];

/// An exact int-float ordering, as reference for the evaluator's.
fn reference_cmp(i: i64, x: f64) -> Ordering {
    let floor = x.floor();
    // Within ±2^100 a floored float converts to i128 exactly.
    let whole = floor as i128;
    match (i as i128).cmp(&whole) {
        Ordering::Equal if x > floor => Ordering::Less,
        other => other,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn int_arithmetic_matches_checked_ops(a in any_int(), b in any_int()) {
        let row = ints(a, b);
        let expect = |r: Option<i64>| r.map_or(Value::Null, Value::Int);
        prop_assert_eq!(eval("durationMs + count", &row), expect(a.checked_add(b)));
        prop_assert_eq!(eval("durationMs - count", &row), expect(a.checked_sub(b)));
        prop_assert_eq!(eval("durationMs * count", &row), expect(a.checked_mul(b)));
        prop_assert_eq!(eval("durationMs % count", &row), expect(a.checked_rem(b)));
        prop_assert_eq!(eval("-durationMs", &row), expect(a.checked_neg()));
        prop_assert_eq!(eval("abs(durationMs)", &row), expect(a.checked_abs()));
        let div = if b == 0 { Value::Null } else { Value::Float(a as f64 / b as f64) };
        prop_assert_eq!(eval("durationMs / count", &row), div);
    }

    #[test]
    fn comparisons_match_rust(
        (a, b) in (any_int(), any_int()),
        (x, y) in (finite_f64(), finite_f64()),
        (s, t) in (any::<String>(), any::<String>()),
        z in prop_oneof![-1e20..1e20f64, finite_f64().prop_filter("in i128", |x| x.abs() < 1e30)],
    ) {
        for (op, want) in CMP_OPS.iter().zip(cmp_results(Some(a.cmp(&b)))) {
            prop_assert_eq!(eval(&format!("durationMs {op} count"), &ints(a, b)), want);
        }
        for (op, want) in CMP_OPS.iter().zip(cmp_results(x.partial_cmp(&y))) {
            prop_assert_eq!(eval(&format!("temperature {op} ratio"), &floats(x, y)), want);
        }
        for (op, want) in CMP_OPS.iter().zip(cmp_results(Some(s.cmp(&t)))) {
            prop_assert_eq!(eval(&format!("route {op} file"), &strs(&s, &t)), want);
        }
        let mut mixed = ints(a, 0);
        mixed[10] = Value::Float(z);
        for (op, want) in CMP_OPS.iter().zip(cmp_results(Some(reference_cmp(a, z)))) {
            prop_assert_eq!(eval(&format!("durationMs {op} ratio"), &mixed), want, "{} {} {}", a, op, z);
        }
        let whole = a as f64;
        if whole.abs() < 9.2e18 {
            mixed[10] = Value::Float(whole);
            let want = Value::Bool(reference_cmp(a, whole) == Ordering::Equal);
            prop_assert_eq!(eval("durationMs == ratio", &mixed), want);
        }
    }

    #[test]
    fn kleene_truth_tables(a in any::<Option<bool>>(), b in any::<Option<bool>>()) {
        let v = |x: Option<bool>| x.map_or(Value::Null, Value::Bool);
        let mut row = vec![Value::Null; 12];
        row[3] = v(a); // ok
        row[11] = v(b); // flag
        // Kleene logic over {false < null < true}: and = min, or = max, not = mirror.
        let rank = |x: Option<bool>| match x { Some(false) => 0, None => 1, Some(true) => 2 };
        let from_rank = |r: i32| match r { 0 => Some(false), 1 => None, _ => Some(true) };
        prop_assert_eq!(eval("ok and flag", &row), v(from_rank(rank(a).min(rank(b)))));
        prop_assert_eq!(eval("ok or flag", &row), v(from_rank(rank(a).max(rank(b)))));
        prop_assert_eq!(eval("not ok", &row), v(from_rank(2 - rank(a))));
        prop_assert_eq!(eval("not (ok and flag)", &row), eval("not ok or not flag", &row));
    }
}
