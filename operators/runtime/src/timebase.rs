//! What "now" is for a stage. Live, the wall clock. In a backtest, event time: the newest
//! event time the stage has seen, so that windows, absence timers and alert timeouts run
//! as they would have when the events happened, however fast they are replayed.
//!
//! [`wall_ms`] is the one reading of the wall clock in ms that every part uses.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Default)]
pub enum Timebase {
    #[default]
    Wall,
    /// The newest event time observed (epoch ms), shared by the clones of one timebase.
    Events(Arc<AtomicI64>),
}

impl Timebase {
    /// An event-time base starting at `start_ms`.
    pub fn events(start_ms: i64) -> Timebase {
        Timebase::Events(Arc::new(AtomicI64::new(start_ms)))
    }

    pub fn now_ms(&self) -> i64 {
        match self {
            Timebase::Wall => wall_ms(),
            Timebase::Events(t) => t.load(Ordering::Relaxed),
        }
    }

    pub fn now_us(&self) -> i64 {
        match self {
            Timebase::Wall => wall_us(),
            Timebase::Events(t) => t.load(Ordering::Relaxed).saturating_mul(1000),
        }
    }

    pub fn is_events(&self) -> bool {
        matches!(self, Timebase::Events(_))
    }

    /// An event was seen: event time moves forward to it (never back). The wall clock does
    /// not care.
    pub fn observe(&self, event_ms: i64) {
        if let Timebase::Events(t) = self {
            t.fetch_max(event_ms, Ordering::Relaxed);
        }
    }
}

/// The wall clock, in ms since the Unix epoch (0 before it).
pub fn wall_ms() -> i64 {
    wall_us() / 1000
}

/// The wall clock, in µs since the Unix epoch (0 before it).
pub fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_time_only_moves_forward_and_is_shared_by_clones() {
        let t = Timebase::events(1_000);
        let seen_by_another_stage = t.clone();
        t.observe(5_000);
        t.observe(3_000);
        assert_eq!(seen_by_another_stage.now_ms(), 5_000);
        assert_eq!(t.now_us(), 5_000_000);
        let wall = Timebase::Wall;
        wall.observe(0);
        assert!(wall.now_ms() > 1_700_000_000_000);
    }
}
