//! The README's examples are real: its pipeline compiles and its expressions type-check.

#[allow(dead_code)]
use anom_testkit::plugins as udfs;

use anom_lang::expr;
use anom_pipeline::Pipeline;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap()
}

/// The contents of every fenced block of the given language.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    text.split(&fence)
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_readme_keyed_example_compiles_with_the_payments_schema() {
    let yaml = blocks(&readme(), "yaml");
    assert_eq!(yaml.len(), 5);
    let payments = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pipelines/payments.yaml"
    ))
    .unwrap();
    let header = payments.split("timezone:").next().unwrap();
    let schema = payments
        .split("schema:")
        .nth(1)
        .unwrap()
        .split("aggregates:")
        .next()
        .unwrap();
    let p = Pipeline::from_yaml(&format!("{header}{}schema:{schema}", yaml[1]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.aggregates.len(), 5);
    assert!(p.is_keyed());
}

#[test]
fn the_readme_pipeline_compiles() {
    let yaml = blocks(&readme(), "yaml");
    let p = Pipeline::from_yaml(&yaml[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.name, "routes");
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.sinks.len(), 2);
    // Critical alerts go to the pager and the webhook; the rest to the webhook (the root).
    let route = &p.alerting.route;
    let labels = |severity: &str| {
        [("severity".to_string(), severity.to_string())]
            .into_iter()
            .collect()
    };
    let sinks = |severity| -> Vec<Vec<String>> {
        route
            .matching(&labels(severity))
            .iter()
            .map(|r| r.sinks.clone())
            .collect()
    };
    assert_eq!(sinks("critical"), [["pager", "ops"]]);
    assert_eq!(sinks("warning"), [["ops"]]);
}

#[test]
fn the_readme_expressions_type_check_against_its_pipeline() {
    let text = readme();
    let p = Pipeline::from_yaml(&blocks(&text, "yaml")[0]).unwrap();
    let examples = blocks(&text, "text");
    assert_eq!(examples.len(), 1);
    let lines: Vec<&str> = examples[0]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(lines.len() >= 5);
    for line in lines {
        expr::compile_predicate(line, &p.schema).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
}

#[test]
fn the_readme_structured_conditions_become_the_expressions_it_shows() {
    let text = readme();
    let yaml = blocks(&text, "yaml");
    let header = yaml[0].split("rules:").next().unwrap();
    let p = Pipeline::from_yaml(&format!("{header}{}", yaml[2])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.rules.len(), 3);
    for rule in &p.rules {
        let line = yaml[2]
            .lines()
            .find(|l| l.contains(&format!("- name: {} ", rule.name)))
            .unwrap();
        assert!(
            line.ends_with(&format!("# {}", rule.when)),
            "{line}\n{}",
            rule.when
        );
    }
}

#[test]
fn the_readme_detectors_example_compiles() {
    let yaml = blocks(&readme(), "yaml");
    let p = Pipeline::from_yaml(&yaml[3]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.name, "hosts");
    let kinds: Vec<&str> = p.detectors.iter().map(|d| d.kind_name()).collect();
    assert_eq!(
        kinds,
        vec!["auto", "robust_zscore", "cusum", "half_space_trees", "onnx"]
    );
    // No kind written: auto, calibrated, at the default threshold.
    assert_eq!(
        p.detectors[0].threshold,
        anom_ml::detector::DEFAULT_THRESHOLD
    );
    assert_eq!(p.rules.len(), 1);
}

#[test]
fn the_readme_labelled_windows_parse() {
    let json = blocks(&readme(), "json");
    let windows = json
        .iter()
        .find(|b| b.contains("\"label\""))
        .expect("a labelled windows example");
    match anom_operators::backtest::Labels::windows_from_json(windows)
        .unwrap_or_else(|e| panic!("{e}"))
    {
        anom_operators::backtest::Labels::Windows(w) => {
            assert_eq!(w.len(), 2);
            assert_eq!(w[0].key.as_deref(), Some("card-017"));
            assert_eq!(w[1].key, None);
            assert_eq!(w[1].end_ms - w[1].start_ms, 3_600_000);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_readme_udf_example_compiles_with_the_example_plugins() {
    let yaml = blocks(&readme(), "yaml");
    let routes = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pipelines/routes.yaml"
    ))
    .unwrap();
    let header = routes.split("aggregates:").next().unwrap();
    let mut udfs_part = yaml[4].clone();
    for lib in ["route_id", "transfer_score"] {
        let written = format!("pipelines/udfs/lib/libudf_{lib}.so");
        assert!(udfs_part.contains(&written), "{written}");
        udfs_part = udfs_part.replace(&written, &udfs::plugin(lib).display().to_string());
    }
    let p = Pipeline::from_yaml(&format!("{header}{udfs_part}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.derives.len(), 3);
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.detectors[0].kind_name(), "udf");
}
