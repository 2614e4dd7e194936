//! Keyed windowed aggregates: `tx_5m: count() over 5m`, `spent_today: sum(amount) over
//! calendar day tz Europe/Berlin`, `avg_amount_30d: avg(amount) over 30d`,
//! `last_loc: prev(location)`.
//!
//! This module is pure: [`parse_spec`] reads a spec, [`Aggregate::compile`] checks it against
//! its field, and an [`AggState`] (one per key and aggregate) is updated with each of the
//! key's events by [`Aggregate::update`], which returns the aggregate's value "at that
//! moment", the event included. The window stage owns the states, their checkpoints and
//! their eviction.
//!
//! # Syntax
//!
//! `<fn>(<field>?) [over <window>]`, lowercase keywords, whitespace between tokens free.
//!
//! - Functions: `count()`, `sum(x)`, `avg(x)`, `min(x)`, `max(x)`, `stddev(x)` (population),
//!   `last(x)`, `prev(x)`, `distinct(x)`, `p50(x)`, `p90(x)`, `p99(x)`, `rate()`.
//! - Windows: none (every event since the key was first seen), `over 5m` (sliding),
//!   `over tumbling 1h`, `over 1h every 5m` (hopping; the length a multiple of the hop),
//!   `over session 30m`, `over calendar day|week|month [tz <IANA name>]`.
//! - Durations: `<n><unit>` groups, units `ms s m h d w` (`1h30m`, `30d`), at most 36500d.
//!   A hopping window has at most 10,000 hops.
//!
//! # Semantics
//!
//! - **Event time, per key.** Windows are placed by the event's time `t_ms`; events may arrive
//!   out of order. The value for an event at `t` covers every event already applied whose
//!   time falls in `t`'s window — for panes and periods, the window ending with `t`'s pane or
//!   period, even if later ones exist.
//! - **Sliding `over D`** has a resolution of `P = D / 12` (rounded down to whole ms, at least
//!   1 ms; then `ceil(D / P)` panes): the window of an event at `t` is the `N` panes ending
//!   with `t`'s pane, `[pane_start(t) − (N−1)·P, pane_start(t) + P)`. So `over 5m` counts the
//!   last 4m35s to 5m, in 25 s steps. **Hopping `over D every S`** is the same with `P = S`,
//!   `N = D / S`. **Tumbling `over tumbling D`** is `[floor(t/D)·D, +D)`, epoch-aligned (UTC).
//! - **Calendar** periods are local days, weeks (Monday to Sunday) and months in the time zone,
//!   starting at the first instant of their first day (so a DST day is 23 h or 25 h long).
//! - **Sessions** (`over session G`): for in-order events, a maximal run of events less than
//!   `G` apart (a gap of exactly `G` starts a new session). An out-of-order event joins the
//!   current session if it is within it or less than `G` before its first event (which then
//!   moves back); an event `G` or more before the current session belongs to an older,
//!   forgotten session and is counted in its own value only. Events with a null argument
//!   still extend and split sessions, so every aggregate over the same session window sees
//!   the same sessions.
//! - **Lateness.** By default the state keeps exactly what the key's newest window needs: an
//!   out-of-order event is exact if its whole window is still held. Call
//!   [`Aggregate::with_lateness`] with the stage's allowed lateness to keep the panes and
//!   periods that events up to that far behind the key's newest event need (`ceil(L/P)`
//!   extra panes at most). An event later than that gets a value over what is still held
//!   plus itself, and is not kept. Time only moves forward: one event far in the future
//!   moves the key's windows there and drops what it held (the stage should reject absurd
//!   timestamps). Times outside jiff's range (years -9999..=9999) are a calendar period of
//!   their own.
//! - **Nulls.** A null argument is skipped (`count()` counts events regardless). Over a
//!   window with no non-null argument: `count`, `distinct` and `rate` are 0, `sum` is 0 (in
//!   the field's type), every other function is null. Float arguments that are NaN or ±inf are
//!   skipped like nulls.
//! - **Never panics.** An int `sum` outside i64 is null (the sum is kept exactly in 128 bits,
//!   so it comes back when the window drops the big values); a float result that is NaN or
//!   ±inf is null.
//! - `prev(x)` is `x` of the key's latest earlier event in arrival order with a non-null `x`
//!   (null for the first); it takes no window. `last(x)` is `x` of the window's event with
//!   the latest event time (ties: the later applied).
//! - `avg(x)` keeps a count and a float sum (int arguments are summed exactly while the sum
//!   stays below 2^53; the result is a float anyway).
//! - `rate()` is events per second over the window's length: `N·P` for panes (exactly `D`
//!   when `D` splits into 12 whole-ms panes), the period's actual length for calendar windows.
//! - `distinct(x)` is exact up to 128 distinct values per pane or window (the sketch keeps the
//!   hashes) and a HyperLogLog with about 1.6% standard error above that.
//! - `p50/p90/p99(x)` estimate the value at rank `floor(q·(n−1))` of the window's values
//!   within 1% relative error (a sparse DDSketch).
//! - **Cost.** Per event: O(1) when the event falls in the newest pane or period (running
//!   total), O(panes) merges otherwise and when a new pane starts. Memory: at most
//!   `N + ceil(lateness / P)` non-empty panes (sliding: N = 12), the periods within the
//!   lateness, or one session. A count pane is 16 bytes, a sum or avg pane 24, a state 64
//!   bytes inline; `distinct` panes hold up to 128 four-byte hashes, then a 3 KiB
//!   HyperLogLog; quantile panes hold 8 bytes per occupied 1% bucket.
//! - A state that does not belong to the aggregate (e.g. restored from a checkpoint taken
//!   before the spec changed) is reset on its next update.

mod spec;
mod state;
mod window;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::value::{Value, ValueType};

pub use spec::{
    format_duration, parse_spec, AggFn, AggregateSpec, CalendarPeriod, Window, MAX_DURATION_MS,
    MAX_HOPS,
};
pub use state::QUANTILE_ACCURACY;
pub use window::{sliding_panes, SLIDING_PANES};

use state::{Ctx, Distinct, Extreme, FloatAvg, Last, Moments, Out, Quantiles, Store, Wide};
use window::Plan;

/// A spec that does not parse: where (1-based column, in characters) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct SpecError {
    pub column: usize,
    pub message: String,
}

/// Which accumulator an aggregate keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Count,
    IntSum,
    FloatSum,
    Avg,
    Moments,
    Min,
    Max,
    Last,
    Prev,
    Distinct,
    Quantiles,
}

/// An aggregate compiled against its field: immutable, shared by all keys.
#[derive(Clone, Debug)]
pub struct Aggregate {
    spec: AggregateSpec,
    field: Option<usize>,
    kind: Kind,
    plan: Plan,
    out: Out,
    lateness_ms: i64,
}

/// One key's state for one aggregate. Small for the cheap functions (a count, an exact sum,
/// a running mean per pane); serialisable (MessagePack via rmp-serde round-trips exactly).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AggState(Repr);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Repr {
    #[serde(rename = "n")]
    Count(Store<u64>),
    #[serde(rename = "si")]
    IntSum(Store<Wide>),
    #[serde(rename = "sf")]
    FloatSum(Store<f64>),
    #[serde(rename = "a")]
    Avg(Store<FloatAvg>),
    #[serde(rename = "sd")]
    Moments(Store<Moments>),
    #[serde(rename = "lo")]
    Min(Store<Extreme<false>>),
    #[serde(rename = "hi")]
    Max(Store<Extreme<true>>),
    #[serde(rename = "la")]
    Last(Store<Last>),
    /// The argument of the key's latest event with a non-null one.
    #[serde(rename = "pv")]
    Prev(Value),
    #[serde(rename = "d")]
    Distinct(Store<Distinct>),
    #[serde(rename = "q")]
    Quantiles(Store<Quantiles>),
}

/// Runs `$body` with `$s` bound to the state's store, whatever its accumulator type;
/// `$prev` for `prev`.
macro_rules! with_store {
    ($repr:expr, $s:ident => $body:expr, $p:ident => $prev:expr) => {
        match $repr {
            Repr::Count($s) => $body,
            Repr::IntSum($s) => $body,
            Repr::FloatSum($s) => $body,
            Repr::Avg($s) => $body,
            Repr::Moments($s) => $body,
            Repr::Min($s) => $body,
            Repr::Max($s) => $body,
            Repr::Last($s) => $body,
            Repr::Distinct($s) => $body,
            Repr::Quantiles($s) => $body,
            Repr::Prev($p) => $prev,
        }
    };
}

impl Repr {
    fn kind(&self) -> Kind {
        match self {
            Repr::Count(_) => Kind::Count,
            Repr::IntSum(_) => Kind::IntSum,
            Repr::FloatSum(_) => Kind::FloatSum,
            Repr::Avg(_) => Kind::Avg,
            Repr::Moments(_) => Kind::Moments,
            Repr::Min(_) => Kind::Min,
            Repr::Max(_) => Kind::Max,
            Repr::Last(_) => Kind::Last,
            Repr::Prev(_) => Kind::Prev,
            Repr::Distinct(_) => Kind::Distinct,
            Repr::Quantiles(_) => Kind::Quantiles,
        }
    }

    fn fits(&self, plan: &Plan) -> bool {
        with_store!(self, s => s.fits(plan), _p => true)
    }
}

impl AggState {
    /// Roughly how many bytes the state occupies in memory (inline plus heap).
    pub fn resident_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + with_store!(&self.0, s => s.heap_bytes(), p => match p {
                Value::Str(s) => s.len() + 16,
                _ => 0,
            })
    }
}

impl Aggregate {
    /// Checks `spec` against its argument field: `field` is the field's schema index and type,
    /// `None` for `count()` and `rate()`. Errors are sentences for the pipeline's author.
    pub fn compile(
        spec: &AggregateSpec,
        field: Option<(usize, ValueType)>,
    ) -> Result<Aggregate, String> {
        let name = spec.func.name();
        let field_name = spec.field.as_deref().unwrap_or("?");
        let (index, ty) = match (spec.func.takes_field(), field) {
            (false, None) => (None, ValueType::Null),
            (false, Some(_)) => return Err(format!("{name} takes no field: write `{name}()`")),
            (true, None) => return Err(format!("{name} needs a field, e.g. `{name}(amount)`")),
            (true, Some((i, ty))) => (Some(i), ty),
        };
        let numeric = || {
            if ty.is_numeric() {
                Ok(())
            } else {
                Err(format!(
                    "{name} needs a numeric field, `{field_name}` is {ty}"
                ))
            }
        };
        let kind = match spec.func {
            AggFn::Count | AggFn::Rate => Kind::Count,
            AggFn::Sum => {
                numeric()?;
                if ty == ValueType::Int {
                    Kind::IntSum
                } else {
                    Kind::FloatSum
                }
            }
            AggFn::Avg => {
                numeric()?;
                Kind::Avg
            }
            AggFn::Stddev => {
                numeric()?;
                Kind::Moments
            }
            AggFn::P50 | AggFn::P90 | AggFn::P99 => {
                numeric()?;
                Kind::Quantiles
            }
            AggFn::Min | AggFn::Max => {
                if !matches!(
                    ty,
                    ValueType::Int | ValueType::Float | ValueType::Timestamp | ValueType::Str
                ) {
                    return Err(format!(
                        "{name} needs a numeric, timestamp or string field, `{field_name}` is {ty}"
                    ));
                }
                if spec.func == AggFn::Min {
                    Kind::Min
                } else {
                    Kind::Max
                }
            }
            AggFn::Last => Kind::Last,
            AggFn::Prev => Kind::Prev,
            AggFn::Distinct => Kind::Distinct,
        };
        if spec.func == AggFn::Prev && spec.window != Window::Unbounded {
            return Err("prev takes no window".into());
        }
        if spec.func == AggFn::Rate && matches!(spec.window, Window::Unbounded | Window::Session(_))
        {
            return Err(
                "rate needs a window of fixed length (sliding, tumbling, hopping or calendar)"
                    .into(),
            );
        }
        let plan = Plan::compile(&spec.window)?;
        Ok(Aggregate {
            spec: spec.clone(),
            field: index,
            kind,
            plan,
            out: Out {
                func: spec.func,
                field_type: ty,
            },
            lateness_ms: 0,
        })
    }

    /// Keeps enough state that events up to `lateness` behind the key's newest event are
    /// counted exactly (pass the stage's allowed lateness). The default is zero: the state
    /// holds only what the key's newest window needs.
    pub fn with_lateness(mut self, lateness: Duration) -> Aggregate {
        self.lateness_ms = i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// The spec this aggregate was compiled from.
    pub fn spec(&self) -> &AggregateSpec {
        &self.spec
    }

    /// The type of the values [`update`](Self::update) and [`value_at`](Self::value_at)
    /// return (besides null).
    pub fn result_type(&self) -> ValueType {
        match self.spec.func {
            AggFn::Count | AggFn::Distinct => ValueType::Int,
            AggFn::Sum => {
                if self.out.field_type == ValueType::Int {
                    ValueType::Int
                } else {
                    ValueType::Float
                }
            }
            AggFn::Avg | AggFn::Stddev | AggFn::P50 | AggFn::P90 | AggFn::P99 | AggFn::Rate => {
                ValueType::Float
            }
            AggFn::Min | AggFn::Max | AggFn::Last | AggFn::Prev => self.out.field_type,
        }
    }

    /// A key's state before its first event.
    pub fn new_state(&self) -> AggState {
        let p = &self.plan;
        AggState(match self.kind {
            Kind::Count => Repr::Count(Store::new(p)),
            Kind::IntSum => Repr::IntSum(Store::new(p)),
            Kind::FloatSum => Repr::FloatSum(Store::new(p)),
            Kind::Avg => Repr::Avg(Store::new(p)),
            Kind::Moments => Repr::Moments(Store::new(p)),
            Kind::Min => Repr::Min(Store::new(p)),
            Kind::Max => Repr::Max(Store::new(p)),
            Kind::Last => Repr::Last(Store::new(p)),
            Kind::Prev => Repr::Prev(Value::Null),
            Kind::Distinct => Repr::Distinct(Store::new(p)),
            Kind::Quantiles => Repr::Quantiles(Store::new(p)),
        })
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            plan: &self.plan,
            out: &self.out,
            lateness: self.lateness_ms,
        }
    }

    /// The event's argument, `None` if it is to be skipped (null, NaN, ±inf);
    /// `count()` and `rate()` take every event.
    fn argument<'r>(&self, row: &'r [Value]) -> Option<&'r Value> {
        const COUNTED: &Value = &Value::Null;
        let Some(i) = self.field else {
            return Some(COUNTED);
        };
        match row.get(i) {
            None | Some(Value::Null) => None,
            Some(Value::Float(f)) if !f.is_finite() => None,
            Some(v) => Some(v),
        }
    }

    /// Applies one event (event time `t_ms`, the validated row) and returns the aggregate's
    /// value at that moment, this event included.
    pub fn update(&self, state: &mut AggState, t_ms: i64, row: &[Value]) -> Value {
        if state.0.kind() != self.kind || !state.0.fits(&self.plan) {
            *state = self.new_state();
        }
        let x = self.argument(row);
        let cx = self.ctx();
        with_store!(&mut state.0, s => s.update(&cx, t_ms, x), p => {
            let previous = state::retype(p, self.out.field_type);
            if let Some(x) = x {
                *p = state::stored(x);
            }
            previous
        })
    }

    /// The value at time `t_ms` without adding an event (for timers and inspection): the
    /// value an event at `t_ms` would see, less itself. For `prev`, the argument of the latest
    /// event applied.
    pub fn value_at(&self, state: &AggState, t_ms: i64) -> Value {
        if state.0.kind() != self.kind || !state.0.fits(&self.plan) {
            return self.value_at(&self.new_state(), t_ms);
        }
        let cx = self.ctx();
        with_store!(&state.0, s => s.value_at(&cx, t_ms), p => state::retype(p, self.out.field_type))
    }

    /// How long after a key's latest event (in event time) its state still matters: the
    /// window's length (`N·P`), the session gap, or the longest calendar period (a month of
    /// 31 days plus 2 h for DST). `None` = forever (no window, and `prev`). Does not include
    /// the allowed lateness.
    pub fn horizon(&self) -> Option<Duration> {
        if self.kind == Kind::Prev {
            return None;
        }
        self.plan.horizon()
    }
}
