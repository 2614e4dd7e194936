//! Per-event cost of the hot path without NATS: decode + validate + route, envelope
//! encode/decode, rule evaluation, alert rendering. The end-to-end figures against a raw
//! JetStream hop come from the loadtest crate (docs/performance.md).

use std::sync::Arc;

use anom_operators::stage::{alert::AlertStage, rules::Rules, validate::Validate};
use anom_pipeline::envelope::Envelope;
use anom_pipeline::Pipeline;
use anom_runtime::metrics::Metrics;
use anom_runtime::{Emitter, Input, Stage};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn routes() -> Arc<Pipeline> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines/routes.yaml");
    Arc::new(Pipeline::load(std::path::Path::new(path)).expect("routes.yaml"))
}

const EVENT: &[u8] = br#"{"route":"SFTP-BANK-A","status":"FAILED","durationMs":7200,"fileName":"sftp-bank-a-0001.csv","bytes":123456,"finishedAt":"2026-11-20T10:00:00Z"}"#;

fn input(payload: &[u8]) -> Input<'_> {
    Input {
        subject: "anom.routes.in",
        payload,
        headers: None,
        stream_seq: 1,
        published_us: 1_700_000_000_000_000,
    }
}

fn run(stage: &mut dyn Stage, payload: &[u8]) -> Vec<u8> {
    let mut out = Emitter::new("bench", "routes-bench");
    stage.process(&input(payload), &mut out).unwrap();
    stage.end_batch(&mut out);
    out.outputs()
        .first()
        .map(|o| o.payload.to_vec())
        .unwrap_or_default()
}

fn stages(c: &mut Criterion) {
    let p = routes();
    let metrics = Metrics::new();
    let mut validate = Validate::new(p.clone());
    let mut rules = Rules::new(p.clone());
    let mut alert = AlertStage::new(p.clone(), &metrics, Vec::new(), Default::default());
    let valid = run(&mut validate, EVENT);
    let detected = run(&mut rules, &valid);
    assert!(!detected.is_empty(), "the benchmark event must hit a rule");

    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Elements(1));
    g.bench_function("validate (JSON decode, schema, route, envelope)", |b| {
        b.iter(|| run(&mut validate, EVENT))
    });
    g.bench_function("rules (envelope decode, 2 rules, encode)", |b| {
        b.iter(|| run(&mut rules, &valid))
    });
    // The first run fires the alert; every later one folds a detection into it.
    g.bench_function(
        "alert (render message and explanation, fold into the alert)",
        |b| b.iter(|| run(&mut alert, &detected)),
    );
    g.finish();

    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    let env = Envelope::decode(&valid).unwrap();
    g.bench_function("encode", |b| b.iter(|| env.encode()));
    g.bench_function("decode", |b| b.iter(|| Envelope::decode(&valid).unwrap()));
    g.finish();

    let mut g = c.benchmark_group("rule");
    g.throughput(Throughput::Elements(1));
    let row = env.data.clone();
    for condition in p.rules.iter().filter_map(|r| r.condition()) {
        g.bench_function(format!("eval `{}`", condition.source()), |b| {
            b.iter_batched_ref(
                || row.clone(),
                |row| condition.matches(row),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
