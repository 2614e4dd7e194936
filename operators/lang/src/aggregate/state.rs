//! Per-key state: small mergeable accumulators, stored per pane, calendar bucket, session or
//! for the key's whole life.

use std::cmp::Ordering;
use std::fmt::Debug;

use cardinality_estimator::CardinalityEstimator;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::spec::AggFn;
use super::window::{calendar_bounds, pane_of, Plan};
use crate::value::{Value, ValueType};

/// What a finished accumulator needs to produce its value.
#[derive(Clone, Debug)]
pub(crate) struct Out {
    pub func: AggFn,
    /// The argument field's type (`Null` when there is none).
    pub field_type: ValueType,
}

/// A mergeable accumulator of one aggregate function.
pub(crate) trait Acc:
    Clone + Debug + Default + PartialEq + Serialize + DeserializeOwned
{
    /// Adds one event: time `t` and argument `x` (never null, except `Null` for `count()`).
    fn add(&mut self, t: i64, x: &Value);
    /// Adds everything `other` holds.
    fn merge(&mut self, other: &Self);
    /// The aggregate's value; `span_ms` is the window's length (for `rate`).
    fn finish(&self, out: &Out, span_ms: i64) -> Value;
    /// Heap bytes owned, roughly.
    fn heap_bytes(&self) -> usize {
        0
    }
}

// ---------------------------------------------------------------------------------------
// Accumulators.

/// `count()` and `rate()`.
impl Acc for u64 {
    fn add(&mut self, _t: i64, _x: &Value) {
        *self = self.saturating_add(1);
    }
    fn merge(&mut self, other: &Self) {
        *self = self.saturating_add(*other);
    }
    fn finish(&self, out: &Out, span_ms: i64) -> Value {
        if out.func == AggFn::Rate {
            if *self == 0 || span_ms <= 0 {
                return Value::Float(0.0);
            }
            finite(*self as f64 / (span_ms as f64 / 1000.0))
        } else {
            Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
        }
    }
}

/// An exact integer sum, 128 bits kept as two words (8-byte aligned, so panes stay
/// small). Serialised as an int when it fits 64 bits, else as `[high, low]`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Wide {
    hi: i64,
    lo: u64,
}

impl Wide {
    fn get(self) -> i128 {
        (i128::from(self.hi) << 64) | i128::from(self.lo)
    }
    fn set(v: i128) -> Wide {
        Wide {
            hi: (v >> 64) as i64,
            lo: v as u64,
        }
    }
    fn add(&mut self, v: i128) {
        *self = Wide::set(self.get().saturating_add(v));
    }
}

impl Serialize for Wide {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(self.get()) {
            Ok(v) => s.serialize_i64(v),
            Err(_) => (self.hi, self.lo).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Wide {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Small(i64),
            Big((i64, u64)),
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Small(v) => Wide::set(i128::from(v)),
            Repr::Big((hi, lo)) => Wide { hi, lo },
        })
    }
}

fn int_of(x: &Value) -> Option<i64> {
    match x {
        Value::Int(i) | Value::Timestamp(i) => Some(*i),
        _ => None,
    }
}

fn float_of(x: &Value) -> Option<f64> {
    x.as_f64().filter(|f| f.is_finite())
}

fn finite(f: f64) -> Value {
    if f.is_finite() {
        Value::Float(f)
    } else {
        Value::Null
    }
}

/// `sum(x)` of an int field.
impl Acc for Wide {
    fn add(&mut self, _t: i64, x: &Value) {
        if let Some(i) = int_of(x) {
            self.add(i128::from(i));
        }
    }
    fn merge(&mut self, other: &Self) {
        self.add(other.get());
    }
    fn finish(&self, _out: &Out, _span_ms: i64) -> Value {
        i64::try_from(self.get()).map_or(Value::Null, Value::Int)
    }
}

/// `sum(x)` of a float field.
impl Acc for f64 {
    fn add(&mut self, _t: i64, x: &Value) {
        if let Some(f) = float_of(x) {
            *self += f;
        }
    }
    fn merge(&mut self, other: &Self) {
        *self += *other;
    }
    fn finish(&self, _out: &Out, _span_ms: i64) -> Value {
        finite(*self)
    }
}

/// `avg(x)`: count and float sum (int arguments are summed exactly up to 2^53; the result is
/// a float anyway).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FloatAvg(u64, #[serde(with = "compact_f64")] f64);

/// Whole floats below 2^53 serialise as ints (MessagePack: 1 to 9 bytes instead of 9).
mod compact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
            s.serialize_i64(*v as i64)
        } else {
            s.serialize_f64(*v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Num {
            Int(i64),
            Float(f64),
        }
        Ok(match Num::deserialize(d)? {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        })
    }
}

impl Acc for FloatAvg {
    fn add(&mut self, _t: i64, x: &Value) {
        if let Some(f) = float_of(x) {
            self.0 = self.0.saturating_add(1);
            self.1 += f;
        }
    }
    fn merge(&mut self, other: &Self) {
        self.0 = self.0.saturating_add(other.0);
        self.1 += other.1;
    }
    fn finish(&self, _out: &Out, _span_ms: i64) -> Value {
        if self.0 == 0 {
            return Value::Null;
        }
        finite(self.1 / self.0 as f64)
    }
}

/// `stddev(x)`: count, mean and sum of squared deviations (Welford; Chan et al. to merge).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Moments(u64, f64, f64);

impl Acc for Moments {
    fn add(&mut self, _t: i64, x: &Value) {
        if let Some(f) = float_of(x) {
            self.0 = self.0.saturating_add(1);
            let d = f - self.1;
            self.1 += d / self.0 as f64;
            self.2 += d * (f - self.1);
        }
    }
    fn merge(&mut self, other: &Self) {
        if other.0 == 0 {
            return;
        }
        if self.0 == 0 {
            *self = other.clone();
            return;
        }
        let (na, nb) = (self.0 as f64, other.0 as f64);
        let n = na + nb;
        let d = other.1 - self.1;
        self.1 += d * nb / n;
        self.2 += other.2 + d * d * na * nb / n;
        self.0 = self.0.saturating_add(other.0);
    }
    fn finish(&self, _out: &Out, _span_ms: i64) -> Value {
        if self.0 == 0 || !self.1.is_finite() || !self.2.is_finite() {
            return Value::Null;
        }
        finite((self.2.max(0.0) / self.0 as f64).sqrt())
    }
}

/// Orders two values of one field: ints exactly, strings by bytes, numbers as floats.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// Values are stored with timestamps as plain ints, so that they survive a MessagePack round
/// trip unchanged; [`retype`] restores the field's type on the way out.
pub(crate) fn stored(x: &Value) -> Value {
    match x {
        Value::Timestamp(t) => Value::Int(*t),
        other => other.clone(),
    }
}

/// A stored value in the field's type.
pub(crate) fn retype(v: &Value, ty: ValueType) -> Value {
    match (v, ty) {
        (Value::Int(i), ValueType::Timestamp) => Value::Timestamp(*i),
        (Value::Int(i), ValueType::Float) => Value::Float(*i as f64),
        (other, _) => other.clone(),
    }
}

fn value_heap(v: &Value) -> usize {
    match v {
        Value::Str(s) => s.len() + 16,
        _ => 0,
    }
}

/// `min(x)` (`MAX == false`) or `max(x)` (`MAX == true`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Extreme<const MAX: bool>(Option<Value>);

impl<const MAX: bool> Extreme<MAX> {
    fn offer(&mut self, x: &Value) {
        let better = match &self.0 {
            None => true,
            Some(cur) => {
                let want = if MAX {
                    Ordering::Greater
                } else {
                    Ordering::Less
                };
                compare(x, cur) == Some(want)
            }
        };
        if better {
            self.0 = Some(stored(x));
        }
    }
}

impl<const MAX: bool> Acc for Extreme<MAX> {
    fn add(&mut self, _t: i64, x: &Value) {
        if !matches!(x, Value::Null) && !matches!(x, Value::Float(f) if !f.is_finite()) {
            self.offer(x);
        }
    }
    fn merge(&mut self, other: &Self) {
        if let Some(x) = &other.0 {
            self.offer(x);
        }
    }
    fn finish(&self, out: &Out, _span_ms: i64) -> Value {
        self.0
            .as_ref()
            .map_or(Value::Null, |v| retype(v, out.field_type))
    }
    fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, value_heap)
    }
}

/// `last(x)`: the value with the latest event time; among equal times, the latest applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Last(Option<(i64, Value)>);

impl Acc for Last {
    fn add(&mut self, t: i64, x: &Value) {
        if self.0.as_ref().is_none_or(|(lt, _)| t >= *lt) {
            self.0 = Some((t, stored(x)));
        }
    }
    fn merge(&mut self, other: &Self) {
        if let Some((t, x)) = &other.0 {
            if self.0.as_ref().is_none_or(|(lt, _)| *t >= *lt) {
                self.0 = Some((*t, x.clone()));
            }
        }
    }
    fn finish(&self, out: &Out, _span_ms: i64) -> Value {
        self.0
            .as_ref()
            .map_or(Value::Null, |(_, v)| retype(v, out.field_type))
    }
    fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |(_, v)| value_heap(v))
    }
}

/// `distinct(x)`: HyperLogLog (precision 12, about 1.6% standard error) from the
/// `cardinality-estimator` crate, exact up to 128 distinct values (it keeps the hashes
/// themselves until then, 8 bytes for up to two).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub(crate) struct Distinct(CardinalityEstimator<u64>);

/// The crate serialises `(tagged word, Option<Vec<u32>>)`, where the word of its array and
/// HyperLogLog forms holds a heap address that deserialisation ignores (it rebuilds from the
/// vector). Masking the address keeps checkpoints deterministic and free of pointers.
impl Serialize for Distinct {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        const TAG: u64 = 0b11;
        const ARRAY_POINTER: u64 = ((1 << 56) - 1) & !TAG;
        let bytes = rmp_serde::to_vec(&self.0).map_err(S::Error::custom)?;
        let (word, items): (u64, Option<Vec<u32>>) =
            rmp_serde::from_slice(&bytes).map_err(S::Error::custom)?;
        let word = match word & TAG {
            0 => word,                  // small: the word holds the hashes themselves
            1 => word & !ARRAY_POINTER, // array: keep its length bits
            _ => word & TAG,            // HyperLogLog
        };
        (word, items).serialize(s)
    }
}

/// A 64-bit hash of a value, distinguishing types.
pub(crate) fn value_hash(x: &Value) -> u64 {
    use xxhash_rust::xxh3::xxh3_64_with_seed;
    match x {
        Value::Null => xxh3_64_with_seed(&[], 0),
        Value::Bool(b) => xxh3_64_with_seed(&[u8::from(*b)], 1),
        Value::Int(i) | Value::Timestamp(i) => xxh3_64_with_seed(&i.to_le_bytes(), 2),
        Value::Float(f) => {
            // -0.0 and 0.0 are one value.
            let f = if *f == 0.0 { 0.0f64 } else { *f };
            xxh3_64_with_seed(&f.to_bits().to_le_bytes(), 3)
        }
        Value::Str(s) => xxh3_64_with_seed(s.as_bytes(), 4),
    }
}

impl Acc for Distinct {
    fn add(&mut self, _t: i64, x: &Value) {
        self.0.insert_hash(value_hash(x));
    }
    fn merge(&mut self, other: &Self) {
        self.0.merge(&other.0);
    }
    fn finish(&self, _out: &Out, _span_ms: i64) -> Value {
        Value::Int(i64::try_from(self.0.estimate()).unwrap_or(i64::MAX))
    }
    fn heap_bytes(&self) -> usize {
        self.0
            .size_of()
            .saturating_sub(std::mem::size_of::<usize>())
    }
}

/// `p50/p90/p99(x)`: a DDSketch with a sparse store — logarithmic buckets of relative width
/// 1%, kept as a sorted list of (bucket, count) so that a pane with a handful of events
/// stays a few bytes. Any estimate is within 1% (relative) of the true value at its rank.
/// Magnitudes below 1e-9 count as zero.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Quantiles(Vec<(i32, u32)>);

/// The sketch's relative accuracy.
pub const QUANTILE_ACCURACY: f64 = 0.01;
const GAMMA: f64 = (1.0 + QUANTILE_ACCURACY) / (1.0 - QUANTILE_ACCURACY);
const MIN_MAGNITUDE: f64 = 1e-9;
/// Shifts bucket indexes of magnitudes above `MIN_MAGNITUDE` to ≥ 1 (ln(1e-9)/ln(γ) ≈ -1036).
const KEY_OFFSET: i32 = 1100;

impl Quantiles {
    /// The bucket of `v`: 0 for (near) zero, positive for positive values, negative for
    /// negative ones, so that keys sort like values.
    fn key(v: f64) -> i32 {
        let m = v.abs();
        if m <= MIN_MAGNITUDE {
            return 0;
        }
        let k = (m.ln() / GAMMA.ln()).ceil() as i32 + KEY_OFFSET;
        if v > 0.0 {
            k
        } else {
            -k
        }
    }

    /// The value a bucket stands for: within the accuracy of everything in it.
    fn value(key: i32) -> f64 {
        if key == 0 {
            return 0.0;
        }
        let k = f64::from(key.saturating_abs().saturating_sub(KEY_OFFSET));
        let m = 2.0 * (k * GAMMA.ln()).exp() / (1.0 + GAMMA);
        if key > 0 {
            m
        } else {
            -m
        }
    }

    fn add_count(&mut self, key: i32, n: u32) {
        match self.0.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(i) => {
                if let Some((_, c)) = self.0.get_mut(i) {
                    *c = c.saturating_add(n);
                }
            }
            Err(i) => self.0.insert(i, (key, n)),
        }
    }

    /// The estimated `q`-quantile: the value at rank `floor(q * (n - 1))`.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let n: u64 = self.0.iter().map(|(_, c)| u64::from(*c)).sum();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (n - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        for (k, c) in &self.0 {
            seen += u64::from(*c);
            if seen > rank {
                return Some(Self::value(*k));
            }
        }
        self.0.last().map(|(k, _)| Self::value(*k))
    }
}

impl Acc for Quantiles {
    fn add(&mut self, _t: i64, x: &Value) {
        if let Some(f) = float_of(x) {
            self.add_count(Self::key(f), 1);
        }
    }
    fn merge(&mut self, other: &Self) {
        if other.0.is_empty() {
            return;
        }
        if self.0.is_empty() {
            self.0.clone_from(&other.0);
            return;
        }
        let mut out = Vec::with_capacity(self.0.len() + other.0.len());
        let (mut a, mut b) = (self.0.iter().peekable(), other.0.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(ka, ca)), Some(&&(kb, cb))) => match ka.cmp(&kb) {
                    Ordering::Less => {
                        out.push((ka, ca));
                        a.next();
                    }
                    Ordering::Greater => {
                        out.push((kb, cb));
                        b.next();
                    }
                    Ordering::Equal => {
                        out.push((ka, ca.saturating_add(cb)));
                        a.next();
                        b.next();
                    }
                },
                (Some(&&x), None) => {
                    out.push(x);
                    a.next();
                }
                (None, Some(&&x)) => {
                    out.push(x);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.0 = out;
    }
    fn finish(&self, out: &Out, _span_ms: i64) -> Value {
        match out.func.quantile().and_then(|q| self.quantile(q)) {
            Some(v) => finite(v),
            None => Value::Null,
        }
    }
    fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<(i32, u32)>()
    }
}

// ---------------------------------------------------------------------------------------
// Where accumulators live, by window kind.

/// One non-empty pane: its index (`floor(t / width)`) and accumulator.
pub(crate) type Pane<A> = (i64, A);

/// Sliding, hopping and tumbling windows: the non-empty panes still needed, oldest first,
/// and the merge of those in the window of the newest pane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "A: Acc")]
pub(crate) struct Panes<A> {
    #[serde(rename = "p")]
    panes: Vec<Pane<A>>,
    #[serde(rename = "t")]
    total: A,
}

/// A calendar period's accumulator, with the period's bounds in epoch ms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "A: Acc")]
pub(crate) struct Bucket<A> {
    #[serde(rename = "s")]
    start: i64,
    #[serde(rename = "e")]
    end: i64,
    #[serde(rename = "a")]
    acc: A,
}

/// The current session: its first and last event times and accumulator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "A: Acc")]
pub(crate) struct Session<A> {
    #[serde(rename = "s")]
    start: i64,
    #[serde(rename = "l")]
    last: i64,
    #[serde(rename = "a")]
    acc: A,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "A: Acc")]
pub(crate) enum Store<A> {
    #[serde(rename = "u")]
    Unbounded(A),
    #[serde(rename = "p")]
    Panes(Panes<A>),
    #[serde(rename = "c")]
    Calendar(Vec<Bucket<A>>),
    #[serde(rename = "s")]
    Session(Option<Session<A>>),
}

/// How an aggregate updates and reads its store.
pub(crate) struct Ctx<'a> {
    pub plan: &'a Plan,
    pub out: &'a Out,
    /// How far (ms) behind the key's newest pane or period an event may still arrive and be
    /// counted exactly.
    pub lateness: i64,
}

impl<A: Acc> Store<A> {
    pub(crate) fn new(plan: &Plan) -> Self {
        match plan {
            Plan::Unbounded => Store::Unbounded(A::default()),
            Plan::Panes { .. } => Store::Panes(Panes {
                panes: Vec::new(),
                total: A::default(),
            }),
            Plan::Calendar { .. } => Store::Calendar(Vec::new()),
            Plan::Session { .. } => Store::Session(None),
        }
    }

    pub(crate) fn fits(&self, plan: &Plan) -> bool {
        matches!(
            (self, plan),
            (Store::Unbounded(_), Plan::Unbounded)
                | (Store::Panes(_), Plan::Panes { .. })
                | (Store::Calendar(_), Plan::Calendar { .. })
                | (Store::Session(_), Plan::Session { .. })
        )
    }

    /// Applies an event at `t` (`x == None`: its argument is null and only its time counts)
    /// and returns the value of its window, the event included.
    pub(crate) fn update(&mut self, cx: &Ctx, t: i64, x: Option<&Value>) -> Value {
        match (self, cx.plan) {
            (Store::Unbounded(a), _) => {
                if let Some(x) = x {
                    a.add(t, x);
                }
                a.finish(cx.out, 0)
            }
            (Store::Panes(p), Plan::Panes { width, count }) => p.update(cx, *width, *count, t, x),
            (Store::Calendar(b), Plan::Calendar { period, tz }) => {
                calendar_update(b, cx, t, x, |t| calendar_bounds(t, *period, tz))
            }
            (Store::Session(s), Plan::Session { gap }) => session_update(s, cx, *gap, t, x),
            // A store of another window kind never reaches here (the caller resets it).
            (_, _) => A::default().finish(cx.out, 0),
        }
    }

    /// The value of the window an event at `t` would fall in, without adding one.
    pub(crate) fn value_at(&self, cx: &Ctx, t: i64) -> Value {
        match (self, cx.plan) {
            (Store::Unbounded(a), _) => a.finish(cx.out, 0),
            (Store::Panes(p), Plan::Panes { width, count }) => {
                let q = pane_of(t, *width);
                p.with_window(q, *count, |a| {
                    a.finish(cx.out, width.saturating_mul(*count))
                })
            }
            (Store::Calendar(b), _) => match b.iter().find(|b| b.start <= t && t < b.end) {
                Some(b) => b.acc.finish(cx.out, b.end.saturating_sub(b.start)),
                None => A::default().finish(cx.out, 0),
            },
            (Store::Session(s), Plan::Session { gap }) => match s {
                Some(s) if session_accepts(s, *gap, t) => s.acc.finish(cx.out, 0),
                _ => A::default().finish(cx.out, 0),
            },
            (_, _) => A::default().finish(cx.out, 0),
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Store::Unbounded(a) => a.heap_bytes(),
            Store::Panes(p) => {
                p.panes.capacity() * std::mem::size_of::<Pane<A>>()
                    + p.panes.iter().map(|(_, a)| a.heap_bytes()).sum::<usize>()
                    + p.total.heap_bytes()
            }
            Store::Calendar(b) => {
                b.capacity() * std::mem::size_of::<Bucket<A>>()
                    + b.iter().map(|b| b.acc.heap_bytes()).sum::<usize>()
            }
            Store::Session(s) => s.as_ref().map_or(0, |s| s.acc.heap_bytes()),
        }
    }
}

impl<A: Acc> Panes<A> {
    fn newest(&self) -> Option<i64> {
        self.panes.last().map(|(id, _)| *id)
    }

    /// Calls `f` with the merge of the held panes in the window ending with pane `q`.
    fn with_window<R>(&self, q: i64, count: i64, f: impl FnOnce(&A) -> R) -> R {
        if self.newest() == Some(q) {
            return f(&self.total);
        }
        f(&self.merged(q, count))
    }

    fn merged(&self, q: i64, count: i64) -> A {
        let from = q.saturating_sub(count - 1);
        let mut m = A::default();
        let first = self.panes.partition_point(|(id, _)| *id < from);
        for (_, a) in self.panes.iter().skip(first).take_while(|(id, _)| *id <= q) {
            m.merge(a);
        }
        m
    }

    fn update(&mut self, cx: &Ctx, width: i64, count: i64, t: i64, x: Option<&Value>) -> Value {
        let q = pane_of(t, width);
        let span = width.saturating_mul(count);
        let fin = |a: &A| a.finish(cx.out, span);
        let Some(x) = x else {
            return self.with_window(q, count, fin);
        };
        let late_panes = cx.lateness.max(0).saturating_add(width - 1) / width;
        let newest = self.newest();
        match newest {
            Some(n) if q == n => {
                if let Some((_, a)) = self.panes.last_mut() {
                    a.add(t, x);
                }
                self.total.add(t, x);
                fin(&self.total)
            }
            Some(n) if q < n => {
                let oldest_kept = n.saturating_sub(count - 1).saturating_sub(late_panes);
                if q < oldest_kept {
                    // Too late to be kept: counted in its own value only.
                    let mut m = self.merged(q, count);
                    m.add(t, x);
                    return fin(&m);
                }
                match self.panes.binary_search_by_key(&q, |(id, _)| *id) {
                    Ok(i) => {
                        if let Some((_, a)) = self.panes.get_mut(i) {
                            a.add(t, x);
                        }
                    }
                    Err(i) => {
                        let mut a = A::default();
                        a.add(t, x);
                        self.panes.reserve_exact(1);
                        self.panes.insert(i, (q, a));
                    }
                }
                if q > n.saturating_sub(count) {
                    self.total.add(t, x);
                }
                fin(&self.merged(q, count))
            }
            _ => {
                // A new newest pane: drop panes no event can need any more, start the pane,
                // and recompute the total over the new window.
                let keep_from = q.saturating_sub(count - 1).saturating_sub(late_panes);
                let drop = self.panes.partition_point(|(id, _)| *id < keep_from);
                self.panes.drain(..drop);
                let mut a = A::default();
                a.add(t, x);
                self.panes.reserve_exact(1);
                self.panes.push((q, a));
                self.total = self.merged(q, count);
                fin(&self.total)
            }
        }
    }
}

fn calendar_update<A: Acc>(
    buckets: &mut Vec<Bucket<A>>,
    cx: &Ctx,
    t: i64,
    x: Option<&Value>,
    bounds: impl Fn(i64) -> Option<(i64, i64)>,
) -> Value {
    let value = if let Some(b) = buckets.iter_mut().find(|b| b.start <= t && t < b.end) {
        if let Some(x) = x {
            b.acc.add(t, x);
        }
        b.acc.finish(cx.out, b.end.saturating_sub(b.start))
    } else if let Some(x) = x {
        // Outside jiff's range (years -9999..=9999): the event is a period of its own.
        let (start, end) = bounds(t).unwrap_or((t, t.saturating_add(1)));
        let mut acc = A::default();
        acc.add(t, x);
        let value = acc.finish(cx.out, end.saturating_sub(start));
        let newest_start = buckets.last().map_or(i64::MIN, |b| b.start);
        if end > newest_start.saturating_sub(cx.lateness) {
            let i = buckets.partition_point(|b| b.start < start);
            buckets.reserve_exact(1);
            buckets.insert(i, Bucket { start, end, acc });
        }
        // else: too late to be kept, counted in its own value only.
        value
    } else {
        A::default().finish(cx.out, 0)
    };
    // Periods that end before any event still to come may fall (the key's newest event, or
    // the newest period's start, less the lateness) are dropped.
    if buckets.len() > 1 {
        let newest_start = buckets.last().map_or(i64::MIN, |b| b.start);
        let keep_after = newest_start.max(t).saturating_sub(cx.lateness);
        buckets.retain(|b| b.end > keep_after);
    }
    value
}

/// Whether an event at `t` belongs to session `s` (see the module docs).
fn session_accepts<A>(s: &Session<A>, gap: i64, t: i64) -> bool {
    let (t, start, last, gap) = (
        i128::from(t),
        i128::from(s.start),
        i128::from(s.last),
        i128::from(gap),
    );
    (t >= start && t - last < gap) || (t < start && start - t < gap)
}

fn session_update<A: Acc>(
    s: &mut Option<Session<A>>,
    cx: &Ctx,
    gap: i64,
    t: i64,
    x: Option<&Value>,
) -> Value {
    let add = |acc: &mut A| {
        if let Some(x) = x {
            acc.add(t, x);
        }
    };
    match s {
        Some(cur) if session_accepts(cur, gap, t) => {
            cur.start = cur.start.min(t);
            cur.last = cur.last.max(t);
            add(&mut cur.acc);
            cur.acc.finish(cx.out, 0)
        }
        Some(cur) if t < cur.start => {
            // Earlier than the session by a gap or more: an old session's event, counted in
            // its own value only.
            let mut acc = A::default();
            add(&mut acc);
            acc.finish(cx.out, 0)
        }
        _ => {
            let mut acc = A::default();
            add(&mut acc);
            let value = acc.finish(cx.out, 0);
            *s = Some(Session {
                start: t,
                last: t,
                acc,
            });
            value
        }
    }
}
