//! Episodes: which readings alert. A key is in an anomalous episode while its score is at or
//! past the threshold; only the reading that opens an episode alerts, so a lasting level shift
//! or a long excursion raises one alert. After an alert, the key's next episodes stay silent
//! for a cool-down (in event time), so a noisy stretch around one incident is one alert too.

use serde::{Deserialize, Serialize};

/// The default cool-down after an alert, in event time.
pub const DEFAULT_COOLDOWN_MS: i64 = 12 * 3_600_000;

/// One (key, detector)'s episode state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    /// The last reading was at or past the threshold.
    pub open: bool,
    /// Event time of the last alert.
    pub alerted_ms: Option<i64>,
}

impl Episode {
    /// Whether a reading at event time `t_ms` alerts: it is `anomalous`, opens an episode,
    /// and comes at least `cooldown_ms` after the key's last alert.
    pub fn step(&mut self, anomalous: bool, t_ms: i64, cooldown_ms: i64) -> bool {
        let opens = anomalous && !self.open;
        self.open = anomalous;
        let quiet = self
            .alerted_ms
            .is_some_and(|a| t_ms.saturating_sub(a) < cooldown_ms);
        let alerts = opens && !quiet;
        if alerts {
            self.alerted_ms = Some(t_ms);
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alert_per_episode_and_none_during_the_cool_down() {
        let mut e = Episode::default();
        let steps = [
            (true, 0, true),    // opens
            (true, 1, false),   // same episode
            (false, 2, false),  // closes
            (true, 3, false),   // a new episode within the cool-down of 10
            (false, 4, false),  //
            (true, 12, true),   // past the cool-down
            (false, 13, false), //
            (true, 100, true),  // and again
        ];
        for (anomalous, t, alerts) in steps {
            assert_eq!(e.step(anomalous, t, 10), alerts, "at {t}");
        }
        // Without a cool-down every new episode alerts.
        let mut e = Episode::default();
        let got: Vec<bool> = [true, false, true, true]
            .iter()
            .enumerate()
            .map(|(t, &a)| e.step(a, t as i64, 0))
            .collect();
        assert_eq!(got, [true, false, true, false]);
    }
}
