//! The Grafana dashboard in k8s/grafana is valid JSON and only queries metrics the code
//! exports, filtered by the labels those metrics really have.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anom_runtime::metrics::{AlertLabels, Metrics, PipelineLabels, SinkLabels};
use regex::Regex;
use serde_json::Value;

const DATASOURCE: &str = "${datasource}";

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../k8s/grafana/anom-dashboard.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid JSON: {e}"))
}

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn title(panel: &Value) -> String {
    format!(
        "panel {} ({:?})",
        panel["id"],
        panel["title"].as_str().unwrap_or("untitled")
    )
}

/// Every `expr` of every target under `value`, recursively.
fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "targets" {
                    for target in child.as_array().into_iter().flatten() {
                        if let Some(expr) = target.get("expr").and_then(Value::as_str) {
                            out.push(expr.to_string());
                        }
                    }
                }
                exprs(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| exprs(item, out)),
        _ => {}
    }
}

fn references_datasource_variable(datasource: &Value) -> bool {
    match datasource {
        Value::String(s) => s == DATASOURCE,
        Value::Object(map) => map.get("uid").and_then(Value::as_str) == Some(DATASOURCE),
        _ => false,
    }
}

/// Family name to OpenMetrics type, from the `# TYPE` lines.
fn families(exposition: &str) -> HashMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// The family a sample name belongs to: the name itself for gauges, otherwise the name
/// without the suffix its type adds (`_total` for counters, `_bucket`/`_sum`/`_count` for
/// histograms).
fn family_of(sample: &str, families: &HashMap<String, String>) -> Result<String, String> {
    if let Some(kind) = families.get(sample) {
        if matches!(kind.as_str(), "gauge" | "unknown" | "stateset") {
            return Ok(sample.to_string());
        }
        return Err(format!(
            "{sample} is a {kind}; query it as {sample}_{}",
            if kind == "counter" { "total" } else { "bucket" }
        ));
    }
    for (suffix, kinds) in [
        ("_total", &["counter"][..]),
        ("_bucket", &["histogram", "gaugehistogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
    ] {
        if let Some(family) = sample.strip_suffix(suffix) {
            return match families.get(family) {
                Some(kind) if kinds.contains(&kind.as_str()) => Ok(family.to_string()),
                Some(kind) => Err(format!(
                    "{sample}: {family} is a {kind}, which has no {suffix} series"
                )),
                None => Err(format!(
                    "{sample}: no `# TYPE {family} ` line in Metrics::encode() (not exported, or populated() gives it no series)"
                )),
            };
        }
    }
    Err(format!(
        "{sample}: no `# TYPE {sample} ` line in Metrics::encode() (not exported, or populated() gives it no series)"
    ))
}

/// Metrics with one series in every family: the registry leaves a family out of the
/// exposition, `# TYPE` line included, until it has a series. The series also tell which
/// labels each family has.
fn populated() -> Metrics {
    let metrics = Metrics::new();
    let stage = metrics.stage("p", "s");
    stage.pending("c").set(1);
    stage.dead_letter("p", "r");
    metrics
        .alerts
        .get_or_create(&AlertLabels {
            pipeline: "p".into(),
            severity: "critical".into(),
        })
        .inc();
    metrics
        .ingest_to_alert_seconds
        .get_or_create(&PipelineLabels {
            pipeline: "p".into(),
        })
        .observe(0.1);
    metrics
        .sink_deliveries
        .get_or_create(&SinkLabels {
            pipeline: "p".into(),
            sink: "webhook".into(),
            outcome: "delivered".into(),
        })
        .inc();
    metrics
}

/// Family name to the label names of its series (`le` and `quantile` excluded).
fn labels(
    exposition: &str,
    families: &HashMap<String, String>,
) -> HashMap<String, BTreeSet<String>> {
    let sample = Regex::new(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? ").unwrap();
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)=""#).unwrap();
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some(caps) = sample.captures(line) else {
            continue;
        };
        let Ok(family) = family_of(&caps[1], families) else {
            continue;
        };
        let names = out.entry(family).or_default();
        let Some(set) = caps.get(2) else {
            continue;
        };
        for name in label.captures_iter(set.as_str()) {
            if !matches!(&name[1], "le" | "quantile") {
                names.insert(name[1].to_string());
            }
        }
    }
    out
}

#[test]
fn the_grafana_dashboard_only_queries_exported_metrics() {
    let dashboard = dashboard();
    assert_eq!(dashboard["schemaVersion"], 39, "schemaVersion");

    let mut expressions = Vec::new();
    exprs(&dashboard["panels"], &mut expressions);
    assert!(
        expressions.len() >= 12,
        "expected at least 12 panel queries, found {}",
        expressions.len()
    );

    let exposition = populated().encode();
    let families = families(&exposition);
    let labels = labels(&exposition, &families);

    let metric = Regex::new(r"anom_[a-z0-9_]+").unwrap();
    let selector = Regex::new(r"(anom_[a-z0-9_]+)\s*(?:\{([^}]*)\})?").unwrap();
    let matcher = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)""#).unwrap();
    let mut errors = Vec::new();

    // Template variable queries name metrics too.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .clone();
    let variable_queries: BTreeSet<String> = variables
        .iter()
        .flat_map(|v| [&v["definition"], &v["query"], &v["query"]["query"]])
        .filter_map(|q| q.as_str().map(str::to_string))
        .collect();
    for text in expressions.iter().chain(&variable_queries) {
        for name in metric.find_iter(text) {
            if let Err(e) = family_of(name.as_str(), &families) {
                errors.push(format!("{e} (in `{text}`)"));
            }
        }
    }

    // Every selector filters by $pipeline and $stage when the metric has those labels, and
    // matches no label it lacks.
    for expr in &expressions {
        for caps in selector.captures_iter(expr) {
            let name = &caps[1];
            let Ok(family) = family_of(name, &families) else {
                continue;
            };
            let Some(has) = labels.get(&family) else {
                errors.push(format!(
                    "{family} has no series in populated(); add one to learn its labels"
                ));
                continue;
            };
            let used: BTreeMap<String, (String, String)> = caps
                .get(2)
                .map(|m| {
                    matcher
                        .captures_iter(m.as_str())
                        .map(|c| (c[1].to_string(), (c[2].to_string(), c[3].to_string())))
                        .collect()
                })
                .unwrap_or_default();
            for label in ["pipeline", "stage"] {
                let wanted = (String::from("=~"), format!("${label}"));
                if has.contains(label) && used.get(label) != Some(&wanted) {
                    errors.push(format!(
                        "{name} is not filtered by {label}=~\"${label}\" in `{expr}`"
                    ));
                }
            }
            for label in used.keys().filter(|l| !has.contains(*l)) {
                errors.push(format!(
                    "{name} has no label {label} (it has {has:?}) in `{expr}`"
                ));
            }
        }
    }

    // Every variable the queries use is defined.
    let defined: BTreeSet<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for wanted in ["datasource", "pipeline", "stage"] {
        if !defined.contains(wanted) {
            errors.push(format!("template variable {wanted} is missing"));
        }
    }
    let reference = Regex::new(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)").unwrap();
    for text in expressions.iter().chain(&variable_queries) {
        for caps in reference.captures_iter(text) {
            let name = &caps[1];
            if !name.starts_with("__") && !defined.contains(name) {
                errors.push(format!("undefined variable ${name} in `{text}`"));
            }
        }
    }

    // Panels: unique ids, the datasource variable, and a layout without overlaps.
    let panels = panels(&dashboard);
    let mut ids = HashMap::new();
    for panel in &panels {
        let Some(id) = panel["id"].as_u64() else {
            errors.push(format!("{} has no numeric id", title(panel)));
            continue;
        };
        if let Some(other) = ids.insert(id, title(panel)) {
            errors.push(format!("{} reuses the id of {other}", title(panel)));
        }
        if panel["type"] == "row" {
            continue;
        }
        if !references_datasource_variable(&panel["datasource"]) {
            errors.push(format!(
                "{} does not use the {DATASOURCE} datasource: {}",
                title(panel),
                panel["datasource"]
            ));
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if targets.is_empty() {
            errors.push(format!("{} has no targets", title(panel)));
        }
        for target in targets {
            if target.get("datasource").is_some()
                && !references_datasource_variable(&target["datasource"])
            {
                errors.push(format!(
                    "{} target {} does not use the {DATASOURCE} datasource",
                    title(panel),
                    target["refId"]
                ));
            }
        }
    }
    // Panels inside collapsed rows are laid out when expanded, so only the top level is checked.
    let top: Vec<(&Value, [u64; 4])> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|panel| {
            let pos = &panel["gridPos"];
            let field = |k: &str| pos[k].as_u64();
            match (field("x"), field("y"), field("w"), field("h")) {
                (Some(x), Some(y), Some(w), Some(h)) => Some((panel, [x, y, w, h])),
                _ => {
                    errors.push(format!("{} has no complete gridPos", title(panel)));
                    None
                }
            }
        })
        .collect();
    for (i, (a, [ax, ay, aw, ah])) in top.iter().enumerate() {
        if ax + aw > 24 || *aw == 0 || *ah == 0 {
            errors.push(format!("{} does not fit the 24-column grid", title(a)));
        }
        for (b, [bx, by, bw, bh]) in &top[i + 1..] {
            if ax < &(bx + bw) && bx < &(ax + aw) && ay < &(by + bh) && by < &(ay + ah) {
                errors.push(format!("{} overlaps {}", title(a), title(b)));
            }
        }
    }

    assert!(
        errors.is_empty(),
        "k8s/grafana/anom-dashboard.json:\n  {}",
        errors.join("\n  ")
    );
}
