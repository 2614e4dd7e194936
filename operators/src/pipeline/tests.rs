use super::*;
use crate::value::Value;

const ROUTES: &str = r#"
name: routes
key: route
event_time: finishedAt
partitions: 2
schema:
  route:      { type: string, required: true }
  status:     { type: enum, values: [OK, FAILED, TIMEOUT], required: true }
  durationMs: { type: int, min: 0, required: true }
  fileName:   string
  finishedAt: { type: timestamp, required: true }
rules:
  - name: slow
    when: durationMs > 5000
    message: "Route {route} took {durationMs} ms"
  - name: failed
    when: status in ['FAILED', 'TIMEOUT']
    severity: critical
"#;

fn errors(yaml: &str) -> Vec<String> {
    match Pipeline::from_yaml(yaml) {
        Ok(_) => panic!("expected the definition to be rejected"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

/// The messages as `anom check` prints them for a file `p.yaml`.
fn errors_in_file(yaml: &str) -> Vec<String> {
    match Pipeline::from_yaml(yaml) {
        Ok(_) => panic!("expected the definition to be rejected"),
        Err(e) => {
            e.0.into_iter()
                .map(|mut e| {
                    e.file = Some("p.yaml".into());
                    e.to_string()
                })
                .collect()
        }
    }
}

#[test]
fn compiles_a_valid_definition_into_a_plan() {
    let p = Pipeline::from_yaml(ROUTES).unwrap();
    assert_eq!(p.name, "routes");
    assert_eq!(p.key, 0);
    assert_eq!(p.event_time, Some(4));
    assert_eq!(p.partitions, 2);
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.rules[0].severity, Severity::Warning);
    assert_eq!(p.rules[1].severity, Severity::Critical);
    assert_eq!(p.subjects.input, "anom.routes.in");
    assert_eq!(p.subjects.valid(1), "anom.routes.valid.1");
    assert_eq!(p.subjects.valid_stream, "ANOM_ROUTES_VALID");
    let row = vec![
        Value::from("SFTP-A"),
        Value::from("OK"),
        Value::Int(7200),
        Value::Null,
        Value::Timestamp(0),
    ];
    assert!(p.rules[0].condition().unwrap().matches(&row));
    assert!(!p.rules[1].condition().unwrap().matches(&row));
    let ctx = template::Context {
        key: "SFTP-A",
        rule: "slow",
        severity: "warning",
        silence: None,
    };
    assert_eq!(
        p.rules[0].message.render(&row, &ctx),
        "Route SFTP-A took 7200 ms"
    );
}

#[test]
fn the_version_changes_with_the_definition() {
    let a = Pipeline::from_yaml(ROUTES).unwrap();
    let b = Pipeline::from_yaml(&ROUTES.replace("5000", "6000")).unwrap();
    assert_eq!(a.version, Pipeline::from_yaml(ROUTES).unwrap().version);
    assert_ne!(a.version, b.version);
}

#[test]
fn an_unknown_field_in_a_rule_names_the_rule_line_column_and_suggestion() {
    let yaml = ROUTES.replace("when: durationMs > 5000", "when: durationMS > 5000");
    let e = errors(&yaml);
    assert_eq!(
        e,
        vec!["line 14: rules[0].when: column 1: unknown field `durationMS`, did you mean `durationMs`?".to_string()]
    );
    let with_file = Pipeline::from_yaml(&yaml).map_err(|mut e| {
        e.0[0].file = Some("pipelines/routes.yaml".into());
        e.to_string()
    });
    assert_eq!(
        with_file.unwrap_err(),
        "pipelines/routes.yaml:14:11: rules[0].when: column 1: unknown field `durationMS`, did you mean `durationMs`?"
    );
}

#[test]
fn structural_mistakes_give_the_line_and_what_was_expected() {
    let e = errors(&ROUTES.replace("    when: durationMs > 5000", "    whn: durationMs > 5000"));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("line 14: rules[0]: unknown field `whn`, expected one of `name`, `when`"),
        "{}",
        e[0]
    );

    let e = errors(&ROUTES.replace("{ type: int, min: 0", "{ type: integer, min: 0"));
    assert!(
        e[0].contains("unknown variant `integer`, expected one of `string`, `int`"),
        "{}",
        e[0]
    );

    let e = errors(&ROUTES.replace("partitions: 2", "partitions: many"));
    assert!(
        e[0].contains("partitions: invalid type: string \"many\", expected u32"),
        "{}",
        e[0]
    );
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let yaml = ROUTES
        .replace("name: routes", "name: Routes.Bad")
        .replace("key: route", "key: rout")
        .replace("event_time: finishedAt", "event_time: fileName")
        .replace(
            "status in ['FAILED', 'TIMEOUT']",
            "status in ['FAILED', 'TIMEOUTT']",
        )
        .replace("{durationMs} ms", "{duration} ms");
    let e = errors(&yaml);
    let all = e.join("\n");
    assert!(
        all.contains("name: `Routes.Bad` is not a valid pipeline name"),
        "{all}"
    );
    assert!(
        all.contains("key: unknown field `rout`, did you mean `route`?"),
        "{all}"
    );
    assert!(
        all.contains("event_time: field `fileName` must be of type timestamp, found string"),
        "{all}"
    );
    assert!(all.contains("did you mean `TIMEOUT`?"), "{all}");
    assert!(all.contains("line 15: rules[0].message: column 20: unknown field `duration` in the message, did you mean `durationMs`?"), "{all}");
    assert_eq!(e.len(), 5, "{all}");
}

#[test]
fn schema_declarations_are_checked() {
    let base = "name: p\nkey: k\nschema:\n  k: string\n";
    let e = errors(&format!("{base}  s: {{ type: enum }}\n"));
    assert!(
        e[0].contains("schema.s.values: an enum field needs its allowed `values`"),
        "{e:?}"
    );
    let e = errors(&format!("{base}  n: {{ type: int, min: 10, max: 1 }}\n"));
    assert!(
        e[0].contains("schema.n: min 10 is greater than max 1"),
        "{e:?}"
    );
    let e = errors(&format!("{base}  n: {{ type: int, default: 'many' }}\n"));
    assert!(
        e[0].contains("schema.n.default: field `n`: expected int, found string \"many\""),
        "{e:?}"
    );
    let e = errors(&format!("{base}  b: {{ type: bool, min: 1 }}\n"));
    assert!(
        e[0].contains("`min`/`max` apply to int and float fields, not bool"),
        "{e:?}"
    );
    let e = errors(&format!("{base}  k: int\n"));
    assert!(e[0].contains("field `k` is declared twice"), "{e:?}");
}

#[test]
fn a_rule_condition_must_be_a_condition() {
    let e = errors(&ROUTES.replace("when: durationMs > 5000", "when: durationMs + 1"));
    assert!(e[0].contains("expected a condition (bool)"), "{e:?}");
}

#[test]
fn webhook_sinks_are_checked() {
    let with_sink = |sink: &str| format!("{ROUTES}alerts:\n  sinks:\n{sink}");
    let p = Pipeline::from_yaml(&with_sink("    - type: webhook\n      name: ops\n      url: http://127.0.0.1:9/hook\n      timeout: 2s\n")).unwrap();
    let SinkDef::Webhook(w) = &p.sinks[0];
    assert_eq!(w.timeout, std::time::Duration::from_secs(2));
    assert_eq!(w.max_attempts, 10);
    let e = errors(&with_sink(
        "    - type: webhook\n      name: ops\n      url: ftp://x/y\n",
    ));
    assert!(
        e[0].contains(
            "alerts.sinks[0].url: expected an http:// or https:// URL, found scheme `ftp`"
        ),
        "{e:?}"
    );
    let e = errors(&with_sink(
        "    - type: webhook\n      name: ops\n      url: http://x\n      timeout: 5\n",
    ));
    assert!(
        e[0].contains("alerts.sinks: invalid type: integer `5`, expected a duration such as `5s`"),
        "{e:?}"
    );
    let e = errors(&with_sink("    - type: pager\n      name: ops\n"));
    assert!(e[0].contains("unknown variant `pager`"), "{e:?}");
}

#[test]
fn the_example_pipelines_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
    let pipelines = load_dir(&dir).unwrap();
    let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["expenses", "iot", "payments", "routes"]);
}

#[test]
fn an_invalid_inline_aggregate_is_reported_once() {
    let yaml = ROUTES.replace(
        "when: durationMs > 5000",
        "when: sum(fileName) over 1d > 5000",
    );
    assert_eq!(
        errors(&yaml),
        vec!["line 14: rules[0].when: sum needs a numeric field, `fileName` is string".to_string()]
    );
}

#[test]
fn problems_found_after_parsing_point_at_their_node() {
    let yaml = ROUTES.replace("key: route", "key: rout").replace(
        "{ type: int, min: 0, required: true }",
        "{ type: int, min: 10, max: 1, required: true }",
    );
    assert_eq!(
        errors_in_file(&yaml),
        vec![
            "p.yaml:9:15: schema.durationMs: min 10 is greater than max 1".to_string(),
            "p.yaml:3:6: key: unknown field `rout`, did you mean `route`?".to_string(),
        ]
    );
}
