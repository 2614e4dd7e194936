//! Detectors on real labelled series, judged by the NAB window score ([`crate::benchmark`]):
//! the quick, in-process form of `anom backtest --labels` on a corpus such as the Numenta
//! Anomaly Benchmark's (`anom detectors eval --labelled DIR`). Each series is one key, run
//! through one detector with its episodes and cool-down, exactly as the score stage does.
//!
//! A corpus directory holds `windows.json` (`[{start, end, key}]`, RFC 3339) and
//! `series/<category>/<name>.csv` (`timestamp,value` rows), the key being `<category>/<name>.csv`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::episode::Episode;
use super::{num, Detector};
use crate::benchmark::{self, Outcome};

/// One labelled series.
#[derive(Debug, Clone)]
pub struct Series {
    pub key: String,
    pub times: Vec<i64>,
    pub values: Vec<f64>,
    /// `(start, end)` in ms, inclusive.
    pub windows: Vec<(i64, i64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", .path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Reads a corpus directory (see the module docs); series in key order.
pub fn load(dir: &Path) -> Result<Vec<Series>, LoadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Io { path, source }
    };
    let windows_path = dir.join("windows.json");
    let text = std::fs::read_to_string(&windows_path).map_err(io(&windows_path))?;
    let parse = |line: usize, message: String| LoadError::Parse {
        path: windows_path.clone(),
        line,
        message,
    };
    let raw: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| parse(e.line(), e.to_string()))?;
    let mut windows: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for w in &raw {
        let field = |name: &str| {
            w.get(name)
                .and_then(|v| v.as_str())
                .ok_or_else(|| parse(0, format!("expected a string `{name}` in {w}")))
        };
        let time = |name: &str| -> Result<i64, LoadError> {
            let text = field(name)?;
            text.parse::<jiff::Timestamp>()
                .map(|t| t.as_millisecond())
                .map_err(|e| {
                    parse(
                        0,
                        format!("`{name}`: expected an RFC 3339 time, found {text}: {e}"),
                    )
                })
        };
        windows
            .entry(field("key")?.to_string())
            .or_default()
            .push((time("start")?, time("end")?));
    }
    let mut files = Vec::new();
    let series_dir = dir.join("series");
    for category in std::fs::read_dir(&series_dir).map_err(io(&series_dir))? {
        let category = category.map_err(io(&series_dir))?.path();
        if !category.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&category).map_err(io(&category))? {
            let file = file.map_err(io(&category))?.path();
            if file.extension().is_some_and(|e| e == "csv") {
                files.push(file);
            }
        }
    }
    let mut out = Vec::new();
    for file in files {
        let key = format!(
            "{}/{}",
            file.parent()
                .and_then(Path::file_name)
                .unwrap_or_default()
                .to_string_lossy(),
            file.file_name().unwrap_or_default().to_string_lossy()
        );
        let text = std::fs::read_to_string(&file).map_err(io(&file))?;
        let (mut times, mut values) = (Vec::new(), Vec::new());
        for (i, line) in text.lines().enumerate().skip(1) {
            let bad = |message: String| LoadError::Parse {
                path: file.clone(),
                line: i + 1,
                message,
            };
            let Some((t, v)) = line.split_once(',') else {
                continue;
            };
            let t = t
                .trim()
                .replace(' ', "T")
                .parse::<jiff::civil::DateTime>()
                .map_err(|e| {
                    bad(format!(
                        "expected a time like 2014-04-10 07:15:00, found {t}: {e}"
                    ))
                })?;
            let t = t
                .to_zoned(jiff::tz::TimeZone::UTC)
                .map_err(|e| bad(e.to_string()))?
                .timestamp()
                .as_millisecond();
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| bad(format!("expected a number, found {v}")))?;
            times.push(t);
            values.push(v);
        }
        let mut windows = windows.remove(&key).unwrap_or_default();
        windows.sort_unstable();
        out.push(Series {
            key,
            times,
            values,
            windows,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Event times of the alerts `detector` raises on `series` (univariate), with its episodes
/// and a cool-down of `cooldown_ms` after each alert, at `threshold`.
pub fn alerts(detector: &Detector, series: &Series, threshold: f64, cooldown_ms: i64) -> Vec<i64> {
    let mut state = detector.new_state();
    let mut episode = Episode::default();
    let mut out = Vec::new();
    for (&t, &v) in series.times.iter().zip(&series.values) {
        let r = detector.update(&mut state, &[v], t);
        if r.warm && episode.step(r.score >= threshold, t, cooldown_ms) {
            out.push(t);
        }
    }
    out
}

/// One detector's results on a corpus.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub events: u64,
    pub outcome: Outcome,
    /// Per series: key and outcome.
    pub series: Vec<(String, Outcome)>,
}

impl Row {
    /// Every alert, probation included, per 1,000 events.
    pub fn alerts_per_1000(&self) -> f64 {
        let all = self.outcome.alerts + self.outcome.probation_alerts;
        1000.0 * all as f64 / self.events.max(1) as f64
    }

    /// Alerts after probation per labelled window.
    pub fn alerts_per_window(&self) -> f64 {
        self.outcome.alerts as f64 / self.outcome.windows.max(1) as f64
    }

    /// Median delay from a window's start to its first alert, in ms.
    pub fn median_time_to_detect_ms(&self) -> Option<f64> {
        self.outcome.median_time_to_detect_ms()
    }
}

/// Runs `detector` over every series and scores it.
pub fn evaluate(
    name: &str,
    detector: &Detector,
    corpus: &[Series],
    threshold: f64,
    cooldown_ms: i64,
) -> Row {
    let mut row = Row {
        name: name.to_string(),
        events: 0,
        outcome: Outcome::default(),
        series: Vec::new(),
    };
    for s in corpus {
        let a = alerts(detector, s, threshold, cooldown_ms);
        let o = benchmark::score_series(&s.times, &s.windows, &a);
        row.events += s.times.len() as u64;
        row.outcome.add(&o);
        row.series.push((s.key.clone(), o));
    }
    row
}

/// A table of rows, as the docs show it.
pub struct Table<'a>(pub &'a [Row]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "| detector | window score | alerts per 1,000 events | alerts per window | windows detected | median time to detect | false alerts |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---:|")?;
        for r in self.0 {
            let o = &r.outcome;
            let ttd = r
                .median_time_to_detect_ms()
                .map(|ms| format!("{} h", num(ms / 3_600_000.0)))
                .unwrap_or_else(|| "–".into());
            writeln!(
                f,
                "| {} | {:.1} | {:.2} | {:.1} | {} of {} | {} | {} |",
                r.name,
                o.score().unwrap_or(0.0),
                r.alerts_per_1000(),
                r.alerts_per_window(),
                o.detected(),
                o.windows,
                ttd,
                o.false_alerts
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Kind;
    use super::*;

    /// Tuning aid: `ANOM_LABELLED=../shared/data/labelled-series cargo test -p anom-ml
    /// --release labelled -- --ignored --nocapture` prints every kind's table and per-series
    /// outcomes.
    #[test]
    #[ignore]
    fn labelled_corpus_table() {
        let dir = std::env::var("ANOM_LABELLED").expect("ANOM_LABELLED: the corpus directory");
        let corpus = load(Path::new(&dir)).unwrap();
        let cooldown: i64 = std::env::var("ANOM_COOLDOWN_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(super::super::episode::DEFAULT_COOLDOWN_MS);
        let mut rows = Vec::new();
        for kind in Kind::ALL.iter().filter(|k| !k.multivariate()) {
            let params = std::env::var("ANOM_PARAMS")
                .ok()
                .map(|p| serde_json::from_str(&p).unwrap())
                .unwrap_or(serde_json::Value::Null);
            let d = Detector::new(*kind, &params, None, 1).unwrap();
            let threshold = std::env::var("ANOM_THRESHOLD")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.default_threshold());
            let row = evaluate(kind.name(), &d, &corpus, threshold, cooldown);
            if std::env::var("ANOM_VERBOSE").is_ok() {
                for (key, o) in &row.series {
                    println!(
                        "{:<14} {:<60} {:>6.2} alerts {:>3} false {:>3} detected {}/{}",
                        kind.name(),
                        key,
                        o.raw,
                        o.alerts,
                        o.false_alerts,
                        o.detected(),
                        o.windows
                    );
                }
            }
            rows.push(row);
        }
        println!("{}", Table(&rows));
    }
}
