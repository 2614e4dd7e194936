//! The plot of a key's series as SVG: the values as a line, labelled windows shaded,
//! detections as dots and alerts as red markers. Written directly (a few elements with
//! fixed layout) rather than through a plotting library: no fonts to load, and the same
//! report gives byte-identical SVG.

use std::fmt::Write;

use super::report::Series;
use super::thresholds::DetectorThresholds;

const W: f64 = 900.0;
const H: f64 = 300.0;
const PAD_L: f64 = 70.0;
const PAD_R: f64 = 20.0;
const PAD_T: f64 = 30.0;
const PAD_B: f64 = 40.0;

/// Escapes text for XML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn svg(series: &Series) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        out,
        r#"<text x="{PAD_L}" y="18">{} of key {}</text>"#,
        escape(&series.field),
        escape(&series.key)
    );
    let times = series
        .points
        .iter()
        .map(|p| p.0)
        .chain(series.detections.iter().copied())
        .chain(series.alerts.iter().copied());
    let (t0, t1) = times.fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(t), b.max(t)));
    if t0 > t1 {
        let _ = write!(out, r#"<text x="{PAD_L}" y="60">no events</text></svg>"#);
        return out;
    }
    let (v0, v1) = series
        .points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let (v0, v1) = if v0.is_finite() && v1 > v0 {
        (v0, v1)
    } else if v0.is_finite() {
        (v0 - 1.0, v0 + 1.0)
    } else {
        (0.0, 1.0)
    };
    let span = (t1 - t0).max(1) as f64;
    let x = |t: i64| PAD_L + (t - t0) as f64 / span * (W - PAD_L - PAD_R);
    let y = |v: f64| H - PAD_B - (v - v0) / (v1 - v0) * (H - PAD_T - PAD_B);
    for &(s, e) in &series.windows {
        let (a, b) = (x(s.max(t0)), x(e.min(t1)));
        let _ = write!(
            out,
            r##"<rect x="{a:.1}" y="{PAD_T}" width="{:.1}" height="{:.1}" fill="#f5c542" fill-opacity="0.3"><title>labelled window</title></rect>"##,
            (b - a).max(2.0),
            H - PAD_T - PAD_B
        );
    }
    // Axes, with the value range and the time range at their ends.
    let _ = write!(
        out,
        r##"<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{}" stroke="#444"/><line x1="{PAD_L}" y1="{0}" x2="{}" y2="{0}" stroke="#444"/>"##,
        H - PAD_B,
        W - PAD_R
    );
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">{}</text>"#,
        PAD_L - 6.0,
        y(v1) + 4.0,
        number(v1),
        PAD_L - 6.0,
        y(v0) + 4.0,
        number(v0)
    );
    let _ = write!(
        out,
        r#"<text x="{PAD_L}" y="{}">{}</text><text x="{}" y="{}" text-anchor="end">{}</text>"#,
        H - 12.0,
        time(t0),
        W - PAD_R,
        H - 12.0,
        time(t1)
    );
    if !series.points.is_empty() {
        out.push_str(r##"<polyline fill="none" stroke="#2f6fdf" stroke-width="1.2" points=""##);
        for &(t, v) in &series.points {
            let _ = write!(out, "{:.1},{:.1} ", x(t), y(v));
        }
        out.push_str(r#""/>"#);
    }
    let value_at = |t: i64| {
        series
            .points
            .iter()
            .find(|p| p.0 >= t)
            .or(series.points.last())
            .map_or(v0, |p| p.1)
    };
    for &t in &series.detections {
        let _ = write!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#e07b00"><title>detection at {}</title></circle>"##,
            x(t),
            y(value_at(t)),
            time(t)
        );
    }
    for &t in &series.alerts {
        let _ = write!(
            out,
            r##"<line x1="{0:.1}" y1="{PAD_T}" x2="{0:.1}" y2="{1}" stroke="#d62728" stroke-dasharray="4 3"><title>alert fired at {2}</title></line>"##,
            x(t),
            H - PAD_B,
            time(t)
        );
    }
    out.push_str("</svg>");
    out
}

/// One detector's threshold curve: flags per day (blue, left axis) and, with labels, the
/// window score (orange, right axis) against the threshold; the configured threshold dashed,
/// the best one green, the one within the budget red.
pub fn threshold_curve(t: &DetectorThresholds) -> String {
    const CW: f64 = 600.0;
    const CH: f64 = 220.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {CW} {CH}" width="{CW}" height="{CH}" font-family="sans-serif" font-size="12"><text x="{PAD_L}" y="18">{}: flags per day and window score by threshold</text>"#,
        escape(&t.detector)
    );
    let (x0, x1) = t
        .curve
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.threshold), b.max(p.threshold))
        });
    if !(x0.is_finite() && x1.is_finite()) {
        out.push_str(r#"<text x="70" y="60">no scores</text></svg>"#);
        return out;
    }
    let span = if x1 > x0 { x1 - x0 } else { 1.0 };
    let x = |v: f64| PAD_L + (v - x0) / span * (CW - PAD_L - PAD_L);
    let top = t
        .curve
        .iter()
        .map(|p| p.flags_per_day)
        .fold(0.0, f64::max)
        .max(1e-9);
    let yf = |v: f64| CH - PAD_B - v / top * (CH - PAD_T - PAD_B);
    let ys = |v: f64| CH - PAD_B - (v.clamp(-100.0, 100.0) + 100.0) / 200.0 * (CH - PAD_T - PAD_B);
    let _ = write!(
        out,
        r##"<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{0}" stroke="#444"/><line x1="{PAD_L}" y1="{0}" x2="{1}" y2="{0}" stroke="#444"/><text x="{2}" y="{3}" text-anchor="end" fill="#2f6fdf">{4}/day</text><text x="{2}" y="{0}" text-anchor="end">0</text><text x="{PAD_L}" y="{5}">{6}</text><text x="{1}" y="{5}" text-anchor="end">{7}</text>"##,
        CH - PAD_B,
        CW - PAD_L,
        PAD_L - 6.0,
        PAD_T + 4.0,
        number(top),
        CH - 14.0,
        number(x0),
        number(x1),
    );
    out.push_str(r##"<polyline fill="none" stroke="#2f6fdf" stroke-width="1.5" points=""##);
    for p in &t.curve {
        let _ = write!(out, "{:.1},{:.1} ", x(p.threshold), yf(p.flags_per_day));
    }
    out.push_str(r#""/>"#);
    if t.curve.iter().any(|p| p.window_score.is_some()) {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" fill="#e07b00">score 100</text><text x="{0}" y="{}" fill="#e07b00">−100</text><polyline fill="none" stroke="#e07b00" stroke-width="1.5" points=""##,
            CW - PAD_L + 4.0,
            PAD_T + 4.0,
            CH - PAD_B
        );
        for p in &t.curve {
            if let Some(s) = p.window_score {
                let _ = write!(out, "{:.1},{:.1} ", x(p.threshold), ys(s));
            }
        }
        out.push_str(r#""/>"#);
    }
    for (p, colour, what) in [
        (Some(&t.current), "#444", "configured"),
        (t.best.as_ref(), "#2ca02c", "best window score"),
        (t.within_budget.as_ref(), "#d62728", "within the budget"),
    ] {
        if let Some(p) = p {
            let _ = write!(
                out,
                r##"<line x1="{0:.1}" y1="{PAD_T}" x2="{0:.1}" y2="{1}" stroke="{colour}" stroke-dasharray="4 3"><title>{what}: threshold {2}</title></line>"##,
                x(p.threshold),
                CH - PAD_B,
                number(p.threshold)
            );
        }
    }
    out.push_str("</svg>");
    out
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_marks_each_detection_alert_and_window() {
        let s = Series {
            key: "card-<1>".into(),
            field: "amount".into(),
            points: vec![(0, 10.0), (1_000, 20.0), (2_000, 500.0)],
            detections: vec![2_000],
            alerts: vec![2_000],
            windows: vec![(1_500, 2_000)],
            lines: Default::default(),
        };
        let svg = svg(&s);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("amount of key card-&lt;1&gt;"));
        assert_eq!(svg.matches("<circle").count(), 1);
        assert_eq!(svg.matches("alert fired at").count(), 1);
        assert_eq!(svg.matches("labelled window").count(), 1);
        // Three points: the last at the right edge, at the top.
        assert!(
            svg.contains(&format!("{:.1},{:.1} ", W - PAD_R, PAD_T)),
            "{svg}"
        );
        assert!(super::svg(&Series::default()).contains("no events"));
    }

    #[test]
    fn the_threshold_curve_marks_its_thresholds() {
        use crate::backtest::thresholds::Point;
        let p = |threshold: f64, flags_per_day: f64, score: f64| Point {
            threshold,
            flags_per_day,
            window_score: Some(score),
            ..Point::default()
        };
        let t = DetectorThresholds {
            detector: "d".into(),
            curve: vec![p(0.1, 40.0, -20.0), p(0.5, 4.0, 60.0), p(0.9, 1.0, 30.0)],
            current: p(0.5, 4.0, 60.0),
            best: Some(p(0.5, 4.0, 60.0)),
            within_budget: Some(p(0.9, 1.0, 30.0)),
            ..DetectorThresholds::default()
        };
        let svg = threshold_curve(&t);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("best window score: threshold 0.50"), "{svg}");
        assert!(svg.contains("within the budget: threshold 0.90"), "{svg}");
        assert!(threshold_curve(&DetectorThresholds::default()).contains("no scores"));
    }
}
