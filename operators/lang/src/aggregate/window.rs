//! Window kinds compiled to arithmetic: panes for sliding, hopping and tumbling windows,
//! local calendar periods via jiff, session gaps.

use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

use super::spec::{CalendarPeriod, Window};

/// Sliding windows are split into this many panes.
pub const SLIDING_PANES: u64 = 12;

/// A window compiled for evaluation.
#[derive(Clone, Debug)]
pub(crate) enum Plan {
    /// Every event so far.
    Unbounded,
    /// The `count` panes of `width` ms ending with the event's pane. Tumbling windows are
    /// one pane of their length, hopping windows `length / hop` panes of the hop.
    Panes { width: i64, count: i64 },
    /// The local calendar period containing the event.
    Calendar {
        period: CalendarPeriod,
        tz: TimeZone,
    },
    /// The run of events less than `gap` ms apart.
    Session { gap: i64 },
}

/// Pane width and count for a sliding window of `length`: width `length / 12` rounded down
/// (at least 1 ms), and as many panes as cover the length.
pub fn sliding_panes(length: Duration) -> (i64, i64) {
    let len = i64::try_from(length.as_millis()).unwrap_or(i64::MAX).max(1);
    let width = (len / SLIDING_PANES as i64).max(1);
    let count = len / width + i64::from(len % width != 0);
    (width, count)
}

impl Plan {
    pub(crate) fn compile(window: &Window) -> Result<Plan, String> {
        let ms = |d: &Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1);
        Ok(match window {
            Window::Unbounded => Plan::Unbounded,
            Window::Sliding(d) => {
                let (width, count) = sliding_panes(*d);
                Plan::Panes { width, count }
            }
            Window::Tumbling(d) => Plan::Panes {
                width: ms(d),
                count: 1,
            },
            Window::Hopping { length, hop } => {
                let (length, hop) = (ms(length), ms(hop));
                if length % hop != 0 {
                    return Err(format!(
                        "a hopping window's length ({}) must be a multiple of its hop ({})",
                        super::spec::format_duration(Duration::from_millis(length as u64)),
                        super::spec::format_duration(Duration::from_millis(hop as u64)),
                    ));
                }
                if length / hop > super::spec::MAX_HOPS as i64 {
                    return Err(format!(
                        "a hopping window has at most {} hops",
                        super::spec::MAX_HOPS
                    ));
                }
                Plan::Panes {
                    width: hop,
                    count: length / hop,
                }
            }
            Window::Session(gap) => Plan::Session { gap: ms(gap) },
            Window::Calendar { period, tz } => Plan::Calendar {
                period: *period,
                tz: TimeZone::get(tz).map_err(|_| format!("unknown time zone `{tz}`"))?,
            },
        })
    }

    /// The longest a key's state can still matter after its latest event.
    pub(crate) fn horizon(&self) -> Option<Duration> {
        const HOUR: u64 = 3_600_000;
        const DAY: u64 = 24 * HOUR;
        match self {
            Plan::Unbounded => None,
            Plan::Panes { width, count } => Some(Duration::from_millis(
                width.saturating_mul(*count).max(0) as u64,
            )),
            Plan::Session { gap } => Some(Duration::from_millis((*gap).max(0) as u64)),
            // The longest local period: a DST change (or a zone's offset change) adds at
            // most a couple of hours to a period.
            Plan::Calendar { period, .. } => Some(Duration::from_millis(
                match period {
                    CalendarPeriod::Day => DAY,
                    CalendarPeriod::Week => 7 * DAY,
                    CalendarPeriod::Month => 31 * DAY,
                } + 2 * HOUR,
            )),
        }
    }
}

/// The pane holding time `t`.
pub(crate) fn pane_of(t: i64, width: i64) -> i64 {
    t.div_euclid(width.max(1))
}

/// The local calendar period containing `t` (epoch ms) as `[start, end)` epoch ms. Periods
/// start at the first instant of their first local day (midnight, or the end of a DST gap
/// that swallows midnight). `None` when `t` is outside jiff's range (years -9999..=9999).
pub(crate) fn calendar_bounds(t: i64, period: CalendarPeriod, tz: &TimeZone) -> Option<(i64, i64)> {
    let ts = Timestamp::from_millisecond(t).ok()?;
    let date = tz.to_datetime(ts).date();
    let start = match period {
        CalendarPeriod::Day => date,
        CalendarPeriod::Week => date
            .checked_sub(Span::new().days(i64::from(date.weekday().to_monday_zero_offset())))
            .ok()?,
        CalendarPeriod::Month => date.first_of_month(),
    };
    let end = match period {
        CalendarPeriod::Day => start.tomorrow().ok()?,
        CalendarPeriod::Week => start.checked_add(Span::new().days(7)).ok()?,
        CalendarPeriod::Month => start.checked_add(Span::new().months(1)).ok()?,
    };
    let (s, e) = (day_start(start, tz)?, day_start(end, tz)?);
    // Guard against a zone whose transitions would make the period empty or exclude `t`.
    (s <= t && t < e).then_some((s, e))
}

/// The first instant of local day `date` in `tz`, epoch ms.
fn day_start(date: Date, tz: &TimeZone) -> Option<i64> {
    let ts = tz
        .to_ambiguous_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
        .compatible()
        .ok()?;
    Some(ts.as_millisecond())
}
