//! Reports for people: Markdown (terminals, pull requests) and a self-contained HTML page
//! with the plot.

use std::fmt::Write;

use super::plot::{self, escape, time};
use super::report::{AlertRow, Comparison, Report};

/// How many alerts a rendered report lists (the JSON has them all).
const LISTED: usize = 100;

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.1}%", v * 100.0))
}

fn summary(r: &Report) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        (
            "Pipeline",
            format!(
                "{} (version {}, {})",
                r.pipeline,
                r.version,
                short(&r.digest)
            ),
        ),
        (
            "Stream read",
            format!("{}: {} messages", r.stream, r.messages),
        ),
        (
            "Event time",
            match (r.first_event_ms, r.last_event_ms) {
                (Some(a), Some(b)) => format!("{} – {}", time(a), time(b)),
                _ => "no events".into(),
            },
        ),
        ("Events", r.events.to_string()),
        (
            "Refused",
            if r.rejected.is_empty() {
                "0".into()
            } else {
                r.rejected
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("Late", r.late.to_string()),
        ("Alerts", r.alerts.len().to_string()),
        (
            "Alerts per 1,000 events",
            format!("{:.2}", r.alerts_per_1000_events),
        ),
        (
            "Speed",
            format!("{:.0} messages/s ({:.2} s)", r.messages_per_s, r.seconds),
        ),
    ];
    if let Some(s) = &r.scores {
        rows.push((
            "Precision / recall / F1 (events)",
            format!("{} / {} / {}", pct(s.precision), pct(s.recall), pct(s.f1)),
        ));
        rows.push((
            "Labelled windows",
            format!(
                "{} detected, {} missed, {} alerts outside any",
                s.windows_detected, s.windows_missed, s.false_alerts
            ),
        ));
        if let Some(t) = s.time_to_detect {
            rows.push((
                "Time to detect",
                format!(
                    "mean {}, median {}, max {}",
                    duration(t.mean_ms),
                    duration(t.median_ms),
                    duration(t.max_ms)
                ),
            ));
        }
        if let Some(w) = s.window_score {
            rows.push(("Window score (NAB standard, 0–100)", format!("{w:.1}")));
        }
    }
    rows
}

/// Per detector: name (kind), its threshold, flags per day and window score there, the best
/// threshold (with its score) and the one within the budget (with its flags per day).
fn threshold_rows(r: &Report) -> Vec<Vec<String>> {
    let score = |s: Option<f64>| s.map_or("–".into(), |s| format!("{s:.1}"));
    r.thresholds
        .iter()
        .map(|t| {
            vec![
                format!("{} ({})", t.detector, t.kind),
                format!("{} {}", t.anomalous, plot_number(t.current.threshold)),
                format!("{:.2}", t.current.flags_per_day),
                score(t.current.window_score),
                t.best.as_ref().map_or("–".into(), |b| {
                    format!(
                        "{} (score {})",
                        plot_number(b.threshold),
                        score(b.window_score)
                    )
                }),
                t.within_budget.as_ref().map_or("–".into(), |b| {
                    format!("{} ({:.2}/day)", plot_number(b.threshold), b.flags_per_day)
                }),
            ]
        })
        .collect()
}

fn plot_number(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

fn duration(ms: f64) -> String {
    let s = ms / 1000.0;
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

fn md_alerts(out: &mut String, alerts: &[AlertRow]) {
    let _ = writeln!(
        out,
        "| fired (event time) | rule | severity | key | resolved | count | message |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for a in alerts.iter().take(LISTED) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            time(a.fired_ms),
            a.rule,
            a.severity,
            a.key,
            a.resolved_ms.map_or("–".into(), time),
            a.count,
            a.message.replace('|', "\\|")
        );
    }
    if alerts.len() > LISTED {
        let _ = writeln!(
            out,
            "\n… and {} more (see the JSON report).",
            alerts.len() - LISTED
        );
    }
}

pub fn markdown(r: &Report) -> String {
    let mut out = format!("# Backtest of `{}`\n\n| | |\n|---|---|\n", r.pipeline);
    for (k, v) in summary(r) {
        let _ = writeln!(out, "| {k} | {v} |");
    }
    let _ = writeln!(
        out,
        "\n## Rules and detectors\n\n| name | kind | detections | alerts |\n|---|---|---|---|"
    );
    for c in &r.causes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            c.name, c.kind, c.detections, c.alerts
        );
    }
    if !r.thresholds.is_empty() {
        let _ = writeln!(
            out,
            "\n## Thresholds\n\n| detector | threshold | flags/day | window score | best threshold | within budget |\n|---|---|---|---|---|---|"
        );
        for row in threshold_rows(r) {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
    }
    let _ = writeln!(out, "\n## Alerts per day\n\n| day | alerts |\n|---|---|");
    for (day, n) in &r.alerts_per_day {
        let _ = writeln!(out, "| {day} | {n} |");
    }
    let _ = writeln!(out, "\n## Alerts\n");
    md_alerts(&mut out, &r.alerts);
    out
}

pub fn markdown_comparison(c: &Comparison) -> String {
    let mut out = format!(
        "# Backtest of `{}`: version {} vs {}\n\n| | {} | {} |\n|---|---|---|\n",
        c.a.pipeline, c.a.version, c.b.version, c.a.version, c.b.version
    );
    for ((k, a), (_, b)) in summary(&c.a).into_iter().zip(summary(&c.b)) {
        let _ = writeln!(out, "| {k} | {a} | {b} |");
    }
    let _ = writeln!(
        out,
        "\n## Only version {} ({} alerts)\n",
        c.a.version,
        c.only_a.len()
    );
    md_alerts(&mut out, &c.only_a);
    let _ = writeln!(
        out,
        "\n## Only version {} ({} alerts)\n",
        c.b.version,
        c.only_b.len()
    );
    md_alerts(&mut out, &c.only_b);
    out
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}\
th{background:#f3f3f3}";

fn html_table(out: &mut String, head: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    out.push_str("<table><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn alert_cells(a: &AlertRow) -> Vec<String> {
    vec![
        time(a.fired_ms),
        a.rule.clone(),
        a.severity.clone(),
        a.key.clone(),
        a.resolved_ms.map_or("–".into(), time),
        a.count.to_string(),
        a.message.clone(),
    ]
}

const ALERT_HEAD: [&str; 7] = [
    "fired (event time)",
    "rule",
    "severity",
    "key",
    "resolved",
    "count",
    "message",
];

fn html_body(out: &mut String, r: &Report) {
    html_table(
        out,
        &["", ""],
        summary(r).into_iter().map(|(k, v)| vec![k.to_string(), v]),
    );
    match &r.plot {
        Some(s) => out.push_str(&plot::svg(s)),
        None => out.push_str("<p>No plot: run with <code>--plot-key KEY</code> (and <code>--plot-field FIELD</code>) to plot a key's series with its detections.</p>"),
    }
    out.push_str("<h2>Rules and detectors</h2>");
    html_table(
        out,
        &["name", "kind", "detections", "alerts"],
        r.causes.iter().map(|c| {
            vec![
                c.name.clone(),
                c.kind.clone(),
                c.detections.to_string(),
                c.alerts.to_string(),
            ]
        }),
    );
    if !r.thresholds.is_empty() {
        out.push_str("<h2>Thresholds</h2><p>What each detector would have flagged at other thresholds (its scores replayed through its episodes and cool-down).</p>");
        html_table(
            out,
            &[
                "detector",
                "threshold",
                "flags/day",
                "window score",
                "best threshold",
                "within budget",
            ],
            threshold_rows(r),
        );
        for t in &r.thresholds {
            out.push_str(&plot::threshold_curve(t));
        }
    }
    out.push_str("<h2>Alerts per day</h2>");
    html_table(
        out,
        &["day", "alerts"],
        r.alerts_per_day
            .iter()
            .map(|(d, n)| vec![d.clone(), n.to_string()]),
    );
    out.push_str("<h2>Alerts</h2>");
    html_table(
        out,
        &ALERT_HEAD,
        r.alerts.iter().take(LISTED).map(alert_cells),
    );
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{0}</title><style>{STYLE}</style></head><body><h1>{0}</h1>{body}</body></html>\n",
        escape(title)
    )
}

pub fn html(r: &Report) -> String {
    let mut body = String::new();
    html_body(&mut body, r);
    page(&format!("Backtest of {}", r.pipeline), &body)
}

pub fn html_comparison(c: &Comparison) -> String {
    let mut body = String::new();
    for (r, only) in [(&c.a, &c.only_a), (&c.b, &c.only_b)] {
        let _ = write!(body, "<h2>Version {}</h2>", escape(&r.version));
        html_body(&mut body, r);
        let _ = write!(
            body,
            "<h3>Only version {} ({} alerts)</h3>",
            escape(&r.version),
            only.len()
        );
        html_table(
            &mut body,
            &ALERT_HEAD,
            only.iter().take(LISTED).map(alert_cells),
        );
    }
    page(
        &format!(
            "Backtest of {}: version {} vs {}",
            c.a.pipeline, c.a.version, c.b.version
        ),
        &body,
    )
}
