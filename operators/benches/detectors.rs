//! Updates per second of each built-in detector on one key's state, with default parameters,
//! after warm-up (the steady state a key spends its life in). Values follow a noisy daily cycle
//! with an occasional spike, timestamps advance a minute per value.

use anom_ml::detector::{Detector, Kind};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::Value;

const BATCH: usize = 4096;

fn inputs(dims: usize) -> Vec<(Vec<f64>, i64)> {
    // A fixed pseudo-random sequence (LCG): the bench needs variety, not quality.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..BATCH)
        .map(|i| {
            let t = 1_700_000_000_000 + i as i64 * 60_000;
            let cycle = ((i % 1440) as f64 / 1440.0 * std::f64::consts::TAU).sin();
            let x = (0..dims)
                .map(|d| {
                    let spike = if next() < 0.001 { 50.0 } else { 0.0 };
                    100.0 + 10.0 * d as f64 + 20.0 * cycle + 5.0 * (next() - 0.5) + spike
                })
                .collect();
            (x, t)
        })
        .collect()
}

fn detectors(c: &mut Criterion) {
    let mut g = c.benchmark_group("detector update");
    g.throughput(Throughput::Elements(BATCH as u64));
    for kind in Kind::ALL {
        let dims = if kind.multivariate() { 3 } else { 1 };
        let d = Detector::new(kind, &Value::Null, None, dims).unwrap();
        let data = inputs(dims);
        let mut state = d.new_state();
        // Past warm-up (and, for half-space trees, past the first window) before measuring.
        for _ in 0..2 {
            for (x, t) in &data {
                d.update(&mut state, x, *t);
            }
        }
        let name = if dims > 1 {
            format!("{kind} ({dims} fields)")
        } else {
            kind.to_string()
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut sum = 0.0;
                for (x, t) in &data {
                    sum += d.update(&mut state, x, *t).score;
                }
                sum
            })
        });
    }
    g.finish();
}

criterion_group!(benches, detectors);
criterion_main!(benches);
