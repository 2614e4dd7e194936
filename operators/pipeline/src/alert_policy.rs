//! The `alerts:` section: which labels make an alert, when it resolves without an end
//! condition, how notifications are routed, grouped and inhibited, and the sinks. Checked and
//! compiled here into an [`AlertPolicy`] the alert stage and the notifiers use as is.

use crate::diagnostics::Diagnostics;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::sinks::SinkDef;
use crate::matcher::{self, Matcher};

/// Alert lifecycle and notification settings. Every field has a default, so a pipeline
/// without an `alerts:` section still gets one alert per (rule, key), grouped notifications
/// and critical alerts muting the warnings of their key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsDef {
    /// Event fields copied into each alert's labels. They are part of its identity: with
    /// `labels: [region]` a key firing in two regions has two alerts.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Resolve an alert that saw no detection for this long (default: never; alerts resolve
    /// by their end condition or by hand).
    #[serde(default)]
    pub resolve_timeout: Option<Dur>,
    /// The routing tree (default: every sink gets every alert, grouped by rule).
    #[serde(default)]
    pub route: RouteDef,
    /// Inhibitions (default: a firing critical alert mutes the warning and info alerts of
    /// the same key). `[]` turns them off.
    #[serde(default)]
    pub inhibit: Option<Vec<Inhibit>>,
    /// Where notifications go besides the pipeline's NATS alert stream.
    #[serde(default)]
    pub sinks: Vec<SinkDef>,
}

/// A duration field that may be absent.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(transparent)]
pub struct Dur(#[serde(with = "anom_lang::duration")] pub Duration);

/// A node of the routing tree, as in Alertmanager: an alert goes down the first child whose
/// `match` holds (and on to later siblings when that child says `continue: true`); a node no
/// child takes it from notifies its own sinks. Unset fields are inherited from the parent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDef {
    /// Matchers that must all hold: `severity=critical`, `region=~eu-.*`.
    #[serde(default, rename = "match")]
    pub matchers: Vec<Matcher>,
    /// Sink names (the root's default: every sink).
    #[serde(default)]
    pub sinks: Option<Vec<String>>,
    /// Labels whose values split alerts into groups; `[...]` groups by every label (one
    /// notification per alert). Root default: `[rule]`.
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    /// How long a new group waits for more alerts before its first notification (default 10s).
    #[serde(default)]
    pub group_wait: Option<Dur>,
    /// How long a group waits before notifying about alerts added to it (default 1m).
    #[serde(default)]
    pub group_interval: Option<Dur>,
    /// How long before a still-firing group is notified again (default 4h).
    #[serde(default)]
    pub repeat_interval: Option<Dur>,
    /// Go on to the next sibling even after this route matched.
    #[serde(default, rename = "continue")]
    pub continue_: bool,
    #[serde(default)]
    pub routes: Vec<RouteDef>,
}

/// The compiled `alerts:` section.
#[derive(Debug, Clone)]
pub struct AlertPolicy {
    /// Event fields that become labels: (label, row index).
    pub labels: Vec<(String, usize)>,
    pub resolve_timeout: Option<Duration>,
    pub route: Route,
    pub inhibit: Vec<Inhibit>,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Position in the tree (`0`, `0.1`, `0.1.0`): part of the group key.
    pub path: String,
    pub matchers: Vec<Matcher>,
    pub sinks: Vec<String>,
    pub group: Grouping,
    pub continue_: bool,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Grouping {
    /// `None`: every label (each alert its own group).
    pub by: Option<Vec<String>>,
    pub wait: Duration,
    pub interval: Duration,
    pub repeat: Duration,
}

/// Mutes `target` alerts while a `source` alert with the same `equal` labels fires (used as
/// written: matchers are compiled when they are read).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inhibit {
    pub source: Vec<Matcher>,
    pub target: Vec<Matcher>,
    #[serde(default)]
    pub equal: Vec<String>,
}

impl Route {
    /// The routes that take an alert with these labels (Alertmanager's `Route.Match`).
    pub fn matching(&self, labels: &BTreeMap<String, String>) -> Vec<&Route> {
        if !matcher::all_match(&self.matchers, labels) {
            return Vec::new();
        }
        let mut all = Vec::new();
        for child in &self.routes {
            let found = child.matching(labels);
            let matched = !found.is_empty();
            all.extend(found);
            if matched && !child.continue_ {
                break;
            }
        }
        if all.is_empty() {
            all.push(self);
        }
        all
    }

    /// The group an alert falls in on this route: (group key, group labels).
    pub fn group_of(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> (String, BTreeMap<String, String>) {
        let group_labels: BTreeMap<String, String> = match &self.group.by {
            None => labels.clone(),
            Some(by) => by
                .iter()
                .filter_map(|l| labels.get(l).map(|v| (l.clone(), v.clone())))
                .collect(),
        };
        let mut key = format!("{}:{{", self.path);
        for (i, (k, v)) in group_labels.iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            key.push_str(&format!("{k}={v:?}"));
        }
        key.push('}');
        (key, group_labels)
    }
}

impl Inhibit {
    /// Whether a firing `source` alert mutes `target` under this rule.
    pub fn mutes(
        &self,
        source: &BTreeMap<String, String>,
        target: &BTreeMap<String, String>,
    ) -> bool {
        matcher::all_match(&self.source, source)
            && matcher::all_match(&self.target, target)
            && self.equal.iter().all(|l| source.get(l) == target.get(l))
            && source != target
    }
}

const DEFAULT_GROUPING: fn() -> Grouping = || Grouping {
    by: Some(vec!["rule".to_string()]),
    wait: Duration::from_secs(10),
    interval: Duration::from_secs(60),
    repeat: Duration::from_secs(4 * 3600),
};

/// Compiles the section; `field(name)` gives a schema field's row index.
pub(crate) fn compile(
    def: &AlertsDef,
    field: &dyn Fn(&str) -> Option<usize>,
    diags: &mut Diagnostics,
) -> AlertPolicy {
    super::sinks::check(&def.sinks, diags);
    let mut labels = Vec::new();
    for (i, name) in def.labels.iter().enumerate() {
        match field(name) {
            _ if ["pipeline", "rule", "key", "severity"].contains(&name.as_str()) => diags.report(
                format!("alerts.labels[{i}]"),
                format!("`{name}` is a label every alert has; expected another field"),
            ),
            Some(idx) => labels.push((name.clone(), idx)),
            None => diags.report(
                format!("alerts.labels[{i}]"),
                format!("expected a field of the schema, found `{name}`"),
            ),
        }
    }
    let sink_names: Vec<String> = def.sinks.iter().map(|s| s.name().to_string()).collect();
    let root = Route {
        path: "0".into(),
        matchers: Vec::new(),
        sinks: sink_names.clone(),
        group: DEFAULT_GROUPING(),
        continue_: false,
        routes: Vec::new(),
    };
    let route = compile_route(&def.route, &root, "0", "alerts.route", &sink_names, diags);
    if !def.route.matchers.is_empty() {
        diags.report("alerts.route.match", "the root route takes every alert: expected no `match` here (put it on a child in `routes`)");
    }
    let inhibit = match &def.inhibit {
        None => vec![Inhibit {
            source: vec![Matcher::parse("severity=critical").expect("valid matcher")],
            target: vec![Matcher::parse("severity=~warning|info").expect("valid matcher")],
            equal: vec!["key".into()],
        }],
        Some(list) => list.clone(),
    };
    AlertPolicy {
        labels,
        resolve_timeout: def.resolve_timeout.map(|d| d.0).filter(|d| !d.is_zero()),
        route,
        inhibit,
    }
}

fn compile_route(
    def: &RouteDef,
    parent: &Route,
    path: &str,
    at: &str,
    sinks: &[String],
    diags: &mut Diagnostics,
) -> Route {
    let names = def.sinks.clone().unwrap_or_else(|| parent.sinks.clone());
    for (i, n) in names.iter().enumerate() {
        if !sinks.contains(n) {
            diags.report(
                format!("{at}.sinks[{i}]"),
                format!(
                    "expected the name of a sink in alerts.sinks ({}), found `{n}`",
                    if sinks.is_empty() {
                        "none declared".to_string()
                    } else {
                        sinks.join(", ")
                    }
                ),
            );
        }
    }
    let group = Grouping {
        by: match &def.group_by {
            Some(by) if by.iter().any(|l| l == "...") => None,
            Some(by) => Some(by.clone()),
            None => parent.group.by.clone(),
        },
        wait: def.group_wait.map_or(parent.group.wait, |d| d.0),
        interval: def.group_interval.map_or(parent.group.interval, |d| d.0),
        repeat: def.repeat_interval.map_or(parent.group.repeat, |d| d.0),
    };
    // Checked where it is written, not again in every child that inherits it.
    if def.group_interval.is_some_and(|d| d.0.is_zero()) {
        diags.report(
            format!("{at}.group_interval"),
            "expected a duration above zero",
        );
    }
    let mut route = Route {
        path: path.to_string(),
        matchers: def.matchers.clone(),
        sinks: names,
        group,
        continue_: def.continue_,
        routes: Vec::new(),
    };
    route.routes = def
        .routes
        .iter()
        .enumerate()
        .map(|(i, child)| {
            compile_route(
                child,
                &route,
                &format!("{path}.{i}"),
                &format!("{at}.routes[{i}]"),
                sinks,
                diags,
            )
        })
        .collect();
    route
}
