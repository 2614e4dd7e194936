//! Parsing aggregate specs such as `sum(amount) over calendar day tz Europe/Berlin`.

use std::fmt;
use std::time::Duration;

use super::SpecError;

/// An aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AggFn {
    /// `count()`: the number of events.
    Count,
    /// `sum(x)`.
    Sum,
    /// `avg(x)`: the arithmetic mean.
    Avg,
    /// `min(x)`.
    Min,
    /// `max(x)`.
    Max,
    /// `stddev(x)`: the population standard deviation.
    Stddev,
    /// `last(x)`: `x` of the window's latest event by event time.
    Last,
    /// `prev(x)`: `x` of the key's previous event in arrival order.
    Prev,
    /// `distinct(x)`: the approximate number of distinct values.
    Distinct,
    /// `p50(x)`: the approximate median.
    P50,
    /// `p90(x)`: the approximate 90th percentile.
    P90,
    /// `p99(x)`: the approximate 99th percentile.
    P99,
    /// `rate()`: events per second over the window's length.
    Rate,
}

impl AggFn {
    /// Every function, in the order the docs list them.
    pub const ALL: [AggFn; 13] = [
        AggFn::Count,
        AggFn::Sum,
        AggFn::Avg,
        AggFn::Min,
        AggFn::Max,
        AggFn::Stddev,
        AggFn::Last,
        AggFn::Prev,
        AggFn::Distinct,
        AggFn::P50,
        AggFn::P90,
        AggFn::P99,
        AggFn::Rate,
    ];

    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            AggFn::Count => "count",
            AggFn::Sum => "sum",
            AggFn::Avg => "avg",
            AggFn::Min => "min",
            AggFn::Max => "max",
            AggFn::Stddev => "stddev",
            AggFn::Last => "last",
            AggFn::Prev => "prev",
            AggFn::Distinct => "distinct",
            AggFn::P50 => "p50",
            AggFn::P90 => "p90",
            AggFn::P99 => "p99",
            AggFn::Rate => "rate",
        }
    }

    /// The function named `name` (lowercase, exactly).
    pub fn from_name(name: &str) -> Option<AggFn> {
        AggFn::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether the function takes a field argument (`sum(x)`) or none (`count()`).
    pub fn takes_field(self) -> bool {
        !matches!(self, AggFn::Count | AggFn::Rate)
    }

    /// The quantile a `pXX` function estimates.
    pub fn quantile(self) -> Option<f64> {
        match self {
            AggFn::P50 => Some(0.5),
            AggFn::P90 => Some(0.9),
            AggFn::P99 => Some(0.99),
            _ => None,
        }
    }
}

impl fmt::Display for AggFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A calendar period, in a time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CalendarPeriod {
    Day,
    /// Monday to Sunday.
    Week,
    Month,
}

impl CalendarPeriod {
    pub const ALL: [CalendarPeriod; 3] = [
        CalendarPeriod::Day,
        CalendarPeriod::Week,
        CalendarPeriod::Month,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CalendarPeriod::Day => "day",
            CalendarPeriod::Week => "week",
            CalendarPeriod::Month => "month",
        }
    }
}

/// The window an aggregate is computed over.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Window {
    /// No `over`: every event of the key since it was first seen.
    Unbounded,
    /// `over 5m`: the last 5 minutes, at a resolution of 1/12 of the length.
    Sliding(Duration),
    /// `over tumbling 1h`: epoch-aligned (UTC) buckets of that length.
    Tumbling(Duration),
    /// `over 1h every 5m`: the `length / hop` hops ending with the event's hop.
    Hopping { length: Duration, hop: Duration },
    /// `over session 30m`: the current run of events less than the gap apart.
    Session(Duration),
    /// `over calendar day tz Europe/Berlin`: the local day, week or month.
    Calendar {
        period: CalendarPeriod,
        /// IANA time zone name, as canonicalised by the time zone database.
        tz: String,
    },
}

/// A parsed aggregate: `<fn>(<field>?) [over <window>]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AggregateSpec {
    pub func: AggFn,
    /// The argument field's name; `None` for `count()` and `rate()`.
    pub field: Option<String>,
    pub window: Window,
}

impl fmt::Display for AggregateSpec {
    /// The canonical form, which parses back to an equal spec: lowercase keywords, single
    /// spaces, durations normalised (`90m` → `1h30m`, `1w` → `7d`), the time zone always
    /// written out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.func, self.field.as_deref().unwrap_or(""))?;
        match &self.window {
            Window::Unbounded => Ok(()),
            Window::Sliding(d) => write!(f, " over {}", format_duration(*d)),
            Window::Tumbling(d) => write!(f, " over tumbling {}", format_duration(*d)),
            Window::Hopping { length, hop } => write!(
                f,
                " over {} every {}",
                format_duration(*length),
                format_duration(*hop)
            ),
            Window::Session(d) => write!(f, " over session {}", format_duration(*d)),
            Window::Calendar { period, tz } => {
                write!(f, " over calendar {} tz {tz}", period.name())
            }
        }
    }
}

/// The longest duration a window may have: 100 years of 365 days.
pub const MAX_DURATION_MS: u64 = 100 * 365 * 86_400_000;

/// The most hops a hopping window may have (its state keeps one pane per hop).
pub const MAX_HOPS: u64 = 10_000;

/// Formats a duration the way users write them (`1h30m`, `250ms`).
pub use crate::duration::format as format_duration;

/// Parses an aggregate spec. `default_tz` is the IANA time zone of calendar windows that
/// name none.
pub fn parse_spec(text: &str, default_tz: &str) -> Result<AggregateSpec, SpecError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
    };
    p.spec(default_tz)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

const WINDOW_EXAMPLES: &str =
    "a duration such as `5m`, `tumbling 1h`, `1h every 5m`, `session 30m` or `calendar day`";

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Parser {
    fn err<T>(&self, pos: usize, message: impl Into<String>) -> Result<T, SpecError> {
        Err(SpecError {
            column: pos + 1,
            message: message.into(),
        })
    }

    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// Reads a run of letters, digits and `_` (possibly empty) after skipping whitespace;
    /// returns it and its start.
    fn word(&mut self) -> (String, usize) {
        self.skip_ws();
        let start = self.pos;
        while self.peek().is_some_and(is_word_char) {
            self.pos += 1;
        }
        (self.chars[start..self.pos].iter().collect(), start)
    }

    /// Reads a run of non-whitespace characters after skipping whitespace.
    fn non_space(&mut self) -> (String, usize) {
        self.skip_ws();
        let start = self.pos;
        while self.peek().is_some_and(|c| !c.is_whitespace()) {
            self.pos += 1;
        }
        (self.chars[start..self.pos].iter().collect(), start)
    }

    /// How to name what stands at `pos` in a message: `` `word` ``, `` `(` `` or "the end of
    /// the spec".
    fn found_at(&self, pos: usize) -> String {
        match self.chars.get(pos) {
            None => "the end of the spec".into(),
            Some(&c) if is_word_char(c) => {
                let w: String = self.chars[pos..]
                    .iter()
                    .take_while(|c| is_word_char(**c))
                    .collect();
                format!("`{w}`")
            }
            Some(c) => format!("`{c}`"),
        }
    }

    fn expect_char(&mut self, want: char, context: &str) -> Result<(), SpecError> {
        self.skip_ws();
        if self.peek() == Some(want) {
            self.pos += 1;
            Ok(())
        } else {
            self.err(
                self.pos,
                format!(
                    "expected `{want}` {context}, found {}",
                    self.found_at(self.pos)
                ),
            )
        }
    }

    fn spec(&mut self, default_tz: &str) -> Result<AggregateSpec, SpecError> {
        let (name, name_pos) = self.word();
        if name.is_empty() {
            return self.err(
                name_pos,
                format!(
                    "expected an aggregate such as `count()` or `sum(amount)`, found {}",
                    self.found_at(name_pos)
                ),
            );
        }
        let Some(func) = AggFn::from_name(&name) else {
            let names: Vec<&str> = AggFn::ALL.iter().map(|f| f.name()).collect();
            let hint = match closest(&name, names.iter().copied()) {
                Some(c) => format!(", did you mean `{c}`?"),
                None => format!(": expected one of {}", names.join(", ")),
            };
            return self.err(name_pos, format!("unknown aggregate `{name}`{hint}"));
        };
        self.expect_char('(', &format!("after `{name}`"))?;
        self.skip_ws();
        let arg_pos = self.pos;
        let (arg, _) = self.word();
        let field = if func.takes_field() {
            if arg.is_empty() {
                return self.err(
                    arg_pos,
                    format!(
                        "`{name}` needs a field, e.g. `{name}(amount)`, found {}",
                        self.found_at(arg_pos)
                    ),
                );
            }
            if arg.starts_with(|c: char| c.is_ascii_digit()) || !arg.is_ascii() {
                return self.err(
                    arg_pos,
                    format!(
                        "expected a field name (letters, digits and `_`, not starting with a digit), found `{arg}`"
                    ),
                );
            }
            Some(arg)
        } else {
            if !arg.is_empty() {
                return self.err(
                    arg_pos,
                    format!("`{name}` takes no field, found `{arg}`: write `{name}()`"),
                );
            }
            None
        };
        self.expect_char(')', &format!("to close `{name}(`"))?;

        let (kw, kw_pos) = self.word();
        let window = if kw.is_empty() {
            if self.peek().is_some() {
                return self.err(
                    kw_pos,
                    format!(
                        "expected `over <window>` or the end of the spec, found {}",
                        self.found_at(kw_pos)
                    ),
                );
            }
            Window::Unbounded
        } else if kw != "over" {
            let hint = match closest(&kw, ["over"]) {
                Some(_) => ", did you mean `over`?".to_string(),
                None => String::new(),
            };
            return self.err(
                kw_pos,
                format!("expected `over <window>` or the end of the spec, found `{kw}`{hint}"),
            );
        } else {
            if func == AggFn::Prev {
                return self.err(
                    kw_pos,
                    "`prev` takes no window: it is always the key's previous event",
                );
            }
            self.window(default_tz)?
        };

        self.skip_ws();
        let rest_pos = self.pos;
        if self.word().0 == "tz" {
            return self.err(
                rest_pos,
                "`tz` applies only to calendar windows, e.g. `over calendar day tz Europe/Berlin`",
            );
        }
        self.pos = rest_pos;
        if self.peek().is_some() {
            return self.err(
                self.pos,
                format!(
                    "expected the end of the spec, found {}",
                    self.found_at(self.pos)
                ),
            );
        }
        if func == AggFn::Rate {
            let problem = match window {
                Window::Unbounded => Some("no window"),
                Window::Session(_) => Some("a session window"),
                _ => None,
            };
            if let Some(problem) = problem {
                return self.err(
                    name_pos,
                    format!(
                        "`rate` needs a window of fixed length (sliding, tumbling, hopping or calendar), found {problem}"
                    ),
                );
            }
        }
        Ok(AggregateSpec {
            func,
            field,
            window,
        })
    }

    fn window(&mut self, default_tz: &str) -> Result<Window, SpecError> {
        self.skip_ws();
        let start = self.pos;
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            let length = self.duration("window length")?;
            let (kw, kw_pos) = self.word();
            if kw.is_empty() {
                return Ok(Window::Sliding(length));
            }
            if kw != "every" {
                // Leave it for the end-of-spec check, with a hint if it looks like `every`.
                if closest(&kw, ["every"]).is_some() {
                    return self.err(
                        kw_pos,
                        format!("expected `every <hop>` or the end of the spec, found `{kw}`, did you mean `every`?"),
                    );
                }
                self.pos = kw_pos;
                return Ok(Window::Sliding(length));
            }
            self.skip_ws();
            let hop_pos = self.pos;
            let hop = self.duration("hop")?;
            if length.as_millis() % hop.as_millis() != 0 {
                return self.err(
                    hop_pos,
                    format!(
                        "a hopping window's length ({}) must be a multiple of its hop ({})",
                        format_duration(length),
                        format_duration(hop)
                    ),
                );
            }
            let hops = length.as_millis() / hop.as_millis();
            if hops > u128::from(MAX_HOPS) {
                return self.err(
                    hop_pos,
                    format!(
                        "a hopping window has at most {MAX_HOPS} hops, `{} every {}` has {hops}",
                        format_duration(length),
                        format_duration(hop)
                    ),
                );
            }
            return Ok(Window::Hopping { length, hop });
        }
        let (kw, kw_pos) = self.word();
        match kw.as_str() {
            "tumbling" => {
                self.skip_ws();
                Ok(Window::Tumbling(self.duration("window length")?))
            }
            "session" => {
                self.skip_ws();
                Ok(Window::Session(self.duration("session gap")?))
            }
            "calendar" => self.calendar(default_tz),
            "" => self.err(
                start,
                format!(
                    "expected a window after `over`: {WINDOW_EXAMPLES}; found {}",
                    self.found_at(start)
                ),
            ),
            other => {
                let hint = match closest(other, ["tumbling", "session", "calendar"]) {
                    Some(c) => format!(", did you mean `{c}`?"),
                    None => String::new(),
                };
                self.err(
                    kw_pos,
                    format!(
                        "expected a window after `over`: {WINDOW_EXAMPLES}; found `{other}`{hint}"
                    ),
                )
            }
        }
    }

    fn calendar(&mut self, default_tz: &str) -> Result<Window, SpecError> {
        let (unit, unit_pos) = self.word();
        let Some(period) = CalendarPeriod::ALL.into_iter().find(|p| p.name() == unit) else {
            let found = if unit.is_empty() {
                self.found_at(unit_pos)
            } else {
                format!("`{unit}`")
            };
            let hint = match closest(&unit, ["day", "week", "month"]) {
                Some(c) if !unit.is_empty() => format!(", did you mean `{c}`?"),
                _ => String::new(),
            };
            return self.err(
                unit_pos,
                format!(
                    "expected a calendar period: `day`, `week` or `month`, found {found}{hint}"
                ),
            );
        };
        let before_tz = self.pos;
        let (kw, _) = self.word();
        let tz = if kw == "tz" {
            let (name, name_pos) = self.non_space();
            if name.is_empty() {
                return self.err(
                    name_pos,
                    "expected a time zone name after `tz`, e.g. `Europe/Berlin` or `UTC`, found the end of the spec",
                );
            }
            match canonical_tz(&name) {
                Ok(tz) => tz,
                Err(message) => return self.err(name_pos, message),
            }
        } else {
            self.pos = before_tz;
            match canonical_tz(default_tz) {
                Ok(tz) => tz,
                Err(message) => {
                    return self.err(unit_pos, format!("{message} (the default time zone)"))
                }
            }
        };
        Ok(Window::Calendar { period, tz })
    }

    /// Parses `<n><unit>` groups (units `ms`, `s`, `m`, `h`, `d`, `w`), e.g. `1h30m`.
    fn duration(&mut self, what: &str) -> Result<Duration, SpecError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric()) {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        if text.is_empty() || !text.starts_with(|c: char| c.is_ascii_digit()) {
            return self.err(
                start,
                format!(
                    "expected a {what} such as `5m`, `1h30m` or `30d`, found {}",
                    self.found_at(start)
                ),
            );
        }
        // Same duration syntax (and messages) as everywhere else in a pipeline file.
        let total = match crate::duration::parse(&text) {
            Ok(d) => d.as_millis(),
            Err(message) => return self.err(start, message),
        };
        if total == 0 {
            return self.err(start, format!("a {what} must be positive, found `{text}`"));
        }
        if total > u128::from(MAX_DURATION_MS) {
            return self.err(
                start,
                format!("duration `{text}` is too large: at most 36500d"),
            );
        }
        Ok(Duration::from_millis(total as u64))
    }
}

/// The canonical IANA name of a time zone, or an error message.
pub(crate) fn canonical_tz(name: &str) -> Result<String, String> {
    match jiff::tz::TimeZone::get(name) {
        Ok(tz) => Ok(tz.iana_name().unwrap_or(name).to_string()),
        Err(_) => {
            let names: Vec<String> = jiff::tz::db()
                .available()
                .map(|n| n.as_str().to_string())
                .collect();
            let hint = match closest(name, names.iter().map(String::as_str)) {
                Some(c) => format!(", did you mean `{c}`?"),
                None => ": expected an IANA name such as `Europe/Berlin` or `UTC`".into(),
            };
            Err(format!("unknown time zone `{name}`{hint}"))
        }
    }
}

/// The candidate closest to `name`: a case-insensitive match first, else the nearest by
/// edit distance (with transpositions) if within a third of the name's length.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let limit = lower.chars().count() / 3;
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let cl = c.to_lowercase();
        if cl == lower {
            return Some(c);
        }
        let d = edit_distance(&lower, &cl);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for (i, row) in d.chunks_mut(w).enumerate() {
        if let Some(first) = row.first_mut() {
            *first = i;
        }
    }
    for (j, cell) in d.iter_mut().take(w).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}
