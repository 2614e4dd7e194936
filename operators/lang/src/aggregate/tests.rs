use std::sync::Arc;
use std::time::Duration;

use super::window::{calendar_bounds, Plan};
use super::*;
use crate::value::{Value, ValueType};

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;

fn spec(text: &str) -> AggregateSpec {
    match parse_spec(text, "UTC") {
        Ok(s) => s,
        Err(e) => panic!("`{text}` should parse: {e}"),
    }
}

fn err(text: &str) -> SpecError {
    match parse_spec(text, "Europe/Berlin") {
        Ok(s) => panic!("`{text}` should not parse, got {s:?}"),
        Err(e) => e,
    }
}

fn agg(text: &str, ty: Option<ValueType>) -> Aggregate {
    match Aggregate::compile(&spec(text), ty.map(|t| (0, t))) {
        Ok(a) => a,
        Err(e) => panic!("`{text}` should compile: {e}"),
    }
}

fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

/// Epoch ms of a local civil time in a zone.
fn local(tz: &str, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> i64 {
    let dt = jiff::civil::date(y, mo, d).at(h, mi, 0, 0);
    dt.in_tz(tz).unwrap().timestamp().as_millisecond()
}

// ---------------------------------------------------------------------------------------
// Parsing.

#[test]
fn parses_every_function() {
    for f in AggFn::ALL {
        let text = match f {
            AggFn::Count => "count()".to_string(),
            AggFn::Rate => "rate() over 1m".to_string(),
            f => format!("{}(amount)", f.name()),
        };
        let s = spec(&text);
        assert_eq!(s.func, f);
        assert_eq!(s.field.is_some(), f.takes_field());
        assert_eq!(s.to_string(), text);
    }
}

#[test]
fn parses_every_window() {
    let cases: Vec<(&str, Window)> = vec![
        ("count()", Window::Unbounded),
        ("count() over 5m", Window::Sliding(ms(5 * MIN))),
        ("count() over 1h30m", Window::Sliding(ms(90 * MIN))),
        ("count() over 250ms", Window::Sliding(ms(250))),
        ("count() over 2w", Window::Sliding(ms(14 * DAY))),
        ("count() over tumbling 1h", Window::Tumbling(ms(HOUR))),
        (
            "count() over 1h every 5m",
            Window::Hopping {
                length: ms(HOUR),
                hop: ms(5 * MIN),
            },
        ),
        ("count() over session 30m", Window::Session(ms(30 * MIN))),
        (
            "count() over calendar day",
            Window::Calendar {
                period: CalendarPeriod::Day,
                tz: "UTC".into(),
            },
        ),
        (
            "count() over calendar week tz Europe/Berlin",
            Window::Calendar {
                period: CalendarPeriod::Week,
                tz: "Europe/Berlin".into(),
            },
        ),
        (
            "count() over calendar month tz America/New_York",
            Window::Calendar {
                period: CalendarPeriod::Month,
                tz: "America/New_York".into(),
            },
        ),
    ];
    for (text, window) in cases {
        assert_eq!(spec(text).window, window, "{text}");
    }
}

#[test]
fn whitespace_is_free_and_display_is_canonical() {
    let s = spec("  sum (  amount )over   calendar\tday  tz   Europe/Berlin  ");
    assert_eq!(s.func, AggFn::Sum);
    assert_eq!(s.field.as_deref(), Some("amount"));
    assert_eq!(
        s.to_string(),
        "sum(amount) over calendar day tz Europe/Berlin"
    );
    assert_eq!(spec("avg(x) over 90m").to_string(), "avg(x) over 1h30m");
    assert_eq!(spec("avg(x) over 1w").to_string(), "avg(x) over 7d");
    assert_eq!(
        spec("count()over 1h every 5m").to_string(),
        "count() over 1h every 5m"
    );
    // The default time zone is written out, so the canonical form stands alone.
    // Time zone names are matched case-insensitively and written canonically.
    assert_eq!(
        spec("count() over calendar day tz europe/berlin").to_string(),
        "count() over calendar day tz Europe/Berlin"
    );
    let s = parse_spec("count() over calendar day", "Europe/Berlin").unwrap();
    assert_eq!(s.to_string(), "count() over calendar day tz Europe/Berlin");
    assert_eq!(parse_spec(&s.to_string(), "UTC").unwrap(), s);
}

#[test]
fn error_messages_say_what_was_expected_and_found() {
    let cases: Vec<(&str, usize, &str)> = vec![
        ("", 1, "expected an aggregate such as `count()` or `sum(amount)`, found the end of the spec"),
        ("  (x)", 3, "expected an aggregate such as `count()` or `sum(amount)`, found `(`"),
        ("summ(amount)", 1, "unknown aggregate `summ`, did you mean `sum`?"),
        ("Count()", 1, "unknown aggregate `Count`, did you mean `count`?"),
        ("median(x)", 1, "unknown aggregate `median`: expected one of count, sum, avg, min, max, stddev, last, prev, distinct, p50, p90, p99, rate"),
        ("sum amount", 5, "expected `(` after `sum`, found `amount`"),
        ("sum", 4, "expected `(` after `sum`, found the end of the spec"),
        ("sum()", 5, "`sum` needs a field, e.g. `sum(amount)`, found `)`"),
        ("count(amount)", 7, "`count` takes no field, found `amount`: write `count()`"),
        ("rate(x) over 1m", 6, "`rate` takes no field, found `x`: write `rate()`"),
        ("sum(3x)", 5, "expected a field name (letters, digits and `_`, not starting with a digit), found `3x`"),
        ("sum(amount", 11, "expected `)` to close `sum(`, found the end of the spec"),
        ("sum(a b)", 7, "expected `)` to close `sum(`, found `b`"),
        ("sum(amount) ovr 5m", 13, "expected `over <window>` or the end of the spec, found `ovr`, did you mean `over`?"),
        ("sum(amount) by card", 13, "expected `over <window>` or the end of the spec, found `by`"),
        ("sum(amount) ;", 13, "expected `over <window>` or the end of the spec, found `;`"),
        ("sum(amount) over", 17, "expected a window after `over`: a duration such as `5m`, `tumbling 1h`, `1h every 5m`, `session 30m` or `calendar day`; found the end of the spec"),
        ("sum(amount) over tumbing 1h", 18, "expected a window after `over`: a duration such as `5m`, `tumbling 1h`, `1h every 5m`, `session 30m` or `calendar day`; found `tumbing`, did you mean `tumbling`?"),
        ("prev(location) over 5m", 16, "`prev` takes no window: it is always the key's previous event"),
        ("count() over 1h every 7m", 23, "a hopping window's length (1h) must be a multiple of its hop (7m)"),
        ("count() over 1w every 1m", 23, "a hopping window has at most 10000 hops, `7d every 1m` has 10080"),
        ("count() over 1h evry 5m", 17, "expected `every <hop>` or the end of the spec, found `evry`, did you mean `every`?"),
        ("count() over 1h every", 22, "expected a hop such as `5m`, `1h30m` or `30d`, found the end of the spec"),
        ("count() over 5", 14, "duration `5` needs a unit: one of ms, s, m, h, d, w"),
        ("count() over 5x", 14, "unknown duration unit `x` in `5x`: expected one of ms, s, m, h, d, w"),
        ("count() over 5mins", 14, "unknown duration unit `mins` in `5mins`: expected one of ms, s, m, h, d, w"),
        ("count() over 0s", 14, "a window length must be positive, found `0s`"),
        ("count() over 36501d", 14, "duration `36501d` is too large: at most 36500d"),
        ("count() over tumbling", 22, "expected a window length such as `5m`, `1h30m` or `30d`, found the end of the spec"),
        ("count() over session x", 22, "expected a session gap such as `5m`, `1h30m` or `30d`, found `x`"),
        ("count() over session 0m", 22, "a session gap must be positive, found `0m`"),
        ("count() over calendar dya", 23, "expected a calendar period: `day`, `week` or `month`, found `dya`, did you mean `day`?"),
        ("count() over calendar", 22, "expected a calendar period: `day`, `week` or `month`, found the end of the spec"),
        ("count() over calendar day tz Europe/Berln", 30, "unknown time zone `Europe/Berln`, did you mean `Europe/Berlin`?"),
        ("count() over calendar day tz Nowhere/Xyzzyq", 30, "unknown time zone `Nowhere/Xyzzyq`: expected an IANA name such as `Europe/Berlin` or `UTC`"),
        ("count() over calendar day tz", 29, "expected a time zone name after `tz`, e.g. `Europe/Berlin` or `UTC`, found the end of the spec"),
        ("count() over 5m tz UTC", 17, "`tz` applies only to calendar windows, e.g. `over calendar day tz Europe/Berlin`"),
        ("count() over 5m extra", 17, "expected the end of the spec, found `extra`"),
        ("count() over calendar day tz UTC x", 34, "expected the end of the spec, found `x`"),
        ("rate()", 1, "`rate` needs a window of fixed length (sliding, tumbling, hopping or calendar), found no window"),
        ("rate() over session 5m", 1, "`rate` needs a window of fixed length (sliding, tumbling, hopping or calendar), found a session window"),
    ];
    for (text, column, message) in cases {
        let e = err(text);
        assert_eq!((e.column, e.message.as_str()), (column, message), "{text}");
    }
    assert_eq!(
        err("summ(x)").to_string(),
        "column 1: unknown aggregate `summ`, did you mean `sum`?"
    );
    // Columns count characters, not bytes.
    assert_eq!(err("sum(ä)").column, 5);
    let e = parse_spec("count() over calendar day", "Mars/Olympus").unwrap_err();
    assert_eq!(e.column, 23);
    assert!(
        e.message.starts_with("unknown time zone `Mars/Olympus`")
            && e.message.ends_with("(the default time zone)"),
        "{}",
        e.message
    );
}

#[test]
fn hopping_length_must_be_a_multiple_of_the_hop() {
    assert!(parse_spec("count() over 1h every 15m", "UTC").is_ok());
    assert!(parse_spec("count() over 1h every 1h", "UTC").is_ok());
    assert_eq!(
        err("count() over 1h every 2h").message,
        "a hopping window's length (1h) must be a multiple of its hop (2h)"
    );
    // A spec built by hand is checked again at compile time.
    let bad = AggregateSpec {
        func: AggFn::Count,
        field: None,
        window: Window::Hopping {
            length: ms(HOUR),
            hop: ms(7 * MIN),
        },
    };
    assert_eq!(
        Aggregate::compile(&bad, None).unwrap_err(),
        "a hopping window's length (1h) must be a multiple of its hop (7m)"
    );
}

// ---------------------------------------------------------------------------------------
// Compiling and types.

#[test]
fn result_types() {
    use ValueType::*;
    let cases: Vec<(&str, Option<ValueType>, ValueType)> = vec![
        ("count()", None, Int),
        ("count() over 5m", None, Int),
        ("rate() over 5m", None, Float),
        ("sum(x)", Some(Int), Int),
        ("sum(x)", Some(Float), Float),
        ("avg(x)", Some(Int), Float),
        ("avg(x)", Some(Float), Float),
        ("stddev(x)", Some(Int), Float),
        ("p50(x)", Some(Int), Float),
        ("p90(x)", Some(Float), Float),
        ("p99(x)", Some(Float), Float),
        ("min(x)", Some(Int), Int),
        ("max(x)", Some(Float), Float),
        ("min(x)", Some(Timestamp), Timestamp),
        ("max(x)", Some(Str), Str),
        ("last(x)", Some(Str), Str),
        ("last(x)", Some(Bool), Bool),
        ("prev(x)", Some(Str), Str),
        ("prev(x)", Some(Timestamp), Timestamp),
        ("distinct(x)", Some(Str), Int),
        ("distinct(x)", Some(Float), Int),
    ];
    for (text, field, want) in cases {
        assert_eq!(agg(text, field).result_type(), want, "{text} of {field:?}");
    }
}

#[test]
fn type_errors_in_words() {
    let e = |text: &str, field: Option<(usize, ValueType)>| {
        Aggregate::compile(&spec(text), field).unwrap_err()
    };
    let mut s = spec("sum(route)");
    assert_eq!(
        Aggregate::compile(&s, Some((2, ValueType::Str))).unwrap_err(),
        "sum needs a numeric field, `route` is string"
    );
    s.func = AggFn::P99;
    assert_eq!(
        Aggregate::compile(&s, Some((2, ValueType::Timestamp))).unwrap_err(),
        "p99 needs a numeric field, `route` is timestamp"
    );
    assert_eq!(
        e("avg(flag)", Some((0, ValueType::Bool))),
        "avg needs a numeric field, `flag` is bool"
    );
    assert_eq!(
        e("min(flag)", Some((0, ValueType::Bool))),
        "min needs a numeric, timestamp or string field, `flag` is bool"
    );
    assert_eq!(e("sum(x)", None), "sum needs a field, e.g. `sum(amount)`");
    assert_eq!(
        e("count()", Some((0, ValueType::Int))),
        "count takes no field: write `count()`"
    );
    let unknown_tz = AggregateSpec {
        func: AggFn::Count,
        field: None,
        window: Window::Calendar {
            period: CalendarPeriod::Day,
            tz: "Nowhere/Xyzzyq".into(),
        },
    };
    assert_eq!(
        Aggregate::compile(&unknown_tz, None).unwrap_err(),
        "unknown time zone `Nowhere/Xyzzyq`"
    );
}

#[test]
fn aggregates_are_send_sync_and_states_clone() {
    fn check<T: Send + Sync + Clone + std::fmt::Debug>() {}
    check::<Aggregate>();
    check::<AggState>();
}

#[test]
fn horizons() {
    let h = |text: &str, ty: Option<ValueType>| agg(text, ty).horizon();
    assert_eq!(h("count()", None), None);
    assert_eq!(h("prev(x)", Some(ValueType::Str)), None);
    assert_eq!(h("count() over 5m", None), Some(ms(5 * MIN)));
    assert_eq!(h("count() over 1000ms", None), Some(ms(83 * 13)));
    assert_eq!(h("count() over tumbling 1h", None), Some(ms(HOUR)));
    assert_eq!(h("count() over 1h every 5m", None), Some(ms(HOUR)));
    assert_eq!(h("count() over session 30m", None), Some(ms(30 * MIN)));
    assert_eq!(
        h("count() over calendar day", None),
        Some(ms(DAY + 2 * HOUR))
    );
    assert_eq!(
        h("count() over calendar week", None),
        Some(ms(7 * DAY + 2 * HOUR))
    );
    assert_eq!(
        h("count() over calendar month", None),
        Some(ms(31 * DAY + 2 * HOUR))
    );
}

#[test]
fn sliding_pane_arithmetic() {
    assert_eq!(sliding_panes(ms(5 * MIN)), (25_000, 12));
    assert_eq!(sliding_panes(ms(30 * DAY)), (216_000_000, 12));
    assert_eq!(sliding_panes(ms(1000)), (83, 13));
    assert_eq!(sliding_panes(ms(5)), (1, 5));
    assert_eq!(sliding_panes(ms(12)), (1, 12));
}

// ---------------------------------------------------------------------------------------
// Values.

fn run(a: &Aggregate, events: &[(i64, Value)]) -> Vec<Value> {
    let mut s = a.new_state();
    events
        .iter()
        .map(|(t, x)| a.update(&mut s, *t, std::slice::from_ref(x)))
        .collect()
}

#[test]
fn nulls_are_skipped_except_by_count() {
    let ev = [
        (1, Value::Null),
        (2, Value::Int(4)),
        (3, Value::Null),
        (4, Value::Int(2)),
        (5, Value::Null),
    ];
    let ints = |text: &str| run(&agg(text, Some(ValueType::Int)), &ev);
    use Value::{Float as F, Int as I, Null as N};
    assert_eq!(
        run(&agg("count()", None), &ev),
        vec![I(1), I(2), I(3), I(4), I(5)]
    );
    assert_eq!(ints("sum(x)"), vec![I(0), I(4), I(4), I(6), I(6)]);
    assert_eq!(ints("avg(x)"), vec![N, F(4.0), F(4.0), F(3.0), F(3.0)]);
    assert_eq!(ints("min(x)"), vec![N, I(4), I(4), I(2), I(2)]);
    assert_eq!(ints("max(x)"), vec![N, I(4), I(4), I(4), I(4)]);
    assert_eq!(ints("last(x)"), vec![N, I(4), I(4), I(2), I(2)]);
    assert_eq!(ints("prev(x)"), vec![N, N, I(4), I(4), I(2)]);
    assert_eq!(ints("distinct(x)"), vec![I(0), I(1), I(1), I(2), I(2)]);
    assert_eq!(ints("stddev(x)"), vec![N, F(0.0), F(0.0), F(1.0), F(1.0)]);
    let p50 = ints("p50(x)");
    assert_eq!(p50[0], N);
    let Value::Float(m) = p50[4] else {
        panic!("{p50:?}")
    };
    assert!((m - 2.0).abs() <= 0.02, "{m}");
    // A float sum over nothing is 0.0; NaN and infinities are skipped like nulls.
    let f = agg("sum(x) over 5m", Some(ValueType::Float));
    assert_eq!(
        run(
            &f,
            &[
                (1, Value::Null),
                (2, Value::Float(f64::NAN)),
                (3, Value::Float(1.5)),
                (4, Value::Float(f64::INFINITY))
            ]
        ),
        vec![F(0.0), F(0.0), F(1.5), F(1.5)]
    );
    // A row too short for the field counts as null rather than panicking.
    let a = agg("sum(x)", Some(ValueType::Int));
    let mut s = a.new_state();
    assert_eq!(a.update(&mut s, 1, &[]), I(0));
}

#[test]
fn int_sum_overflow_is_null_and_recovers() {
    let a = agg("sum(x) over tumbling 1s", Some(ValueType::Int));
    let v = run(
        &a,
        &[
            (0, Value::Int(i64::MAX)),
            (1, Value::Int(1)),
            (2, Value::Int(-2)),
            (1000, Value::Int(i64::MIN)),
            (1001, Value::Int(-1)),
        ],
    );
    assert_eq!(
        v,
        vec![
            Value::Int(i64::MAX),
            Value::Null,
            Value::Int(i64::MAX - 1),
            Value::Int(i64::MIN),
            Value::Null
        ]
    );
    // Unbounded sums carry on exactly beyond i64.
    let a = agg("sum(x)", Some(ValueType::Int));
    let v = run(
        &a,
        &[
            (0, Value::Int(i64::MAX)),
            (1, Value::Int(i64::MAX)),
            (2, Value::Int(i64::MIN)),
        ],
    );
    assert_eq!(
        v,
        vec![Value::Int(i64::MAX), Value::Null, Value::Int(i64::MAX - 1)]
    );
    // Float overflow is null, as is an avg of huge ints stays finite.
    let f = agg("sum(x)", Some(ValueType::Float));
    let v = run(
        &f,
        &[(0, Value::Float(f64::MAX)), (1, Value::Float(f64::MAX))],
    );
    assert_eq!(v, vec![Value::Float(f64::MAX), Value::Null]);
    let avg = agg("avg(x)", Some(ValueType::Int));
    let v = run(
        &avg,
        &[(0, Value::Int(i64::MAX)), (1, Value::Int(i64::MAX))],
    );
    assert_eq!(v[1], Value::Float(i64::MAX as f64));
    let sd = agg("stddev(x)", Some(ValueType::Float));
    let v = run(
        &sd,
        &[(0, Value::Float(f64::MAX)), (1, Value::Float(-f64::MAX))],
    );
    assert_eq!(v[1], Value::Null);
}

#[test]
fn min_max_last_prev_keep_the_field_type() {
    let ts = agg("max(x)", Some(ValueType::Timestamp));
    assert_eq!(
        run(&ts, &[(0, Value::Timestamp(5)), (1, Value::Timestamp(3))]),
        vec![Value::Timestamp(5), Value::Timestamp(5)]
    );
    let s = |v: &str| Value::Str(Arc::from(v));
    let min = agg("min(x) over 5m", Some(ValueType::Str));
    assert_eq!(
        run(&min, &[(0, s("b")), (1, s("a")), (2, s("c"))]),
        vec![s("b"), s("a"), s("a")]
    );
    // last: the latest by event time, not arrival.
    let last = agg("last(x) over 5m", Some(ValueType::Str));
    assert_eq!(
        run(&last, &[(10, s("late")), (5, s("early")), (10, s("tie"))]),
        vec![s("late"), s("late"), s("tie")]
    );
    let prev = agg("prev(x)", Some(ValueType::Timestamp));
    let mut st = prev.new_state();
    assert_eq!(prev.update(&mut st, 0, &[Value::Timestamp(7)]), Value::Null);
    let bytes = rmp_serde::to_vec(&st).unwrap();
    let mut back: AggState = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back, st);
    assert_eq!(prev.value_at(&back, 0), Value::Timestamp(7));
    assert_eq!(
        prev.update(&mut back, 0, &[Value::Timestamp(8)]),
        Value::Timestamp(7)
    );
}

#[test]
fn sliding_window_resolution_is_a_twelfth() {
    // over 1m: panes of 5 s; the window of t is the 12 panes ending with t's pane.
    let a = agg("count() over 1m", None);
    let mut s = a.new_state();
    let row = [Value::Null];
    assert_eq!(a.update(&mut s, 0, &row), Value::Int(1));
    assert_eq!(a.update(&mut s, 59_999, &row), Value::Int(2));
    // 60 s is pane 12: panes 1..=12, pane 0 dropped.
    assert_eq!(a.update(&mut s, 60_000, &row), Value::Int(2));
    assert_eq!(a.value_at(&s, 64_999), Value::Int(2));
    assert_eq!(a.value_at(&s, 65_000), Value::Int(2));
    assert_eq!(a.value_at(&s, 115_000), Value::Int(1));
    assert_eq!(a.value_at(&s, 120_000), Value::Int(0));
    // An out-of-order event counts what its own window holds.
    assert_eq!(a.update(&mut s, 59_000, &row), Value::Int(2));
    let rate = agg("rate() over 1m", None);
    let mut s = rate.new_state();
    for t in 0..30 {
        rate.update(&mut s, t * 1000, &row);
    }
    assert_eq!(rate.value_at(&s, 29_000), Value::Float(0.5));
}

#[test]
fn hopping_and_tumbling_windows() {
    let row = [Value::Null];
    let hop = agg("count() over 10m every 5m", None);
    let mut s = hop.new_state();
    let m = MIN as i64;
    assert_eq!(hop.update(&mut s, 0, &row), Value::Int(1));
    assert_eq!(hop.update(&mut s, 5 * m, &row), Value::Int(2));
    assert_eq!(hop.update(&mut s, 10 * m - 1, &row), Value::Int(3));
    assert_eq!(hop.update(&mut s, 10 * m, &row), Value::Int(3));
    assert_eq!(hop.value_at(&s, 15 * m), Value::Int(1));
    let tumbling = agg("count() over tumbling 1h", None);
    let mut s = tumbling.new_state();
    let h = HOUR as i64;
    assert_eq!(tumbling.update(&mut s, h - 1, &row), Value::Int(1));
    assert_eq!(tumbling.update(&mut s, h, &row), Value::Int(1));
    assert_eq!(tumbling.update(&mut s, 2 * h - 1, &row), Value::Int(2));
    // Negative times are bucketed by floor, not truncation.
    let mut s = tumbling.new_state();
    assert_eq!(tumbling.update(&mut s, -1, &row), Value::Int(1));
    assert_eq!(tumbling.update(&mut s, -h, &row), Value::Int(2));
    assert_eq!(tumbling.update(&mut s, 0, &row), Value::Int(1));
}

#[test]
fn sessions() {
    let row = [Value::Int(1)];
    let a = agg("sum(x) over session 30s", Some(ValueType::Int));
    let mut s = a.new_state();
    let sec = 1000;
    assert_eq!(a.update(&mut s, 0, &row), Value::Int(1));
    assert_eq!(a.update(&mut s, 29 * sec, &row), Value::Int(2));
    assert_eq!(a.update(&mut s, 58 * sec, &row), Value::Int(3));
    // A gap of exactly 30 s starts a new session.
    assert_eq!(a.update(&mut s, 88 * sec, &row), Value::Int(1));
    assert_eq!(a.value_at(&s, 100 * sec), Value::Int(1));
    assert_eq!(a.value_at(&s, 118 * sec), Value::Int(0));
    // Out of order within the gap before the session joins it; earlier is alone.
    assert_eq!(a.update(&mut s, 60 * sec, &row), Value::Int(2));
    assert_eq!(a.update(&mut s, 10 * sec, &row), Value::Int(1));
    assert_eq!(a.value_at(&s, 60 * sec), Value::Int(2));
    // A null argument still extends the session.
    assert_eq!(a.update(&mut s, 115 * sec, &[Value::Null]), Value::Int(2));
    assert_eq!(a.update(&mut s, 140 * sec, &row), Value::Int(3));
}

#[test]
fn lateness_keeps_what_late_events_need() {
    let row = [Value::Null];
    let m = MIN as i64;
    // Without lateness, an event a pane behind the newest misses the evicted pane.
    let strict = agg("count() over 5m", None);
    let late = strict.clone().with_lateness(Duration::from_secs(60));
    for (a, want) in [(&strict, 2), (&late, 3)] {
        let mut s = a.new_state();
        a.update(&mut s, 0, &row);
        a.update(&mut s, 4 * m, &row);
        a.update(&mut s, 5 * m + 30_000, &row); // evicts pane 0 (0..25s) for the strict one
        assert_eq!(a.update(&mut s, 4 * m + 59_000, &row), Value::Int(want));
    }
    // Calendar periods: yesterday's bucket is kept for the lateness.
    let day = agg("count() over calendar day", None);
    let day_late = day.clone().with_lateness(Duration::from_secs(3600));
    let d = DAY as i64;
    for (a, want) in [(&day, 1), (&day_late, 2)] {
        let mut s = a.new_state();
        a.update(&mut s, d - 1000, &row);
        a.update(&mut s, d + 1000, &row);
        assert_eq!(a.update(&mut s, d - 500, &row), Value::Int(want));
    }
}

#[test]
fn a_foreign_state_is_reset() {
    let count = agg("count() over 5m", None);
    let sum = agg("sum(x) over 5m", Some(ValueType::Int));
    let daily = agg("count() over calendar day", None);
    let mut s = count.new_state();
    count.update(&mut s, 0, &[Value::Null]);
    assert_eq!(sum.value_at(&s, 0), Value::Int(0));
    assert_eq!(daily.value_at(&s, 0), Value::Int(0));
    assert_eq!(daily.update(&mut s, 0, &[Value::Null]), Value::Int(1));
    assert_eq!(sum.update(&mut s, 0, &[Value::Int(5)]), Value::Int(5));
}

// ---------------------------------------------------------------------------------------
// Calendar periods.

#[test]
fn calendar_days_in_berlin_including_dst_changes() {
    let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    let b = "Europe/Berlin";
    let day = |t| calendar_bounds(t, CalendarPeriod::Day, &tz).unwrap();
    // An ordinary day: 24 h, from local midnight.
    let t = local(b, 2024, 3, 30, 12, 0);
    assert_eq!(
        day(t),
        (local(b, 2024, 3, 30, 0, 0), local(b, 2024, 3, 31, 0, 0))
    );
    assert_eq!(day(t).1 - day(t).0, 24 * HOUR as i64);
    // Spring forward (31 March 2024): 23 h.
    let t = local(b, 2024, 3, 31, 12, 0);
    assert_eq!(day(t).1 - day(t).0, 23 * HOUR as i64);
    // Fall back (27 October 2024): 25 h.
    let t = local(b, 2024, 10, 27, 12, 0);
    assert_eq!(day(t).1 - day(t).0, 25 * HOUR as i64);
    // The boundary is local midnight, 22:00 or 23:00 UTC.
    let midnight = local(b, 2024, 10, 28, 0, 0);
    assert_eq!(midnight % DAY as i64, 23 * HOUR as i64);
    assert_eq!(day(midnight - 1).1, midnight);
    assert_eq!(day(midnight).0, midnight);

    // Through the aggregate: rate over the 23 h day, sums that reset at local midnight.
    let a = agg(
        "sum(x) over calendar day tz Europe/Berlin",
        Some(ValueType::Int),
    );
    let mut s = a.new_state();
    let x = [Value::Int(10)];
    assert_eq!(a.update(&mut s, midnight - 1, &x), Value::Int(10));
    assert_eq!(a.update(&mut s, midnight, &x), Value::Int(10));
    assert_eq!(a.update(&mut s, midnight + 3_600_000, &x), Value::Int(20));
    let r = agg("rate() over calendar day tz Europe/Berlin", None);
    let mut s = r.new_state();
    let v = r.update(&mut s, local(b, 2024, 3, 31, 12, 0), &[Value::Null]);
    assert_eq!(v, Value::Float(1.0 / (23.0 * 3600.0)));
}

#[test]
fn calendar_weeks_start_monday_and_months_vary() {
    let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    let b = "Europe/Berlin";
    let week = |t| calendar_bounds(t, CalendarPeriod::Week, &tz).unwrap();
    let month = |t| calendar_bounds(t, CalendarPeriod::Month, &tz).unwrap();
    // Sunday 31 March 2024 (the DST day) belongs to the week of Monday 25 March.
    let sunday = local(b, 2024, 3, 31, 23, 59);
    assert_eq!(
        week(sunday),
        (local(b, 2024, 3, 25, 0, 0), local(b, 2024, 4, 1, 0, 0))
    );
    assert_eq!(week(sunday).1 - week(sunday).0, (7 * DAY - HOUR) as i64);
    let monday = local(b, 2024, 4, 1, 0, 0);
    assert_eq!(week(monday).0, monday);
    // A week crossing a year.
    let t = local(b, 2025, 1, 1, 8, 0);
    assert_eq!(week(t).0, local(b, 2024, 12, 30, 0, 0));
    // Months: February of a leap year; October with its 25 h day.
    let t = local(b, 2024, 2, 29, 23, 59);
    assert_eq!(
        month(t),
        (local(b, 2024, 2, 1, 0, 0), local(b, 2024, 3, 1, 0, 0))
    );
    assert_eq!(month(t).1 - month(t).0, (29 * DAY) as i64);
    let t = local(b, 2024, 10, 15, 0, 0);
    assert_eq!(month(t).1 - month(t).0, (31 * DAY + HOUR) as i64);
    let a = agg("count() over calendar month tz Europe/Berlin", None);
    let mut s = a.new_state();
    let row = [Value::Null];
    assert_eq!(
        a.update(&mut s, local(b, 2024, 10, 31, 23, 59), &row),
        Value::Int(1)
    );
    assert_eq!(
        a.update(&mut s, local(b, 2024, 11, 1, 0, 0), &row),
        Value::Int(1)
    );
    assert_eq!(
        a.update(&mut s, local(b, 2024, 11, 30, 23, 0), &row),
        Value::Int(2)
    );
    // Outside jiff's range a timestamp is a period of its own, without panicking.
    assert_eq!(calendar_bounds(i64::MAX, CalendarPeriod::Day, &tz), None);
    assert_eq!(a.update(&mut s, i64::MAX, &row), Value::Int(1));
    assert_eq!(a.update(&mut s, i64::MIN, &row), Value::Int(1));
}

#[test]
fn calendar_day_starting_in_a_dst_gap() {
    // America/Santiago skips 00:00-01:00 when DST starts (8 September 2024).
    let tz = jiff::tz::TimeZone::get("America/Santiago").unwrap();
    let t = local("America/Santiago", 2024, 9, 8, 12, 0);
    let (s, e) = calendar_bounds(t, CalendarPeriod::Day, &tz).unwrap();
    assert_eq!(e - s, 23 * HOUR as i64);
    let start = jiff::Timestamp::from_millisecond(s).unwrap().to_zoned(tz);
    assert_eq!((start.hour(), start.minute()), (1, 0));
}

// ---------------------------------------------------------------------------------------
// Sketches.

#[test]
fn quantiles_within_one_percent() {
    let a = agg("p99(x)", Some(ValueType::Float));
    let p50 = agg("p50(x)", Some(ValueType::Float));
    let mut s99 = a.new_state();
    let mut s50 = p50.new_state();
    let mut values = Vec::new();
    let mut x = 0.5f64;
    for i in 0..10_000 {
        x = (x * 3.7 + 0.123).fract();
        let v = (x * 20.0 - 5.0).exp() * if i % 7 == 0 { -1.0 } else { 1.0 };
        values.push(v);
        a.update(&mut s99, i, &[Value::Float(v)]);
        p50.update(&mut s50, i, &[Value::Float(v)]);
    }
    values.sort_by(f64::total_cmp);
    for (agg, state, q) in [(&a, &s99, 0.99), (&p50, &s50, 0.5)] {
        let want = values[(q * (values.len() - 1) as f64).floor() as usize];
        let Value::Float(got) = agg.value_at(state, 0) else {
            panic!()
        };
        assert!(
            (got - want).abs() <= want.abs() * QUANTILE_ACCURACY * 1.000001,
            "q{q}: {got} vs {want}"
        );
    }
}

#[test]
fn distinct_within_three_percent_for_large_counts() {
    for (n, window) in [
        (2_000u64, ""),
        (10_000, " over 5m"),
        (100_000, " over 1h every 5m"),
    ] {
        let a = agg(&format!("distinct(x){window}"), Some(ValueType::Str));
        let mut s = a.new_state();
        let mut last = Value::Null;
        for i in 0..n {
            // Twice each value, spread over 12 panes' worth of time.
            let v = Value::Str(Arc::from(format!("card-{}", i % (n / 2) * 7919).as_str()));
            last = a.update(&mut s, (i * 240_000 / n) as i64, &[v]);
        }
        let Value::Int(est) = last else { panic!() };
        let exact = (n / 2) as f64;
        assert!(
            (est as f64 - exact).abs() <= 0.03 * exact,
            "{n}{window}: {est} vs {exact}"
        );
    }
    // Small counts are exact.
    let a = agg("distinct(x) over 5m", Some(ValueType::Int));
    let mut s = a.new_state();
    let mut v = Value::Null;
    for i in 0..300 {
        v = a.update(&mut s, i * 100, &[Value::Int(i % 100)]);
    }
    assert_eq!(v, Value::Int(100));
}

// ---------------------------------------------------------------------------------------
// Serialized state.

#[test]
fn state_round_trips_through_messagepack() {
    let a = agg("p90(x) over 1m", Some(ValueType::Float));
    let d = agg("distinct(x) over 1m", Some(ValueType::Int));
    let mut sa = a.new_state();
    let mut sd = d.new_state();
    for i in 0..500i64 {
        a.update(&mut sa, i * 300, &[Value::Float((i % 37) as f64 * 1.5)]);
        d.update(&mut sd, i * 300, &[Value::Int(i)]);
    }
    for (agg, state) in [(&a, &sa), (&d, &sd)] {
        let bytes = rmp_serde::to_vec(state).unwrap();
        let back: AggState = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(&back, state);
        let named: AggState =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(state).unwrap()).unwrap();
        assert_eq!(&named, state);
        assert_eq!(agg.value_at(&back, 150_000), agg.value_at(state, 150_000));
    }
    // Distinct states serialise deterministically (no heap addresses).
    let copy: AggState = rmp_serde::from_slice(&rmp_serde::to_vec(&sd).unwrap()).unwrap();
    assert_eq!(
        rmp_serde::to_vec(&copy).unwrap(),
        rmp_serde::to_vec(&sd).unwrap()
    );
    // Wide sums survive too.
    let s = agg("sum(x)", Some(ValueType::Int));
    let mut st = s.new_state();
    s.update(&mut st, 0, &[Value::Int(i64::MAX)]);
    s.update(&mut st, 0, &[Value::Int(i64::MAX)]);
    let back: AggState = rmp_serde::from_slice(&rmp_serde::to_vec(&st).unwrap()).unwrap();
    assert_eq!(back, st);
    assert_eq!(
        s.update(&mut st.clone(), 0, &[Value::Int(i64::MIN)]),
        s.update(&mut back.clone(), 0, &[Value::Int(i64::MIN)])
    );
}

/// The payments pipeline's aggregates: a key's state after 1,000 events stays well under
/// 1 KiB, serialized (either rmp-serde encoding) and resident.
#[test]
fn payments_state_is_small() {
    let aggs = [
        agg("count() over 5m", None),
        Aggregate::compile(
            &parse_spec("sum(amount) over calendar day", "Europe/Berlin").unwrap(),
            Some((0, ValueType::Int)),
        )
        .unwrap(),
        agg("avg(amount) over 30d", Some(ValueType::Int)),
        agg("prev(location)", Some(ValueType::Str)),
    ];
    let aggs: Vec<Aggregate> = aggs
        .into_iter()
        .map(|a| a.with_lateness(Duration::from_secs(60)))
        .collect();
    let mut states: Vec<AggState> = aggs.iter().map(Aggregate::new_state).collect();
    let cities = ["Berlin", "Hamburg", "München", "Köln"];
    let mut t = 1_717_000_000_000i64;
    let mut x = 12_345u64;
    for i in 0..1000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // A busy card over ~7 weeks: bursts of events seconds apart, pauses of up to 2 days,
        // so that every pane of the 30-day average is in use.
        t += if i % 20 == 0 {
            (x >> 24) as i64 % 172_800_000
        } else {
            (x >> 50) as i64 % 30_000
        };
        let amount = Value::Int((x >> 33) as i64 % 500_000);
        let city = Value::Str(Arc::from(cities[(x >> 60) as usize % 4]));
        for (k, (a, s)) in aggs.iter().zip(states.iter_mut()).enumerate() {
            let row = if k == 3 {
                [city.clone()]
            } else {
                [amount.clone()]
            };
            a.update(s, t, &row);
        }
    }
    let mut total = (0, 0, 0);
    for (a, s) in aggs.iter().zip(&states) {
        let compact = rmp_serde::to_vec(s).unwrap().len();
        let named = rmp_serde::to_vec_named(s).unwrap().len();
        let resident = s.resident_bytes();
        println!(
            "{:50} {compact:4} B compact, {named:4} B named, {resident:4} B resident",
            a.spec().to_string()
        );
        total = (total.0 + compact, total.1 + named, total.2 + resident);
    }
    println!(
        "total: {total:?}, over {} days",
        (t - 1_717_000_000_000) / 86_400_000
    );
    assert!(
        total.0 < 1024 && total.1 < 1024 && total.2 < 1024,
        "{total:?}"
    );
}

#[test]
fn plans_compile_for_every_window() {
    for text in [
        "count()",
        "count() over 5m",
        "count() over tumbling 1h",
        "count() over 1h every 5m",
        "count() over session 30m",
        "count() over calendar week tz Asia/Kolkata",
    ] {
        assert!(Plan::compile(&spec(text).window).is_ok(), "{text}");
    }
}

/// Inline sizes: a state is 64 bytes plus its heap, a count pane 16 and an avg pane 24.
#[test]
fn inline_sizes_stay_small() {
    use super::state::*;
    use std::mem::size_of;
    assert!(size_of::<AggState>() <= 64, "{}", size_of::<AggState>());
    assert_eq!(size_of::<Pane<u64>>(), 16);
    assert_eq!(size_of::<Pane<FloatAvg>>(), 24);
    assert_eq!(size_of::<Bucket<Wide>>(), 32);
}
