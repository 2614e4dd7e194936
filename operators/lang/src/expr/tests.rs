use super::*;
use crate::value::Value;

/// A schema-like scope for tests: fields in order, some enums.
pub(super) struct TestScope {
    fields: Vec<(String, ValueType, Option<Vec<String>>)>,
}

impl Scope for TestScope {
    fn field(&self, name: &str) -> Option<FieldInfo<'_>> {
        self.fields
            .iter()
            .enumerate()
            .find(|(_, f)| f.0 == name)
            .map(|(index, f)| FieldInfo {
                index,
                ty: f.1,
                allowed: f.2.as_deref(),
            })
    }

    fn field_names(&self) -> Vec<&str> {
        self.fields.iter().map(|f| f.0.as_str()).collect()
    }
}

pub(super) fn scope() -> TestScope {
    use ValueType::*;
    let enum_values = Some(vec!["OK".into(), "FAILED".into(), "TIMEOUT".into()]);
    let fields = [
        ("durationMs", Int, None),
        ("status", Str, enum_values),
        ("route", Str, None),
        ("ok", Bool, None),
        ("temperature", Float, None),
        ("file", Str, None),
        ("ts", Timestamp, None),
        ("ts2", Timestamp, None),
        ("file-name", Str, None),
        ("count", Int, None),
        ("ratio", Float, None),
        ("flag", Bool, None),
    ];
    TestScope {
        fields: fields
            .into_iter()
            .map(|(n, t, a)| (n.to_string(), t, a))
            .collect(),
    }
}

fn row(values: &[(&str, Value)]) -> Vec<Value> {
    let scope = scope();
    let mut row = vec![Value::Null; scope.fields.len()];
    for (name, value) in values {
        let index = scope.field(name).expect("test field").index;
        row[index] = value.clone();
    }
    row
}

fn compiled(src: &str) -> CompiledExpr {
    compile(src, &scope()).unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn ev(src: &str, values: &[(&str, Value)]) -> Value {
    compiled(src).eval(&row(values))
}

fn ev0(src: &str) -> Value {
    ev(src, &[])
}

fn err(src: &str) -> String {
    match compile(src, &scope()) {
        Ok(_) => panic!("`{src}` compiled but should not"),
        Err(e) => e.to_string(),
    }
}

fn s(text: &str) -> Value {
    Value::from(text)
}

const B: fn(bool) -> Value = Value::Bool;
const I: fn(i64) -> Value = Value::Int;
const F: fn(f64) -> Value = Value::Float;

// ---- literals ----

#[test]
fn literals() {
    assert_eq!(ev0("5000"), I(5000));
    assert_eq!(ev0("1.5"), F(1.5));
    assert_eq!(ev0("2e3"), F(2000.0));
    assert_eq!(ev0("1.5e-1"), F(0.15));
    assert_eq!(ev0("-9223372036854775808"), I(i64::MIN));
    assert_eq!(ev0("'it\\'s'"), s("it's"));
    assert_eq!(ev0("\"a\\\"b\\\\c\\nd\\te\""), s("a\"b\\c\nd\te"));
    assert_eq!(ev0("'say \"hi\"'"), s("say \"hi\""));
    assert_eq!(ev0("true"), B(true));
    assert_eq!(ev0("false"), B(false));
    assert_eq!(ev0("null"), Value::Null);
}

// ---- arithmetic ----

#[test]
fn arithmetic() {
    assert_eq!(ev0("1 + 2"), I(3));
    assert_eq!(ev0("1 + 2.5"), F(3.5));
    assert_eq!(ev0("5 - 7"), I(-2));
    assert_eq!(ev0("1.5 - 1"), F(0.5));
    assert_eq!(ev0("6 * 7"), I(42));
    assert_eq!(ev0("2 * 0.25"), F(0.5));
    assert_eq!(ev0("7 / 2"), F(3.5));
    assert_eq!(ev0("6 / 3"), F(2.0));
    assert_eq!(ev0("7 % 3"), I(1));
    assert_eq!(ev0("-7 % 3"), I(-1));
    assert_eq!(ev0("-(3)"), I(-3));
    assert_eq!(ev0("-(1.5)"), F(-1.5));
    assert_eq!(ev0("'ab' + 'cd'"), s("abcd"));
    assert_eq!(ev("route + '/x'", &[("route", s("/bank"))]), s("/bank/x"));
    assert_eq!(
        ev(
            "durationMs * 2 + count",
            &[("durationMs", I(10)), ("count", I(1))]
        ),
        I(21)
    );
    assert_eq!(ev("-durationMs", &[("durationMs", I(4))]), I(-4));
    assert_eq!(
        ev("temperature - 20.5", &[("temperature", F(21.0))]),
        F(0.5)
    );
}

#[test]
fn timestamps() {
    let t = &[
        ("ts", Value::Timestamp(10_000)),
        ("ts2", Value::Timestamp(4_000)),
    ];
    assert_eq!(ev("ts - ts2", t), I(6_000));
    assert_eq!(ev("ts + 500", t), Value::Timestamp(10_500));
    assert_eq!(ev("500 + ts", t), Value::Timestamp(10_500));
    assert_eq!(ev("ts - 500", t), Value::Timestamp(9_500));
    assert_eq!(ev("ts > ts2", t), B(true));
    assert_eq!(ev("ts - ts2 >= 6000", t), B(true));
    assert_eq!(compiled("ts - ts2").result_type(), ValueType::Int);
    assert_eq!(compiled("ts + 1").result_type(), ValueType::Timestamp);
    assert!(err("ts + ts2").contains("`+` expects"));
    assert!(err("1 - ts").contains("`-` expects"));
    assert!(err("ts > 5").contains("cannot compare `ts` (timestamp) with 5 (int)"));
}

#[test]
fn precedence() {
    assert_eq!(ev0("1 + 2 * 3"), I(7));
    assert_eq!(ev0("(1 + 2) * 3"), I(9));
    assert_eq!(ev0("10 - 2 - 3"), I(5));
    assert_eq!(ev0("2 * 3 % 4"), I(2));
    assert_eq!(ev0("-2 * 3"), I(-6));
    assert_eq!(ev0("1 + 2 > 2"), B(true));
    assert_eq!(ev0("true or true and false"), B(true));
    assert_eq!(ev0("(true or true) and false"), B(false));
    assert_eq!(ev0("not false and false"), B(false));
    assert_eq!(ev0("not 1 > 2"), B(true));
    assert_eq!(ev0("not 1 in [2]"), B(true));
    assert_eq!(ev0("false or not false"), B(true));
    let canonical = |src: &str| parse(src).unwrap().to_string();
    assert_eq!(canonical("a or b and c"), "a or b and c");
    assert_eq!(canonical("(a or b) and c"), "(a or b) and c");
    assert_eq!(canonical("not a and b"), "not a and b");
    assert_eq!(canonical("not (a and b)"), "not (a and b)");
    assert_eq!(canonical("not a > 1"), "not a > 1");
    assert_eq!(canonical("(a - b) - c"), "a - b - c");
    assert_eq!(canonical("a - (b - c)"), "a - (b - c)");
    assert_eq!(canonical("-a * b"), "-a * b");
    assert_eq!(canonical("-(a * b)"), "-(a * b)");
    assert_eq!(canonical("a * -b"), "a * -b");
    assert_eq!(canonical("(a == b) == c"), "(a == b) == c");
    assert_eq!(
        canonical("a = 1 || b <> 2 && !c"),
        "a == 1 or b != 2 and not c"
    );
    assert_eq!(canonical("a - -5"), "a - -5");
    assert_eq!(canonical("-(5)"), "-(5)");
    assert_eq!(canonical("--a"), "--a");
    assert_eq!(canonical("x not in ['a', \"b\"]"), "x not in ['a', 'b']");
    assert_eq!(canonical("`file-name` == `and`"), "`file-name` == `and`");
    assert_eq!(canonical("f(1, 2.0, 1e300)"), "f(1, 2.0, 1e300)");
}

#[test]
fn parse_tree_shape() {
    let ast = parse("a + b * c").unwrap();
    let AstKind::Binary { op, left, right } = &ast.kind else {
        panic!("{ast:?}")
    };
    assert_eq!(*op, BinaryOp::Add);
    assert_eq!(ast.column, 3);
    assert_eq!(left.kind, AstKind::Field("a".into()));
    assert!(matches!(
        right.kind,
        AstKind::Binary {
            op: BinaryOp::Mul,
            ..
        }
    ));
    assert_eq!(right.column, 7);
    // Equality ignores columns.
    assert_eq!(parse("a+b*c").unwrap(), ast);
    assert_eq!(
        parse("-5").unwrap().kind,
        AstKind::Literal(Literal::Int(-5))
    );
    assert!(matches!(
        parse("-(5)").unwrap().kind,
        AstKind::Unary {
            op: UnaryOp::Neg,
            ..
        }
    ));
}

// ---- null, overflow, division by zero ----

#[test]
fn null_propagates() {
    for src in [
        "durationMs + 1",
        "1 - durationMs",
        "durationMs * 2",
        "durationMs / 2",
        "durationMs % 2",
        "-durationMs",
        "durationMs > 1",
        "durationMs == 1",
        "durationMs in [1, 2]",
        "durationMs not in [1, 2]",
        "route + 'x'",
        "contains(route, 'x')",
        "starts_with('x', route)",
        "ends_with(route, 'x')",
        "matches(route, 'x')",
        "lower(route)",
        "upper(route)",
        "len(route)",
        "abs(durationMs)",
        "min(durationMs, 1)",
        "max(1, durationMs)",
        "not ok",
        "ts - 5",
        "1 + null",
        "null * 2.5",
    ] {
        assert_eq!(ev0(src), Value::Null, "{src}");
        assert!(!compiled(src).matches(&[]), "{src}");
    }
}

#[test]
fn overflow_gives_null() {
    let max = &[("durationMs", I(i64::MAX)), ("count", I(2))];
    let min = &[("durationMs", I(i64::MIN)), ("count", I(-1))];
    assert_eq!(ev("durationMs + 1", max), Value::Null);
    assert_eq!(ev("durationMs * count", max), Value::Null);
    assert_eq!(ev("durationMs - 1", min), Value::Null);
    assert_eq!(ev("-durationMs", min), Value::Null);
    assert_eq!(ev("durationMs % count", min), Value::Null);
    assert_eq!(ev("durationMs / count", min), F(-(i64::MIN as f64)));
    assert_eq!(ev("abs(durationMs)", min), Value::Null);
    assert_eq!(ev("abs(durationMs + 1)", min), I(i64::MAX));
    assert_eq!(
        ev("ts + 1", &[("ts", Value::Timestamp(i64::MAX))]),
        Value::Null
    );
    assert_eq!(
        ev(
            "ts - ts2",
            &[
                ("ts", Value::Timestamp(i64::MIN)),
                ("ts2", Value::Timestamp(1))
            ]
        ),
        Value::Null
    );
    assert_eq!(ev0("9223372036854775807 + 1"), Value::Null);
    // Overflow to null, then Kleene logic: the rule does not fire.
    assert!(!compiled("durationMs + 1 > 0").matches(&row(max)));
}

#[test]
fn division_by_zero_gives_null() {
    let zero = &[("durationMs", I(10)), ("count", I(0)), ("ratio", F(0.0))];
    assert_eq!(ev("durationMs / count", zero), Value::Null);
    assert_eq!(ev("durationMs % count", zero), Value::Null);
    assert_eq!(ev("durationMs / ratio", zero), Value::Null);
    assert_eq!(ev("ratio / ratio", zero), Value::Null);
    assert_eq!(ev0("1 / 0"), Value::Null);
    assert_eq!(ev0("1.5 / 0"), Value::Null);
}

#[test]
fn non_finite_floats_give_null() {
    let big = &[("temperature", F(1e308))];
    assert_eq!(ev("temperature * 10", big), Value::Null);
    assert_eq!(ev("temperature + temperature", big), Value::Null);
    assert_eq!(ev("-temperature", big), F(-1e308));
    // A non-finite value in the row reads as null.
    for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(ev("temperature", &[("temperature", F(x))]), Value::Null);
        assert_eq!(
            ev("is_null(temperature)", &[("temperature", F(x))]),
            B(true)
        );
    }
}

#[test]
fn short_rows_and_wrong_types_read_as_null() {
    let e = compiled("durationMs > 5 or is_null(flag)");
    assert_eq!(e.eval(&[]), B(true));
    assert_eq!(e.eval(&[I(7)]), B(true));
    assert_eq!(compiled("flag").eval(&[I(7)]), Value::Null);
    // A value of another type than the schema's is treated as missing.
    assert_eq!(compiled("durationMs + 1").eval(&[s("x")]), Value::Null);
    assert_eq!(compiled("route").eval(&[I(1), I(2), I(3)]), Value::Null);
    // An int in a float field is promoted.
    assert_eq!(ev("temperature", &[("temperature", I(3))]), F(3.0));
}

// ---- comparisons ----

#[test]
fn comparisons() {
    let cases: [(&str, bool); 24] = [
        ("1 == 1", true),
        ("1 = 1", true),
        ("1 != 1", false),
        ("1 <> 2", true),
        ("1 < 2", true),
        ("2 <= 2", true),
        ("3 > 2", true),
        ("2 >= 3", false),
        ("1 == 1.0", true),
        ("1 < 1.5", true),
        ("2.5 > 2", true),
        ("-0.0 == 0.0", true),
        ("'a' < 'b'", true),
        ("'b' >= 'b'", true),
        ("'B' < 'a'", true),
        ("'abc' == 'abc'", true),
        ("'abc' != 'abd'", true),
        ("true == true", true),
        ("true != false", true),
        ("9007199254740993 == 9007199254740992.0", false),
        ("9007199254740993 > 9007199254740992.0", true),
        ("9223372036854775807 < 9223372036854775808.0", true),
        ("-9223372036854775808 == -9223372036854775808.0", true),
        ("3 > 2.9999", true),
    ];
    for (src, expected) in cases {
        assert_eq!(ev0(src), B(expected), "{src}");
    }
    let r = &[
        ("durationMs", I(7200)),
        ("status", s("FAILED")),
        ("ok", B(false)),
    ];
    assert!(compiled("durationMs > 5000 and status == 'FAILED'").matches(&row(r)));
    assert!(compiled("ok == false").matches(&row(r)));
    assert!(!compiled("durationMs <= 5000").matches(&row(r)));
}

#[test]
fn in_lists() {
    let r = |status: &str, d: i64| row(&[("status", s(status)), ("durationMs", I(d))]);
    let e = compiled("status in ['FAILED', 'TIMEOUT']");
    assert!(e.matches(&r("FAILED", 0)));
    assert!(!e.matches(&r("OK", 0)));
    let e = compiled("status not in ['FAILED', 'TIMEOUT']");
    assert!(e.matches(&r("OK", 0)));
    assert!(!e.matches(&r("TIMEOUT", 0)));
    assert_eq!(e.eval(&[]), Value::Null);
    assert_eq!(
        compiled("durationMs in [1, 2.5, 7]").eval(&r("OK", 7)),
        B(true)
    );
    assert_eq!(
        compiled("durationMs in [1, 7.0]").eval(&r("OK", 7)),
        B(true)
    );
    assert_eq!(
        compiled("durationMs in [1, 2.5]").eval(&r("OK", 7)),
        B(false)
    );
    assert_eq!(
        ev("temperature in [1, 2.5]", &[("temperature", F(1.0))]),
        B(true)
    );
    assert_eq!(
        ev("temperature in [1, 2.5]", &[("temperature", F(2.5))]),
        B(true)
    );
    assert_eq!(
        ev("temperature in [1, 2.5]", &[("temperature", F(1.5))]),
        B(false)
    );
    assert_eq!(ev("ok in [true]", &[("ok", B(true))]), B(true));
    assert_eq!(ev("ok in [true]", &[("ok", B(false))]), B(false));
    assert_eq!(ev("ok not in [true, false]", &[("ok", B(false))]), B(false));
    assert_eq!(ev0("1 in []"), B(false));
    assert_eq!(ev0("1 not in []"), B(true));
    assert_eq!(ev0("1 in [1, 2,]"), B(true));
    // Past the scan limit the list becomes a hash set.
    let many = "durationMs in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]";
    assert!(compiled(many).matches(&r("OK", 11)));
    assert!(!compiled(many).matches(&r("OK", 13)));
    let many = "route in ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j']";
    assert_eq!(ev(many, &[("route", s("j"))]), B(true));
    assert_eq!(ev(many, &[("route", s("k"))]), B(false));
    assert_eq!(
        ev("lower(route) in ['abc']", &[("route", s("ABC"))]),
        B(true)
    );
}

// ---- logic ----

#[test]
fn kleene_logic() {
    let v = |x: Option<bool>| x.map_or(Value::Null, Value::Bool);
    let all = [Some(true), Some(false), None];
    for a in all {
        assert_eq!(ev("not ok", &[("ok", v(a))]), v(a.map(|a| !a)));
        assert_eq!(ev("!ok", &[("ok", v(a))]), v(a.map(|a| !a)));
        for b in all {
            let r = [("ok", v(a)), ("flag", v(b))];
            let and = match (a, b) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            };
            let or = match (a, b) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            };
            assert_eq!(ev("ok and flag", &r), v(and), "{a:?} and {b:?}");
            assert_eq!(ev("ok && flag", &r), v(and));
            assert_eq!(ev("ok or flag", &r), v(or), "{a:?} or {b:?}");
            assert_eq!(ev("ok || flag", &r), v(or));
        }
    }
    assert_eq!(ev0("false and null"), B(false));
    assert_eq!(ev0("null and false"), B(false));
    assert_eq!(ev0("true or null"), B(true));
    assert_eq!(ev0("null or true"), B(true));
    assert_eq!(ev0("not null"), Value::Null);
    assert_eq!(
        ev("durationMs > 5 or ok", &[("ok", B(true))]),
        B(true),
        "a null comparison does not hide a true"
    );
}

// ---- functions ----

#[test]
fn string_functions() {
    let r = &[("route", s("/api/Bank/transfer")), ("file", s("SFTP-ABC"))];
    assert_eq!(ev("contains(lower(route), 'bank')", r), B(true));
    assert_eq!(ev("contains(route, 'bank')", r), B(false));
    assert_eq!(ev("starts_with(route, '/api')", r), B(true));
    assert_eq!(ev("ends_with(route, 'transfer')", r), B(true));
    assert_eq!(ev("ends_with(route, '/api')", r), B(false));
    assert_eq!(ev("matches(file, '^SFTP-[A-Z]+$')", r), B(true));
    assert_eq!(ev("matches(route, '^SFTP-[A-Z]+$')", r), B(false));
    assert_eq!(ev("lower(file)", r), s("sftp-abc"));
    assert_eq!(ev("upper(route)", r), s("/API/BANK/TRANSFER"));
    assert_eq!(ev("len(file)", r), I(8));
    assert_eq!(ev0("len('héllo')"), I(5));
    assert_eq!(ev0("upper('straße')"), s("STRASSE"));
    assert_eq!(ev("`file-name` == 'x'", &[("file-name", s("x"))]), B(true));
    assert_eq!(compiled("lower(route)").result_type(), ValueType::Str);
    assert_eq!(compiled("len(route)").result_type(), ValueType::Int);
}

#[test]
fn numeric_functions() {
    assert_eq!(ev0("abs(-5)"), I(5));
    assert_eq!(ev0("abs(-2.5)"), F(2.5));
    assert_eq!(
        ev("abs(temperature - 20.5) >= 15", &[("temperature", F(40.0))]),
        B(true)
    );
    assert_eq!(
        ev("abs(temperature - 20.5) >= 15", &[("temperature", F(30.0))]),
        B(false)
    );
    assert_eq!(ev0("min(3, 1, 2)"), I(1));
    assert_eq!(ev0("max(3, 1, 2)"), I(3));
    assert_eq!(ev0("min(3, 1.5)"), F(1.5));
    assert_eq!(ev0("max(3, 1.5)"), F(3.0));
    assert_eq!(ev0("max(-1, -2)"), I(-1));
    assert_eq!(
        compiled("min(durationMs, count)").result_type(),
        ValueType::Int
    );
    assert_eq!(
        compiled("max(durationMs, ratio)").result_type(),
        ValueType::Float
    );
    assert_eq!(
        ev(
            "max(durationMs, ratio)",
            &[("durationMs", I(4)), ("ratio", F(0.5))]
        ),
        F(4.0)
    );
    assert_eq!(ev("min(durationMs, 2)", &[("durationMs", I(4))]), I(2));
}

#[test]
fn null_functions() {
    assert_eq!(ev("coalesce(route, 'none')", &[]), s("none"));
    assert_eq!(ev("coalesce(route, 'none')", &[("route", s("r"))]), s("r"));
    assert_eq!(
        ev("coalesce(durationMs, count, 0)", &[("count", I(3))]),
        I(3)
    );
    assert_eq!(
        ev("coalesce(durationMs, ratio)", &[("durationMs", I(3))]),
        F(3.0)
    );
    assert_eq!(ev("coalesce(null, null)", &[]), Value::Null);
    assert_eq!(
        compiled("coalesce(durationMs, ratio)").result_type(),
        ValueType::Float
    );
    assert_eq!(
        compiled("coalesce(null, route)").result_type(),
        ValueType::Str
    );
    assert_eq!(ev("is_null(route)", &[]), B(true));
    assert_eq!(ev("is_null(route)", &[("route", s(""))]), B(false));
    assert_eq!(ev("is_present(route)", &[]), B(false));
    assert_eq!(ev("is_present(route)", &[("route", s(""))]), B(true));
    assert_eq!(ev0("is_null(null)"), B(true));
    assert_eq!(ev0("is_null(1 / 0)"), B(true));
    assert!(err("coalesce(route, 1)").contains(
        "column 17: the arguments of `coalesce` must have one type: argument 1 is `route` (string) but argument 2 is 1 (int)"
    ));
}

// ---- compiled form ----

#[test]
fn api_details() {
    let e = compiled("durationMs > 5 and status == 'OK' or durationMs < 3 and ok");
    assert_eq!(e.fields(), vec![0, 1, 3]);
    assert_eq!(
        e.source(),
        "durationMs > 5 and status == 'OK' or durationMs < 3 and ok"
    );
    assert_eq!(e.result_type(), ValueType::Bool);
    assert_eq!(compiled("1 + 2").fields(), Vec::<usize>::new());
    assert_eq!(compiled("null").result_type(), ValueType::Null);
    assert_eq!(compiled("temperature").result_type(), ValueType::Float);
    assert_eq!(compiled("1 / 2").result_type(), ValueType::Float);
    let route = s("/x");
    assert_eq!(
        compiled("route").eval(&row(&[("route", route.clone())])),
        route
    );
    fn send_sync<T: Send + Sync>() {}
    send_sync::<CompiledExpr>();
}

#[test]
fn constants_are_folded() {
    let e = compiled("1 + 2 * 3 > 6 and lower('X') == 'x'");
    assert!(matches!(
        e.root_for_tests(),
        eval::Node::Const(Value::Bool(true))
    ));
    let e = compiled("durationMs > 2 * 1000");
    let eval::Node::Cmp(_, _, right) = e.root_for_tests() else {
        panic!("{e:?}")
    };
    assert!(matches!(**right, eval::Node::Const(Value::Int(2000))));
}

#[test]
fn predicates() {
    let scope = scope();
    assert!(compile_predicate("durationMs > 5", &scope).is_ok());
    assert_eq!(
        compile_predicate("durationMs + 1", &scope)
            .unwrap_err()
            .to_string(),
        "column 1: expected a condition (bool), found an expression of type int"
    );
    assert_eq!(
        compile_predicate("null", &scope).unwrap_err().message,
        "expected a condition (bool), found an expression of type null"
    );
}

// ---- errors ----

#[test]
fn unknown_field_errors() {
    assert_eq!(
        err("durationMS > 5000"),
        "column 1: unknown field `durationMS`, did you mean `durationMs`?"
    );
    assert_eq!(
        err("ok and staus == 'OK'"),
        "column 8: unknown field `staus`, did you mean `status`?"
    );
    assert_eq!(err("xyz > 1"), "column 1: unknown field `xyz`");
    assert_eq!(
        err("file_name == 'a'"),
        "column 1: unknown field `file_name`, did you mean `file-name`?"
    );
}

#[test]
fn enum_value_errors() {
    assert_eq!(
        err("status == 'FAILD'"),
        "column 11: `FAILD` is not an allowed value of `status` (one of OK, FAILED, TIMEOUT); did you mean `FAILED`?"
    );
    assert_eq!(
        err("'failed' != status"),
        "column 1: `failed` is not an allowed value of `status` (one of OK, FAILED, TIMEOUT); did you mean `FAILED`?"
    );
    assert_eq!(
        err("status in ['OK', 'TIMEOT']"),
        "column 18: `TIMEOT` is not an allowed value of `status` (one of OK, FAILED, TIMEOUT); did you mean `TIMEOUT`?"
    );
    assert_eq!(
        err("status == 'BROKEN'"),
        "column 11: `BROKEN` is not an allowed value of `status` (one of OK, FAILED, TIMEOUT)"
    );
    assert!(compile("status == 'OK' or status in ['TIMEOUT']", &scope()).is_ok());
}

#[test]
fn type_errors() {
    assert_eq!(
        err("route > 5000"),
        "column 7: cannot compare `route` (string) with 5000 (int)"
    );
    assert_eq!(
        err("ok < flag"),
        "column 4: cannot compare `ok` (bool) with `flag` (bool) with `<`: bools support only `==` and `!=`"
    );
    assert_eq!(
        err("ok + 1"),
        "column 4: `+` expects two numbers, two strings, or a timestamp and an int, found `ok` (bool) and 1 (int)"
    );
    assert_eq!(
        err("route * 2"),
        "column 7: `*` expects two numbers, found `route` (string) and 2 (int)"
    );
    assert_eq!(
        err("temperature % 2"),
        "column 13: `%` expects two ints, found `temperature` (float) and 2 (int)"
    );
    assert_eq!(
        err("durationMs and ok"),
        "column 12: `and` expects a condition (bool) on its left, found `durationMs` (int)"
    );
    assert_eq!(
        err("ok or 'x'"),
        "column 4: `or` expects a condition (bool) on its right, found 'x' (string)"
    );
    assert_eq!(
        err("not route"),
        "column 1: `not` expects a condition (bool), found `route` (string)"
    );
    assert_eq!(
        err("-route"),
        "column 1: `-` expects a number, found `route` (string)"
    );
    assert_eq!(
        err("durationMs in ['a']"),
        "column 16: cannot compare `durationMs` (int) with 'a' (string) in the list after `in`"
    );
    assert_eq!(
        err("route in [route]"),
        "column 11: the list after `in` may hold only literals, found `route`; compare with `==` and `or` instead"
    );
    assert!(err("ts in [1]").contains("`in` cannot test timestamps"));
    assert_eq!(
        err("status == null"),
        "column 11: a comparison with `null` is always null and never matches; use is_null(x) or is_present(x) instead"
    );
    assert!(err("route in ['a', null]").starts_with("column 16: `null` in an `in` list"));
    assert!(err("(route + 1) > 2").starts_with("column 8: `+` expects"));
}

#[test]
fn function_errors() {
    assert_eq!(
        err("contain(route, 'x')"),
        "column 1: unknown function `contain`, did you mean `contains`?"
    );
    assert_eq!(
        err("LOWER(route) == 'x'"),
        "column 1: unknown function `LOWER`, did you mean `lower`?"
    );
    assert!(err("frobnicate(1)")
        .starts_with("column 1: unknown function `frobnicate` (the functions are contains,"));
    assert_eq!(
        err("route(1)"),
        "column 1: `route` is a field, not a function"
    );
    assert_eq!(
        err("contains(route)"),
        "column 1: `contains` takes 2 arguments, found 1 (usage: contains(s, sub))"
    );
    assert_eq!(
        err("min(1)"),
        "column 1: `min` takes at least 2 arguments, found 1 (usage: min(a, b, ...))"
    );
    assert_eq!(
        err("is_null()"),
        "column 1: `is_null` takes 1 argument, found 0 (usage: is_null(x))"
    );
    assert_eq!(
        err("ok and contains(route, durationMs)"),
        "column 24: argument 2 of `contains` must be a string, found `durationMs` (int)"
    );
    assert_eq!(
        err("abs('x') > 1"),
        "column 5: argument 1 of `abs` must be a number, found 'x' (string)"
    );
    assert_eq!(
        err("max(1, route) > 1"),
        "column 8: argument 2 of `max` must be a number, found `route` (string)"
    );
}

#[test]
fn regex_errors() {
    assert_eq!(
        err("matches(file, '^SFTP-[A-Z+$')"),
        "column 15: invalid regex '^SFTP-[A-Z+$' in `matches`: unclosed character class"
    );
    assert!(err("matches(file, route)")
        .starts_with("column 15: argument 2 of `matches` must be a string literal"));
    assert!(err("matches(file, 'a' + 'b')").starts_with("column 19: argument 2 of `matches`"));
}

#[test]
fn parse_errors() {
    assert_eq!(
        err("durationMs > "),
        "column 14: expected an expression, found the end of the expression"
    );
    assert_eq!(
        err(""),
        "column 1: expected an expression, found the end of the expression"
    );
    assert_eq!(
        err("(durationMs > 1"),
        "column 16: expected `)` to close the `(` at column 1, found the end of the expression"
    );
    assert_eq!(
        err("durationMs > 1)"),
        "column 15: expected an operator or the end of the expression, found `)`"
    );
    assert_eq!(
        err("durationMs 5"),
        "column 12: expected an operator or the end of the expression, found number 5 (is an operator missing?)"
    );
    assert_eq!(
        err("1 < durationMs < 10"),
        "column 16: comparisons cannot be chained (`<` after `<`); combine them with `and`, e.g. `a < b and b < c`"
    );
    assert!(err("1 == durationMs in [1]")
        .starts_with("column 17: comparisons cannot be chained (`in` after `==`)"));
    assert_eq!(
        err("ok AND flag"),
        "column 4: `AND` is not a keyword (keywords are lowercase); did you mean `and`? A field named `AND` must be quoted in backticks"
    );
    assert!(err("ok Or flag").contains("did you mean `or`?"));
    assert!(err("status == NULL").contains("did you mean `null`?"));
    assert_eq!(
        err("route == 'abc"),
        "column 10: unterminated string: missing the closing '"
    );
    assert_eq!(
        err("route == \"abc\\\""),
        "column 10: unterminated string: missing the closing \""
    );
    assert_eq!(
        err("durationMs > 99999999999999999999"),
        "column 14: integer 99999999999999999999 is too large (the largest is 9223372036854775807)"
    );
    assert_eq!(
        err("durationMs > 9223372036854775808"),
        "column 14: integer 9223372036854775808 is too large (the largest is 9223372036854775807)"
    );
    assert_eq!(
        err("-9223372036854775809"),
        "column 1: integer -9223372036854775809 is too small (the smallest is -9223372036854775808)"
    );
    assert_eq!(
        err("`file-name` > 1"),
        "column 13: cannot compare `file-name` (string) with 1 (int)"
    );
    assert_eq!(err("1e999"), "column 1: number 1e999 is out of range");
    assert_eq!(
        err("1."),
        "column 3: expected a digit after the decimal point"
    );
    assert_eq!(
        err("12abc"),
        "column 3: unexpected `a` right after the number 12"
    );
    assert!(err(".5").starts_with("column 1: a number cannot start with `.`"));
    assert_eq!(err("ok # flag"), "column 4: unexpected character `#`");
    assert!(err("ok & flag").contains("did you mean `and`"));
    assert!(err("ok | flag").contains("did you mean `or`"));
    assert!(err("durationMs => 1").contains("did you mean `>=`?"));
    assert_eq!(
        err("ok == not flag"),
        "column 7: `not` cannot be used here without parentheses; write `(not …)`"
    );
    assert!(compile("ok == (not flag)", &scope()).is_ok());
    assert!(err("route in ('a')").starts_with("column 10: expected `[` after `in`, found `(`"));
    assert!(err("route not in 'a'").starts_with("column 14: expected `[` after `not in`"));
    assert_eq!(
        err("route in ['a' 'b']"),
        "column 15: expected `,` or `]` in the list opened at column 10, found string 'b'"
    );
    assert_eq!(
        err("contains(route 'a')"),
        "column 16: expected `,` or `)` in the arguments of `contains`, found string 'a'"
    );
    assert_eq!(
        err("`unterminated"),
        "column 1: unterminated quoted field name: missing the closing `"
    );
    assert_eq!(err("`` == 1"), "column 1: empty quoted field name");
    assert!(err("ok and é").starts_with("column 8: unexpected character `é`"));
    // Columns count chars, not bytes.
    assert_eq!(
        err("'é' == ok +"),
        "column 12: expected an expression, found the end of the expression"
    );
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("{}1{}", "(".repeat(500), ")".repeat(500));
    assert!(err(&deep).contains("nested too deeply"));
    let long = vec!["1"; 500].join(" + ");
    assert!(err(&long).contains("nested too deeply"));
    let nots = format!("{}ok", "not ".repeat(500));
    assert!(err(&nots).contains("nested too deeply"));
    // Long but shallow enough is fine.
    let ok = vec!["1"; 50].join(" + ");
    assert_eq!(ev0(&ok), I(50));
}

#[test]
fn error_display_and_fields() {
    let e = compile("zz", &scope()).unwrap_err();
    assert_eq!(e.column, 1);
    assert_eq!(e.message, "unknown field `zz`");
    assert_eq!(e.to_string(), "column 1: unknown field `zz`");
    let as_std: &dyn std::error::Error = &e;
    assert_eq!(as_std.to_string(), "column 1: unknown field `zz`");
}

#[test]
fn examples_from_the_rule_docs() {
    let scope = scope();
    let fire = |src: &str, values: &[(&str, Value)]| {
        compile_predicate(src, &scope)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .matches(&row(values))
    };
    let src = "durationMs > 5000 and status in ['FAILED', 'TIMEOUT']";
    assert!(fire(
        src,
        &[("durationMs", I(7200)), ("status", s("TIMEOUT"))]
    ));
    assert!(!fire(src, &[("durationMs", I(7200)), ("status", s("OK"))]));
    assert!(!fire(src, &[("status", s("FAILED"))]));
    let src = "contains(lower(route), 'bank') or not ok";
    assert!(fire(src, &[("route", s("/BANK")), ("ok", B(true))]));
    assert!(fire(src, &[("route", s("/x")), ("ok", B(false))]));
    assert!(!fire(src, &[("route", s("/x")), ("ok", B(true))]));
    assert!(!fire(src, &[("ok", B(true))]));
    let src = "abs(temperature - 20.5) >= 15";
    assert!(fire(src, &[("temperature", F(5.0))]));
    assert!(!fire(src, &[("temperature", F(25.0))]));
    let src = "matches(file, '^SFTP-[A-Z]+$')";
    assert!(fire(src, &[("file", s("SFTP-ABC"))]));
    assert!(!fire(src, &[("file", s("SFTP-abc"))]));
    let hit = compile("durationMs > 5000 and status in ['FAILED']", &scope).unwrap();
    assert_eq!(hit.fields(), vec![0, 1]);
}

#[test]
fn regex_escapes_are_kept_as_written_in_strings() {
    assert_eq!(ev0(r"'a\.b'"), s(r"a\.b"));
    assert_eq!(ev0(r"'a\\b'"), s(r"a\b"));
    assert_eq!(
        ev(
            r"matches(route, '^R-\d+\.csv$')",
            &[("route", s("R-12.csv"))]
        ),
        Value::Bool(true)
    );
    assert_eq!(
        ev(
            r"matches(route, '^R-\d+\.csv$')",
            &[("route", s("R-12xcsv"))]
        ),
        Value::Bool(false)
    );
}

#[test]
fn inline_aggregates_are_syntax_printed_as_written() {
    let ast = parse("sum( amount ) over 1h every 5m > 2000 and prev(x) != x").unwrap();
    let AstKind::Binary { left, .. } = &ast.kind else {
        panic!("{ast:?}")
    };
    let AstKind::Binary { left: agg, .. } = &left.kind else {
        panic!("{left:?}")
    };
    let AstKind::Aggregate { call, window, text } = &agg.kind else {
        panic!("{agg:?}")
    };
    assert_eq!(window, "1h every 5m");
    assert_eq!(text, "sum( amount ) over 1h every 5m");
    assert_eq!(call.to_string(), "sum(amount)");
    assert_eq!(agg.column, 1);
    // Printed as written, and the print parses back to the same tree.
    assert_eq!(
        ast.to_string(),
        "sum( amount ) over 1h every 5m > 2000 and prev(x) != x"
    );
    assert_eq!(parse(&ast.to_string()).unwrap(), ast);
    for window in [
        "5m",
        "1h30m",
        "250ms",
        "tumbling 1h",
        "session 30m",
        "calendar day",
        "calendar week tz Europe/Berlin",
    ] {
        let text = format!("count() over {window}");
        let ast = parse(&format!("{text} > 3")).unwrap();
        let AstKind::Binary { left, .. } = &ast.kind else {
            panic!("{ast:?}")
        };
        assert!(
            matches!(&left.kind, AstKind::Aggregate { text: t, window: w, .. } if *t == text && w == window),
            "{left:?}"
        );
    }
}

#[test]
fn over_without_a_window_is_not_an_aggregate() {
    // A field may be called `over`; `over` not after a call, or without a window, is a name.
    assert!(matches!(
        parse("over > 1").unwrap().kind,
        AstKind::Binary { .. }
    ));
    let e = parse("sum(x) over 5q > 1").unwrap_err().to_string();
    assert!(e.contains("unexpected `q` right after the number 5"), "{e}");
    assert_eq!(
        parse("sum(x) over x > 1").unwrap_err().to_string(),
        "column 8: expected an operator or the end of the expression, found `over` (is an operator missing?)"
    );
}

#[test]
fn an_aggregate_outside_a_pipeline_says_where_it_belongs() {
    assert_eq!(
        err("count() over 5m > 3"),
        "column 1: `count() over 5m` is an aggregate, which only a pipeline's rules compute inline; declare it under `aggregates:` to use it here"
    );
}

/// A scope that computes what is asked by text, as a pipeline's row scope does.
struct Computing(TestScope, Vec<(&'static str, ValueType)>);

impl Scope for Computing {
    fn field(&self, name: &str) -> Option<FieldInfo<'_>> {
        self.0.field(name)
    }

    fn field_names(&self) -> Vec<&str> {
        self.0.field_names()
    }

    fn computed(&self, text: &str) -> Option<FieldInfo<'_>> {
        let base = self.0.fields.len();
        self.1
            .iter()
            .position(|(t, _)| *t == text)
            .map(|i| FieldInfo {
                index: base + i,
                ty: self.1[i].1,
                allowed: None,
            })
    }
}

#[test]
fn computed_values_are_read_like_fields_and_named_as_written_in_errors() {
    let scope = Computing(
        scope(),
        vec![
            ("sum(durationMs) over 1d", ValueType::Int),
            ("route_id(file)", ValueType::Str),
        ],
    );
    let c = compile(
        "sum(durationMs) over 1d > 10 and route_id(file) == 'A'",
        &scope,
    )
    .unwrap();
    let n = scope.0.fields.len();
    let mut row = vec![Value::Null; n + 2];
    row[n] = Value::Int(11);
    row[n + 1] = s("A");
    assert_eq!(c.eval(&row), Value::Bool(true));
    assert_eq!(
        compile("sum(durationMs) over 1d > 'x'", &scope)
            .unwrap_err()
            .to_string(),
        "column 25: cannot compare `sum(durationMs) over 1d` (int) with 'x' (string)"
    );
}
