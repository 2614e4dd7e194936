//! Aggregates against a brute-force reference over the same window definitions.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::value::{Value, ValueType};

/// 2024-03-29 00:00 UTC: streams at hour scale cross the DST change in Europe/Berlin.
const T0: i64 = 1_711_670_400_000;

/// A window under test, with the time scale of its streams.
struct Case {
    window: &'static str,
    /// Largest step between consecutive base times.
    step: i64,
    /// Largest out-of-order jitter (also the lateness the aggregate is given); some exceed
    /// the window so that late events reach every pane.
    jitter: i64,
    /// Times are multiples of this, so that pane, period and gap boundaries are hit exactly.
    grain: i64,
}

const CASES: &[Case] = &[
    Case {
        window: "",
        step: 10_000,
        jitter: 30_000,
        grain: 1,
    },
    Case {
        window: " over 5m",
        step: 40_000,
        jitter: 400_000,
        grain: 5_000,
    },
    Case {
        window: " over 5m",
        step: 40_000,
        jitter: 90_000,
        grain: 1,
    },
    Case {
        window: " over 1001ms",
        step: 150,
        jitter: 1_500,
        grain: 1,
    },
    Case {
        window: " over 7ms",
        step: 3,
        jitter: 12,
        grain: 1,
    },
    Case {
        window: " over tumbling 1m",
        step: 10_000,
        jitter: 90_000,
        grain: 1_000,
    },
    Case {
        window: " over 1h every 10m",
        step: 480_000,
        jitter: 4_800_000,
        grain: 60_000,
    },
    Case {
        window: " over calendar day tz Europe/Berlin",
        step: 7_200_000,
        jitter: 10_800_000,
        grain: 1_800_000,
    },
    Case {
        window: " over calendar day tz Europe/Berlin",
        step: 7_200_000,
        jitter: 100_000_000,
        grain: 1,
    },
    Case {
        window: " over calendar week tz Europe/Berlin",
        step: 43_200_000,
        jitter: 86_400_000,
        grain: 3_600_000,
    },
    Case {
        window: " over calendar month tz Europe/Berlin",
        step: 172_800_000,
        jitter: 259_200_000,
        grain: 3_600_000,
    },
    Case {
        window: " over calendar day tz America/New_York",
        step: 7_200_000,
        jitter: 10_800_000,
        grain: 3_600_000,
    },
    Case {
        window: " over session 30s",
        step: 45_000,
        jitter: 0,
        grain: 5_000,
    },
    Case {
        window: " over session 1500ms",
        step: 2_000,
        jitter: 0,
        grain: 1,
    },
];

/// The functions under test, with their argument's type.
const FNS: &[(&str, Option<ValueType>)] = &[
    ("count()", None),
    ("rate()", None),
    ("sum(x)", Some(ValueType::Int)),
    ("sum(x)", Some(ValueType::Float)),
    ("avg(x)", Some(ValueType::Int)),
    ("avg(x)", Some(ValueType::Float)),
    ("min(x)", Some(ValueType::Int)),
    ("max(x)", Some(ValueType::Float)),
    ("min(x)", Some(ValueType::Str)),
    ("stddev(x)", Some(ValueType::Float)),
    ("stddev(x)", Some(ValueType::Int)),
    ("last(x)", Some(ValueType::Int)),
    ("prev(x)", Some(ValueType::Int)),
    ("distinct(x)", Some(ValueType::Int)),
    ("p50(x)", Some(ValueType::Float)),
    ("p90(x)", Some(ValueType::Float)),
    ("p99(x)", Some(ValueType::Float)),
];

/// The field's value for a generated number (`None` = null).
fn value_of(n: Option<i64>, ty: Option<ValueType>) -> Value {
    match (n, ty) {
        (_, None) | (None, _) => Value::Null,
        (Some(n), Some(ValueType::Float)) => Value::Float(n as f64 * 1.25 + 0.01),
        (Some(n), Some(ValueType::Str)) => Value::Str(Arc::from(format!("s{n}").as_str())),
        (Some(n), Some(_)) => Value::Int(n),
    }
}

/// The membership rule of a window: does an event at `tj` fall in the window of one at `t`?
enum RefWindow {
    All,
    Panes(i64, i64),
    Calendar(CalendarPeriod, TimeZone),
    Session(i64),
}

fn local_period(t: i64, period: CalendarPeriod, tz: &TimeZone) -> jiff::civil::Date {
    let date = Timestamp::from_millisecond(t)
        .unwrap()
        .to_zoned(tz.clone())
        .date();
    match period {
        CalendarPeriod::Day => date,
        CalendarPeriod::Week => date
            .checked_sub(jiff::Span::new().days(i64::from(date.weekday().to_monday_zero_offset())))
            .unwrap(),
        CalendarPeriod::Month => date.first_of_month(),
    }
}

fn period_len_ms(t: i64, period: CalendarPeriod, tz: &TimeZone) -> i64 {
    let start = local_period(t, period, tz);
    let end = match period {
        CalendarPeriod::Day => start.tomorrow().unwrap(),
        CalendarPeriod::Week => start.checked_add(jiff::Span::new().days(7)).unwrap(),
        CalendarPeriod::Month => start.checked_add(jiff::Span::new().months(1)).unwrap(),
    };
    let at = |d: jiff::civil::Date| {
        d.to_zoned(tz.clone())
            .unwrap()
            .start_of_day()
            .unwrap()
            .timestamp()
            .as_millisecond()
    };
    at(end) - at(start)
}

fn ref_window(spec: &AggregateSpec) -> RefWindow {
    let ms = |d: &Duration| d.as_millis() as i64;
    match &spec.window {
        Window::Unbounded => RefWindow::All,
        Window::Sliding(d) => {
            let (p, n) = sliding_panes(*d);
            RefWindow::Panes(p, n)
        }
        Window::Tumbling(d) => RefWindow::Panes(ms(d), 1),
        Window::Hopping { length, hop } => RefWindow::Panes(ms(hop), ms(length) / ms(hop)),
        Window::Session(g) => RefWindow::Session(ms(g)),
        Window::Calendar { period, tz } => RefWindow::Calendar(*period, TimeZone::get(tz).unwrap()),
    }
}

/// Which events (by index, up to `i`) fall in the window of event `i`, brute force.
fn members(win: &RefWindow, keys: &[i64], events: &[(i64, Value)], i: usize) -> Vec<usize> {
    match win {
        RefWindow::All => (0..=i).collect(),
        RefWindow::Panes(_, n) => (0..=i)
            .filter(|&j| keys[j] <= keys[i] && keys[j] > keys[i] - n)
            .collect(),
        RefWindow::Calendar(..) => (0..=i).filter(|&j| keys[j] == keys[i]).collect(),
        RefWindow::Session(g) => {
            let mut start = 0;
            for j in 1..=i {
                if events[j].0 - events[j - 1].0 >= *g {
                    start = j;
                }
            }
            (start..=i).collect()
        }
    }
}

/// Per event: its pane, or its local period as `yyyymmdd`.
fn window_keys(win: &RefWindow, events: &[(i64, Value)]) -> Vec<i64> {
    events
        .iter()
        .map(|(t, _)| match win {
            RefWindow::Panes(p, _) => t.div_euclid(*p),
            RefWindow::Calendar(period, tz) => {
                let d = local_period(*t, *period, tz);
                i64::from(d.year()) * 10_000 + i64::from(d.month()) * 100 + i64::from(d.day())
            }
            _ => 0,
        })
        .collect()
}

/// The reference value of event `i` of `events` (applied in order), computed from scratch.
fn reference(
    spec: &AggregateSpec,
    win: &RefWindow,
    keys: &[i64],
    ty: Option<ValueType>,
    events: &[(i64, Value)],
    i: usize,
) -> Value {
    let t = events[i].0;
    let members = members(win, keys, events, i);
    let xs: Vec<(i64, &Value)> = members
        .iter()
        .map(|&j| (events[j].0, &events[j].1))
        .filter(|(_, v)| !v.is_null())
        .collect();
    let floats: Vec<f64> = xs.iter().filter_map(|(_, v)| v.as_f64()).collect();
    let n = floats.len() as f64;
    match spec.func {
        AggFn::Count => Value::Int(members.len() as i64),
        AggFn::Rate => {
            let span = match win {
                RefWindow::Panes(p, n) => p * n,
                RefWindow::Calendar(period, tz) => period_len_ms(t, *period, tz),
                _ => unreachable!(),
            };
            Value::Float(members.len() as f64 / (span as f64 / 1000.0))
        }
        AggFn::Sum if ty == Some(ValueType::Int) => {
            let s: i128 = xs
                .iter()
                .map(|(_, v)| match v {
                    Value::Int(i) => i128::from(*i),
                    _ => 0,
                })
                .sum();
            i64::try_from(s).map_or(Value::Null, Value::Int)
        }
        AggFn::Sum => Value::Float(floats.iter().sum()),
        AggFn::Avg if floats.is_empty() => Value::Null,
        AggFn::Avg => Value::Float(floats.iter().sum::<f64>() / n),
        AggFn::Stddev if floats.is_empty() => Value::Null,
        AggFn::Stddev => {
            let mean = floats.iter().sum::<f64>() / n;
            Value::Float((floats.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt())
        }
        AggFn::Min | AggFn::Max => {
            let mut best: Option<&Value> = None;
            for (_, v) in &xs {
                let better = match best {
                    None => true,
                    Some(b) => {
                        let ord = match (v, b) {
                            (Value::Str(a), Value::Str(b)) => a.cmp(b),
                            (Value::Int(a), Value::Int(b)) => a.cmp(b),
                            _ => v.as_f64().unwrap().total_cmp(&b.as_f64().unwrap()),
                        };
                        if spec.func == AggFn::Min {
                            ord.is_lt()
                        } else {
                            ord.is_gt()
                        }
                    }
                };
                if better {
                    best = Some(v);
                }
            }
            best.cloned().unwrap_or(Value::Null)
        }
        AggFn::Last => {
            let mut best: Option<(i64, &Value)> = None;
            for (tj, v) in &xs {
                if best.is_none_or(|(bt, _)| *tj >= bt) {
                    best = Some((*tj, v));
                }
            }
            best.map_or(Value::Null, |(_, v)| v.clone())
        }
        AggFn::Prev => events[..i]
            .iter()
            .rev()
            .find(|(_, v)| !v.is_null())
            .map_or(Value::Null, |(_, v)| v.clone()),
        AggFn::Distinct => {
            let set: HashSet<String> = xs.iter().map(|(_, v)| format!("{v:?}")).collect();
            Value::Int(set.len() as i64)
        }
        AggFn::P50 | AggFn::P90 | AggFn::P99 => {
            // Compared by `quantile_ok`; here the sorted values' median stands in.
            if floats.is_empty() {
                Value::Null
            } else {
                Value::Float(0.0)
            }
        }
    }
}

/// Whether a quantile estimate is within the sketch's accuracy of the true value at its
/// rank, give or take one rank.
fn quantile_ok(got: f64, floats: &mut [f64], q: f64) -> bool {
    floats.sort_by(f64::total_cmp);
    let n = floats.len();
    let r = (q * (n - 1) as f64).floor() as usize;
    let lo = floats[r.saturating_sub(1)];
    let hi = floats[(r + 1).min(n - 1)];
    let slack = |x: f64| x.abs() * QUANTILE_ACCURACY * 1.000001 + 1e-9;
    got >= lo - slack(lo) && got <= hi + slack(hi)
}

fn close(got: &Value, want: &Value, tolerance: f64) -> bool {
    match (got, want) {
        (Value::Float(g), Value::Float(w)) => (g - w).abs() <= tolerance,
        _ => got == want,
    }
}

/// Runs every function over `case`'s window on `events` and compares each value.
fn check_all(case: &Case, events: &[(i64, Option<i64>)]) -> Result<(), TestCaseError> {
    for (f, ty) in FNS {
        let text = format!("{f}{}", case.window);
        let spec = match parse_spec(&text, "UTC") {
            Ok(s) => s,
            // rate() and prev() don't take every window.
            Err(_) => continue,
        };
        let agg = Aggregate::compile(&spec, ty.map(|t| (0, t)))
            .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?
            .with_lateness(Duration::from_millis(case.jitter as u64));
        let evs: Vec<(i64, Value)> = events
            .iter()
            .map(|(t, n)| (*t, value_of(*n, *ty)))
            .collect();
        let win = ref_window(&spec);
        let keys = window_keys(&win, &evs);
        let mut state = agg.new_state();
        for i in 0..evs.len() {
            let got = agg.update(&mut state, evs[i].0, std::slice::from_ref(&evs[i].1));
            let want = reference(&spec, &win, &keys, *ty, &evs, i);
            // Scale of the values involved, for float tolerances.
            let abs_sum: f64 = evs[..=i]
                .iter()
                .filter_map(|(_, v)| v.as_f64())
                .map(f64::abs)
                .sum();
            let max_abs: f64 = evs[..=i]
                .iter()
                .filter_map(|(_, v)| v.as_f64())
                .map(f64::abs)
                .fold(1.0, f64::max);
            let ok = match spec.func {
                AggFn::Sum | AggFn::Avg => close(&got, &want, 1e-9 * abs_sum.max(1.0)),
                AggFn::Stddev => close(&got, &want, 1e-6 * max_abs),
                AggFn::Rate => close(&got, &want, 1e-12),
                AggFn::P50 | AggFn::P90 | AggFn::P99 => match (&got, &want) {
                    (Value::Null, Value::Null) => true,
                    (Value::Float(g), Value::Float(_)) => {
                        let mut window_values: Vec<f64> = members(&win, &keys, &evs, i)
                            .into_iter()
                            .filter_map(|j| evs[j].1.as_f64())
                            .collect();
                        quantile_ok(*g, &mut window_values, spec.func.quantile().unwrap())
                    }
                    _ => false,
                },
                AggFn::Distinct => match (&got, &want) {
                    (Value::Int(g), Value::Int(w)) => {
                        (g - w).abs() as f64 <= 1.0 + 0.02 * *w as f64
                    }
                    _ => false,
                },
                _ => got == want,
            };
            prop_assert!(
                ok,
                "{}: event {} at {} (t0+{}): got {:?}, want {:?}\nevents: {:?}",
                text,
                i,
                evs[i].0,
                evs[i].0 - T0,
                got,
                want,
                evs.iter()
                    .map(|(t, v)| (t - T0, v.clone()))
                    .collect::<Vec<_>>()
            );
            // value_at agrees with what an update at the same time saw, less the event.
            if spec.func == AggFn::Count {
                let Value::Int(n) = got else { unreachable!() };
                let at = agg.value_at(&state, evs[i].0);
                prop_assert_eq!(at, Value::Int(n), "value_at after {}", text);
            }
        }
        // The state survives a MessagePack round trip unchanged.
        let bytes = rmp_serde::to_vec(&state).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: AggState =
            rmp_serde::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &state, "{}", text);
    }
    Ok(())
}

/// Streams for one key: base times non-decreasing by up to `step`, some events shifted back
/// by up to `jitter`; values small ints or null.
fn stream(case_idx: usize) -> impl Strategy<Value = Vec<(i64, Option<i64>)>> {
    let case = &CASES[case_idx];
    let (step, jitter, grain) = (case.step, case.jitter, case.grain);
    prop::collection::vec(
        (
            0..=step,
            0..=jitter,
            prop::bool::weighted(0.25),
            prop::option::weighted(0.85, -40i64..60),
        ),
        1..120,
    )
    .prop_map(move |raw| {
        let mut base = T0;
        raw.into_iter()
            .map(|(s, j, late, v)| {
                // A few repeated times exercise ties.
                base += if s % 7 == 0 { 0 } else { s / grain * grain };
                let t = if late { base - j / grain * grain } else { base };
                (t, v)
            })
            .collect()
    })
}

fn any_case() -> impl Strategy<Value = (usize, Vec<(i64, Option<i64>)>)> {
    (0..CASES.len()).prop_flat_map(|i| (Just(i), stream(i)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn every_window_and_function_matches_brute_force((case, events) in any_case()) {
        check_all(&CASES[case], &events)?;
    }

    /// States serialised midway and restored give the same future values.
    #[test]
    fn restored_states_continue_identically(
        (case, events) in any_case(),
        cut in 0usize..120,
        f in 0..FNS.len(),
    ) {
        let (name, ty) = FNS[f];
        let Ok(spec) = parse_spec(&format!("{name}{}", CASES[case].window), "UTC") else {
            return Ok(());
        };
        let agg = Aggregate::compile(&spec, ty.map(|t| (0, t))).unwrap();
        let mut a = agg.new_state();
        let cut = cut.min(events.len());
        for (t, n) in &events[..cut] {
            agg.update(&mut a, *t, &[value_of(*n, ty)]);
        }
        let mut b: AggState = rmp_serde::from_slice(&rmp_serde::to_vec(&a).unwrap()).unwrap();
        prop_assert_eq!(&a, &b);
        for (t, n) in &events[cut..] {
            let row = [value_of(*n, ty)];
            prop_assert_eq!(agg.update(&mut a, *t, &row), agg.update(&mut b, *t, &row));
            prop_assert_eq!(agg.value_at(&a, *t + 1), agg.value_at(&b, *t + 1));
        }
    }

    /// Events later than the lateness never panic and never count more than the truth.
    #[test]
    fn late_events_undercount_at_worst((case, events) in any_case()) {
        let c = &CASES[case];
        let Ok(spec) = parse_spec(&format!("count(){}", c.window), "UTC") else {
            return Ok(());
        };
        let agg = Aggregate::compile(&spec, None).unwrap();
        let evs: Vec<(i64, Value)> = events.iter().map(|(t, _)| (*t, Value::Null)).collect();
        let win = ref_window(&spec);
        let keys = window_keys(&win, &evs);
        let mut s = agg.new_state();
        for i in 0..evs.len() {
            let got = agg.update(&mut s, evs[i].0, &[Value::Null]);
            let want = reference(&spec, &win, &keys, None, &evs, i);
            let (Value::Int(g), Value::Int(w)) = (&got, &want) else {
                return Err(TestCaseError::fail(format!("{got:?} {want:?}")));
            };
            prop_assert!(*g >= 1 && g <= w, "{} vs {}", g, w);
        }
    }

    /// Quantiles of values spread over many magnitudes and both signs.
    #[test]
    fn quantiles_over_wide_ranges(
        values in prop::collection::vec(
            prop_oneof![
                (-30.0f64..30.0).prop_map(f64::exp),
                (-30.0f64..30.0).prop_map(|e| -e.exp()),
                Just(0.0),
                -1e6f64..1e6,
            ],
            1..400,
        ),
    ) {
        for q in ["p50", "p90", "p99"] {
            let spec = parse_spec(&format!("{q}(x) over 1h every 1m"), "UTC").unwrap();
            let agg = Aggregate::compile(&spec, Some((0, ValueType::Float))).unwrap();
            let mut s = agg.new_state();
            let mut got = Value::Null;
            for (i, v) in values.iter().enumerate() {
                got = agg.update(&mut s, T0 + i as i64 * 1000, &[Value::Float(*v)]);
            }
            let Value::Float(g) = got else { return Err(TestCaseError::fail("null")) };
            let mut vs = values.clone();
            prop_assert!(quantile_ok(g, &mut vs, spec.func.quantile().unwrap()), "{} {} {:?}", q, g, vs);
        }
    }

    /// The canonical form parses back to the same spec.
    #[test]
    fn display_parses_back(spec in any_spec()) {
        let text = spec.to_string();
        let back = parse_spec(&text, "Asia/Tokyo");
        prop_assert_eq!(back.as_ref(), Ok(&spec), "{}", text);
    }
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1u64..100_000).prop_map(Duration::from_millis),
        (1u64..10_000).prop_map(|s| Duration::from_secs(s * 60)),
        (1u64..=MAX_DURATION_MS).prop_map(Duration::from_millis),
    ]
}

fn any_spec() -> impl Strategy<Value = AggregateSpec> {
    let window = prop_oneof![
        Just(Window::Unbounded),
        any_duration().prop_map(Window::Sliding),
        any_duration().prop_map(Window::Tumbling),
        any_duration().prop_map(Window::Session),
        ((1u64..100_000), (1u64..=MAX_HOPS)).prop_map(|(hop, k)| Window::Hopping {
            length: Duration::from_millis(hop * k),
            hop: Duration::from_millis(hop),
        }),
        (
            prop::sample::select(CalendarPeriod::ALL.to_vec()),
            prop::sample::select(vec![
                "UTC",
                "Europe/Berlin",
                "America/New_York",
                "Asia/Kolkata"
            ]),
        )
            .prop_map(|(period, tz)| Window::Calendar {
                period,
                tz: tz.to_string(),
            }),
    ];
    (
        prop::sample::select(AggFn::ALL.to_vec()),
        "[a-z_][a-zA-Z0-9_]{0,12}",
        window,
    )
        .prop_filter_map("valid combination", |(func, field, window)| {
            let ok = match func {
                AggFn::Prev => window == Window::Unbounded,
                AggFn::Rate => !matches!(window, Window::Unbounded | Window::Session(_)),
                _ => true,
            };
            ok.then(|| AggregateSpec {
                func,
                field: func.takes_field().then_some(field),
                window,
            })
        })
}
