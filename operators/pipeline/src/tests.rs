use super::*;
use anom_lang::value::Value;
use anom_testkit::fixtures::HOSTS;

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
fn the_version_is_a_digest_of_the_canonical_definition_not_of_its_layout() {
    let a = Pipeline::from_yaml(ROUTES).unwrap().version;
    assert_eq!(a.len(), 16);
    // Comments, indentation and quoting are not the definition.
    let relaid = ROUTES
        .replace("partitions: 2", "partitions: 2   # one per CPU")
        .replace(
            "  route:      { type: string, required: true }",
            "  route:\n    type: \"string\"\n    required: true",
        )
        .replace("name: routes\n", "# routes, as deployed\nname: 'routes'\n");
    assert_eq!(Pipeline::from_yaml(&relaid).unwrap().version, a);
    // The schema's order is the rows' layout: another order is another version.
    let swapped = ROUTES.replace(
        "  fileName:   string\n  finishedAt: { type: timestamp, required: true }\n",
        "  finishedAt: { type: timestamp, required: true }\n  fileName:   string\n",
    );
    assert_ne!(Pipeline::from_yaml(&swapped).unwrap().version, a);
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
    let SinkDef::Webhook(w) = &p.sinks[0] else {
        panic!("expected a webhook, found {:?}", p.sinks[0]);
    };
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
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
    let pipelines = load_dir(&dir).unwrap();
    let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["expenses", "hosts", "iot", "payments", "routes"]
    );
    // Written as a structured condition, it is the expression it replaced: same alerts,
    // same explanations.
    assert_eq!(
        pipelines[0].rules[1].when,
        "amount >= 5000 or (category == 'gambling' and amount > 100)"
    );
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

const STRUCTURED: &str = r#"
name: routes
key: route
schema:
  route:      { type: string, required: true }
  status:     { type: enum, values: [OK, FAILED, TIMEOUT], required: true }
  durationMs: { type: int, min: 0, required: true }
  fileName:   string
  amount:     float
  urgent:     bool
rules:
  # Each rule is written twice: as an expression (s*) and as a structured condition (t*).
  - name: s0
    when: durationMs>5000 && status=='OK'
  - name: s1
    when: status in ["FAILED", "TIMEOUT"] || durationMs >= 30000
  - name: s2
    when: not matches(fileName, '^[a-z0-9-]+\.csv$') and is_present(fileName)
  - name: s3
    when: is_null(amount) or amount < 1.5
  - name: s4
    when: urgent = true and not (route in ['TEST', 'it\'s "odd"'])
  - name: s5
    when: sum(amount) over 1d > 2000 or (not (status == 'OK') and not is_null(urgent))
  - name: t0
    when:
      type: all
      conditions:
        - { type: field_compare, field: durationMs, op: ">", value: 5000 }
        - { type: field_compare, field: status, op: "==", value: OK }
  - name: t1
    when:
      type: any
      conditions:
        - { type: field_in, field: status, values: [FAILED, TIMEOUT] }
        - { type: field_compare, field: durationMs, op: gte, value: 30000 }
  - name: t2
    when:
      type: all
      conditions:
        - type: not
          condition: { type: matches, field: fileName, pattern: '^[a-z0-9-]+\.csv$' }
        - { type: not_null, field: fileName }
  - name: t3
    when:
      type: any
      conditions:
        - { type: is_null, field: amount }
        - { type: field_compare, field: amount, op: lt, value: 1.5 }
  - name: t4
    when:
      type: all
      conditions:
        - { type: field_compare, field: urgent, op: eq, value: true }
        - { type: field_not_in, field: route, values: [TEST, "it's \"odd\""] }
  - name: t5
    when:
      type: any
      conditions:
        - { type: aggregate_compare, function: sum, field: amount, over: 1d, op: ">", value: 2000 }
        - type: all
          conditions:
            - type: not
              condition: { type: expr, expr: "status == 'OK'" }
            - { type: not, condition: { type: is_null, field: urgent } }
"#;

#[test]
fn structured_conditions_become_the_expressions_they_stand_for() {
    let p = Pipeline::from_yaml(STRUCTURED).unwrap_or_else(|e| panic!("{e}"));
    let when: Vec<&str> = p.rules[6..].iter().map(|r| r.when.as_str()).collect();
    assert_eq!(
        when,
        vec![
            "durationMs > 5000 and status == 'OK'",
            "status in ['FAILED', 'TIMEOUT'] or durationMs >= 30000",
            r"not matches(fileName, '^[a-z0-9-]+\\.csv$') and is_present(fileName)",
            "is_null(amount) or amount < 1.5",
            r#"urgent == true and route not in ['TEST', 'it\'s "odd"']"#,
            "sum(amount) over 1d > 2000 or (not (status == 'OK') and not is_null(urgent))",
        ]
    );
    // The generated text is what users see: in the default message and explanations.
    let ctx = template::Context {
        key: "R",
        rule: "t3",
        severity: "warning",
        silence: None,
    };
    let row = vec![Value::Null; p.scope.len()];
    assert_eq!(
        p.rules[9].message.render(&row, &ctx),
        "t3 on R: is_null(amount) or amount < 1.5"
    );
    // Both forms share the one inline aggregate.
    assert_eq!(p.aggregates.len(), 1);
    assert_eq!(p.aggregates[0].source, "sum(amount) over 1d");
}

#[test]
fn structured_conditions_evaluate_like_the_same_rules_written_as_expressions() {
    let p = Pipeline::from_yaml(STRUCTURED).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.rules.len(), 12);
    let texts = [
        Value::Null,
        Value::from("ok-1.csv"),
        Value::from("Bad Name.csv"),
    ];
    let floats = [Value::Null, Value::Float(1.0), Value::Float(2.0)];
    let bools = [Value::Null, Value::Bool(true), Value::Bool(false)];
    let sums = [Value::Null, Value::Float(1999.5), Value::Float(2000.5)];
    let mut rows = 0;
    let mut hits = [0; 6];
    for route in ["TEST", "R1", "it's \"odd\""] {
        for status in ["OK", "FAILED", "TIMEOUT"] {
            for ms in [0, 5000, 5001, 30000] {
                for file in &texts {
                    for amount in &floats {
                        for urgent in &bools {
                            for sum in &sums {
                                let row = vec![
                                    Value::from(route),
                                    Value::from(status),
                                    Value::Int(ms),
                                    file.clone(),
                                    amount.clone(),
                                    urgent.clone(),
                                    sum.clone(),
                                ];
                                for (i, hit) in hits.iter_mut().enumerate() {
                                    let written = p.rules[i].condition().unwrap().matches(&row);
                                    let structured =
                                        p.rules[i + 6].condition().unwrap().matches(&row);
                                    assert_eq!(written, structured, "rule {i} on {row:?}");
                                    *hit += usize::from(written);
                                }
                                rows += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(rows, 2916);
    // Every rule both holds and fails somewhere, so the comparison means something.
    assert!(hits.iter().all(|&h| h > 0 && h < rows), "{hits:?}");
}

/// A pipeline whose second rule has the given `when`, indented under it.
fn with_structured_when(when: &str) -> String {
    let mut yaml = ROUTES.split("rules:").next().unwrap().replace(
        "  fileName:   string\n",
        "  fileName:   string\n  amount:     float\n",
    );
    yaml.push_str(
        "rules:\n  - name: slow\n    when: durationMs > 5000\n  - name: structured\n    when:\n",
    );
    for line in when.lines() {
        yaml.push_str(&format!("      {line}\n"));
    }
    yaml
}

#[test]
fn structured_condition_mistakes_name_the_file_line_column_and_key() {
    let cases = [
        // unknown `type`
        (
            "type: field_compar\nfield: durationMs",
            "p.yaml:18:13: rules[1].when.type: unknown condition type `field_compar`, expected one of `field_compare`, `field_in`, `field_not_in`, `matches`, `is_null`, `not_null`, `aggregate_compare`, `all`, `any`, `not`, `expr`; did you mean `field_compare`?",
        ),
        // unknown op, deep in the tree
        (
            "type: all\nconditions:\n  - { type: field_compare, field: durationMs, op: '>>', value: 1 }",
            "p.yaml:20:57: rules[1].when.conditions[0].op: unknown op `>>`, expected one of `==`, `!=`, `>`, `>=`, `<`, `<=` (or `eq`, `ne`, `gt`, `gte`, `lt`, `lte`)",
        ),
        (
            "type: field_compare\nfield: durationMs\nop: =>\nvalue: 1",
            "p.yaml:20:11: rules[1].when.op: unknown op `=>`, expected one of `==`, `!=`, `>`, `>=`, `<`, `<=` (or `eq`, `ne`, `gt`, `gte`, `lt`, `lte`); did you mean `>=`?",
        ),
        // unknown field, with a suggestion, at the `field` key rather than in generated text
        (
            "type: all\nconditions:\n  - { type: is_null, field: fileName }\n  - { type: field_compare, field: durationMS, op: gt, value: 1 }",
            "p.yaml:21:41: rules[1].when.conditions[1].field: unknown field `durationMS`, did you mean `durationMs`?",
        ),
        // a string compared with an int field
        (
            "type: not\ncondition:\n  type: field_compare\n  field: durationMs\n  op: '>'\n  value: slow",
            "p.yaml:23:16: rules[1].when.condition.value: cannot compare `durationMs` (int) with 'slow' (string)",
        ),
        // a key no condition has, and one this type does not take
        (
            "type: field_compare\nfeild: durationMs",
            "p.yaml:19:7: rules[1].when: unknown field `feild`, expected one of `type`, `field`, `op`, `value`",
        ),
        (
            "type: is_null\nfield: fileName\nvalue: 1",
            "p.yaml:20:7: rules[1].when: unknown field `value`, expected `type` or `field`",
        ),
        (
            "type: field_compare\nfield: durationMs\nvalue: 1",
            "p.yaml:18:7: rules[1].when: missing field `op`",
        ),
        // values
        (
            "type: field_in\nfield: status\nvalues: [OK, FAILD]",
            "p.yaml:20:20: rules[1].when.values[1]: `FAILD` is not an allowed value of `status` (one of OK, FAILED, TIMEOUT); did you mean `FAILED`?",
        ),
        (
            "type: field_not_in\nfield: status\nvalues: []",
            "p.yaml:20:15: rules[1].when.values: expected at least one value, found an empty list",
        ),
        (
            "type: field_compare\nfield: fileName\nop: ne\nvalue: null",
            "p.yaml:21:14: rules[1].when.value: expected a number, a string or a bool, found null; test for a missing value with `type: is_null`",
        ),
        (
            "type: matches\nfield: fileName\npattern: '[a-'",
            "p.yaml:20:16: rules[1].when.pattern: invalid regex '[a-' in `matches`: unclosed character class",
        ),
        // aggregates
        (
            "type: aggregate_compare\nfunction: summ\nfield: amount\nover: 1d\nop: gt\nvalue: 1",
            "p.yaml:19:17: rules[1].when.function: unknown aggregate function `summ`, expected one of `count`, `sum`, `avg`, `min`, `max`, `stddev`, `last`, `prev`, `distinct`, `p50`, `p90`, `p99`, `rate`; did you mean `sum`?",
        ),
        (
            "type: aggregate_compare\nfunction: sum\nfield: amout\nover: 1d\nop: gt\nvalue: 1",
            "p.yaml:20:14: rules[1].when.field: unknown field `amout`, did you mean `amount`?",
        ),
        (
            "type: aggregate_compare\nfunction: avg\nfield: fileName\nover: 1d\nop: gt\nvalue: 1",
            "p.yaml:20:14: rules[1].when.field: avg needs a numeric field, `fileName` is string",
        ),
        (
            "type: aggregate_compare\nfunction: sum\nfield: amount\nover: 1 day\nop: gt\nvalue: 1",
            "p.yaml:21:13: rules[1].when.over: duration `1` needs a unit: one of ms, s, m, h, d, w",
        ),
        (
            "type: aggregate_compare\nfunction: count\nover: 5m\nop: gt\nvalue: many",
            "p.yaml:22:14: rules[1].when.value: cannot compare `count() over 5m` (int) with 'many' (string)",
        ),
        (
            "type: aggregate_compare\nfunction: sum\nfield: amount\nop: gt\nvalue: 1",
            "p.yaml:18:7: rules[1].when: missing field `over`: an aggregate in a rule needs a window, e.g. `over: 1d`; declare one over the key's whole history under `aggregates:` and compare it with `field_compare`",
        ),
        // an expression inside: its own columns count
        (
            "type: any\nconditions:\n  - { type: is_null, field: fileName }\n  - { type: expr, expr: 'status == 1 or durationMS > 5' }",
            "p.yaml:21:39: rules[1].when.conditions[1].expr: column 8: cannot compare `status` (string) with 1 (int)",
        ),
        (
            "type: any\nconditions:\n  - durationMs > 5",
            "p.yaml:20:11: rules[1].when.conditions[0]: invalid type: string \"durationMs > 5\", expected a condition (a map with `type`; an expression inside one is written `{type: expr, expr: ...}`)",
        ),
    ];
    for (when, want) in cases {
        let yaml = with_structured_when(when);
        assert_eq!(errors_in_file(&yaml), vec![want.to_string()], "{yaml}");
    }
}

#[test]
fn every_leaf_of_a_structured_condition_is_checked() {
    let yaml = with_structured_when(
        "type: all
conditions:
  - { type: field_compare, field: durationMS, op: gt, value: 1 }
  - { type: field_compare, field: status, op: eq, value: FAILD }
  - { type: aggregate_compare, function: sum, field: fileName, over: 1d, op: gt, value: 1 }",
    );
    assert_eq!(
        errors_in_file(&yaml),
        vec![
            "p.yaml:22:60: rules[1].when.conditions[2].field: sum needs a numeric field, `fileName` is string",
            "p.yaml:20:41: rules[1].when.conditions[0].field: unknown field `durationMS`, did you mean `durationMs`?",
            "p.yaml:21:64: rules[1].when.conditions[1].value: `FAILD` is not an allowed value of `status` (one of OK, FAILED, TIMEOUT); did you mean `FAILED`?",
        ]
    );
}

#[test]
fn an_inline_aggregate_is_named_by_its_text_in_messages() {
    let yaml = format!(
        "{}  amount:     float\nrules:\n  - name: r\n    when: sum(amount) over 1d > 'x'\n",
        ROUTES.split("rules:").next().unwrap()
    );
    assert_eq!(
        errors_in_file(&yaml),
        vec!["p.yaml:15:31: rules[0].when: column 21: cannot compare `sum(amount) over 1d` (float) with 'x' (string)".to_string()]
    );
}

#[test]
fn detectors_compile_and_their_scores_follow_the_aggregates_in_rows() {
    let p = Pipeline::from_yaml(HOSTS).unwrap();
    assert!(p.has_detectors());
    assert_eq!(p.enriched_width(), 5);
    assert_eq!(p.detectors.len(), 3);
    assert_eq!(p.detectors[0].inputs, vec![1]);
    assert_eq!(p.detectors[1].inputs, vec![2, 4]);
    assert_eq!(p.detectors[1].kind_name(), "half_space_trees");
    assert_eq!(p.detectors[0].kind_name(), "robust_zscore");
    // Built-in detectors have a default threshold; a label decides for label_score models.
    assert!((0.0..=1.0).contains(&p.detectors[0].threshold));
    assert_eq!(p.detectors[1].threshold, 0.95);
    assert!(p.detectors[2].threshold.is_nan());
    assert!(
        matches!(&p.detectors[2].kind, DetectorKind::Model(m) if m.anomaly_label == -1 && m.path == "models/m.onnx")
    );
    // Rules read detector scores after the aggregates.
    assert_eq!(p.scope.index_of("latency_unusual"), Some(5));
    assert_eq!(p.scope.index_of("model"), Some(7));
    let mut row = vec![
        Value::from("h"),
        Value::Float(900.0),
        Value::Null,
        Value::Null,
        Value::Null,
    ];
    row.extend([Value::Float(0.95), Value::Null, Value::Null]);
    assert!(p.rules[0].condition().unwrap().matches(&row));
    row[5] = Value::Null; // not scored (warming up): the rule does not hold
    assert!(!p.rules[0].condition().unwrap().matches(&row));
    // The definition of each detector is its state's identity across versions.
    let again = Pipeline::from_yaml(&HOSTS.replace("threshold: 0.95", "threshold: 0.9")).unwrap();
    assert_eq!(p.detectors[1].signature, again.detectors[1].signature);
    let other =
        Pipeline::from_yaml(&HOSTS.replace("[cpu, avg_latency_1h]", "[avg_latency_1h, cpu]"))
            .unwrap();
    assert_ne!(p.detectors[1].signature, other.detectors[1].signature);
}

#[test]
fn detector_mistakes_are_located_and_say_what_was_expected() {
    let cases: Vec<(&str, &str, &str)> = vec![
        (
            "kind: robust_zscore",
            "kind: robust_zscor",
            "detectors[0].kind: unknown detector kind `robust_zscor`: expected one of auto, robust_zscore, ewma, cusum, seasonal, holt_winters, half_space_trees, onnx, udf, did you mean `robust_zscore`?",
        ),
        (
            "field: latencyMs\n",
            "field: latencyMS\n",
            "detectors[0].field: unknown field or aggregate `latencyMS`, did you mean `latencyMs`?",
        ),
        (
            "field: latencyMs\n",
            "field: region\n",
            "detectors[0].field: `region` is a string: a detector needs a number",
        ),
        (
            "field: latencyMs\n",
            "features: [latencyMs]\n",
            "detectors[0].features: a robust_zscore detector watches one value: expected `field: <name>`",
        ),
        (
            "features: [cpu, avg_latency_1h]",
            "field: cpu",
            "detectors[1].features: expected the list of numeric fields and aggregates the half_space_trees detector reads (`features: [a, b]`)",
        ),
        (
            "threshold: 0.95",
            "threshold: 3",
            "detectors[1].threshold: built-in detectors score in [0, 1]: expected a threshold in that range, found 3",
        ),
        (
            "    output: label_score\n",
            "    output: score\n",
            "detectors[2].threshold: expected the model score at which an event is anomalous (`threshold: 0.6`)",
        ),
        (
            "    model: models/m.onnx\n",
            "",
            "detectors[2].model: expected the ONNX model file (`model: models/fraud.onnx`)",
        ),
        (
            "  - name: combo",
            "  - name: latencyMs",
            "detectors[1].name: `latencyMs` is already the name of a field or aggregate",
        ),
        (
            "  - name: model\n",
            "  - name: unusual_and_slow\n",
            "detectors[2].name: `unusual_and_slow` is already the name of a rule: alerts name their rule or detector, so the names must differ",
        ),
    ];
    for (from, to, expected) in cases {
        let yaml = HOSTS.replacen(from, to, 1);
        assert_ne!(yaml, HOSTS, "{from}");
        let got = errors(&yaml);
        assert!(
            got.iter().any(|e| e.ends_with(expected)),
            "expected `{expected}` in {got:#?}"
        );
    }
    // Line numbers point at the detector.
    let got = errors_in_file(&HOSTS.replace("kind: robust_zscore", "kind: zscore"));
    assert!(got[0].starts_with("p.yaml:13:"), "{got:?}");
    // The detector's own parameters are checked by the detector.
    let got = errors(&HOSTS.replace(
        "    field: latencyMs\n",
        "    field: latencyMs\n    params: { windw: 50 }\n",
    ));
    assert!(
        got[0].contains("detectors[0].params") && got[0].contains("windw"),
        "{got:?}"
    );
}

#[test]
fn the_alerts_section_is_checked_and_compiled() {
    let with = |alerts: &str| format!("{ROUTES}alerts:\n{alerts}");
    let sinks = "  sinks:\n    - { type: webhook, name: ops, url: 'http://127.0.0.1:9/a' }\n    - { type: webhook, name: pager, url: 'http://127.0.0.1:9/b' }\n";
    let p = Pipeline::from_yaml(&with(&format!(
        "  labels: [fileName]\n  route:\n    group_by: [rule, key]\n    group_wait: 0s\n    routes:\n      - match: [severity=critical]\n        sinks: [pager]\n        repeat_interval: 1h\n{sinks}"
    )))
    .unwrap_or_else(|e| panic!("{e}"));
    let a = &p.alerting;
    assert_eq!(a.labels, [("fileName".to_string(), 3)]);
    assert_eq!(
        a.route.sinks,
        ["ops", "pager"],
        "the root's default: every sink"
    );
    let child = &a.route.routes[0];
    assert_eq!(child.sinks, ["pager"]);
    assert_eq!(
        child.group.by,
        Some(vec!["rule".into(), "key".into()]),
        "inherited"
    );
    assert_eq!(child.group.wait, std::time::Duration::ZERO, "inherited");
    assert_eq!(child.group.repeat, std::time::Duration::from_secs(3600));
    assert_eq!(a.inhibit.len(), 1, "the default inhibition");

    let e = errors(&with(&format!(
        "  labels: [filename, key]\n  route:\n    match: [rule=slow]\n    group_interval: 0s\n    routes:\n      - sinks: [pagr]\n{sinks}"
    )));
    let want = [
            "alerts.labels[0]: expected a field of the schema, found `filename`",
            "alerts.labels[1]: `key` is a label every alert has; expected another field",
            "alerts.route.group_interval: expected a duration above zero",
            "alerts.route.routes[0].sinks[0]: expected the name of a sink in alerts.sinks (ops, pager), found `pagr`",
            "alerts.route.match: the root route takes every alert: expected no `match` here (put it on a child in `routes`)",
        ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for (got, want) in e.iter().zip(want) {
        // Each with its line: "line 20: alerts.labels[0]: ...".
        assert!(
            got.starts_with("line ") && got.ends_with(want),
            "{got} / {want}"
        );
    }
    let e = errors(&with(
        "  inhibit:\n    - { source: [severity], target: [] }\n",
    ));
    assert!(
        e[0].contains("expected `label=value`, `label!=value`, `label=~regex` or `label!~regex`, found `severity`"),
        "{e:?}"
    );
}

#[test]
fn a_definition_over_the_size_limit_is_refused_saying_the_limit() {
    let big = format!(
        "name: t\nkey: k\nschema:\n  k: string\n# {}\n",
        "x".repeat(MAX_DEFINITION_BYTES)
    );
    let e = Pipeline::from_yaml(&big).unwrap_err().to_string();
    assert!(
        e.contains(&format!("expected at most {MAX_DEFINITION_BYTES}")),
        "{e}"
    );
}
