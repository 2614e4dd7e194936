//! Scoring throughput of ONNX models through `anom_ml::model` at batch sizes 1, 64
//! and 1024: the 100-tree × 8-feature Isolation Forest `anom train` would write (fitted here,
//! no Python needed), and — when ANOM_BENCH_MODELS names a directory written by
//! scripts/ml/sklearn_reference.py — scikit-learn's IsolationForest (100 trees) and MLP
//! autoencoder as skl2onnx exports them.

use std::path::PathBuf;

use anom_ml::forest::{ForestParams, IsolationForest};
use anom_ml::model::Model;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const FEATURES: usize = 8;
const BATCHES: [usize; 3] = [1, 64, 1024];

/// A small deterministic generator, so every run scores the same forest and rows.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
    }
}

/// The Isolation Forest `anom train` writes: 100 trees fitted in Rust on the bench's rows,
/// exported through `forest::to_onnx` (one TreeEnsembleRegressor, then Mul and Pow).
fn anom_forest() -> Vec<u8> {
    let names: Vec<String> = (0..FEATURES).map(|i| format!("f{i}")).collect();
    IsolationForest::fit(&rows(20_000), FEATURES, &ForestParams::default())
        .and_then(|f| f.to_onnx(&names, "bench"))
        .expect("forest")
}

fn rows(n: usize) -> Vec<f32> {
    let mut rng = Lcg(42);
    (0..n * FEATURES).map(|_| rng.unit() * 2.0).collect()
}

fn bench_model(c: &mut Criterion, name: &str, model: &Model) {
    let mut group = c.benchmark_group(name);
    for batch in BATCHES {
        let input = rows(batch);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &input, |b, input| {
            b.iter(|| model.run(input, batch).unwrap())
        });
    }
    group.finish();
}

fn models(c: &mut Criterion) {
    let forest = Model::from_bytes(&anom_forest(), FEATURES).expect("anom forest");
    bench_model(c, "anom_forest_100x8", &forest);

    let Some(dir) = std::env::var_os("ANOM_BENCH_MODELS").map(PathBuf::from) else {
        eprintln!(
            "ANOM_BENCH_MODELS is unset: skipping the scikit-learn models \
             (write them with scripts/ml/sklearn_reference.py DIR)"
        );
        return;
    };
    for (name, file) in [
        ("sklearn_isolation_forest", "isolation_forest.onnx"),
        ("sklearn_autoencoder", "autoencoder.onnx"),
    ] {
        let model = Model::load(&dir.join(file), FEATURES).unwrap_or_else(|e| panic!("{e}"));
        bench_model(c, name, &model);
    }
}

criterion_group!(benches, models);
criterion_main!(benches);
