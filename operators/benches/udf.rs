//! What a UDF costs per event: the trivial plugin `add_one` (pipelines/udfs/add_one, built
//! here in release) at batch sizes 1, 64 and 1024.
//!
//! - `udf call`: rows → Arrow column → plugin call over the C data interface → values back
//!   (`udf::run`), the whole host-side path of one derived field;
//! - `validate`: the validate stage over a batch of events, with the derive and without it;
//!   the difference is what the derive adds to the stage.
//!
//! Per-event time = reported time / batch size (criterion's throughput is per event).

#[allow(dead_code)]
use anom_testkit::plugins as udfs;

use std::sync::Arc;

use anom_lang::value::Value;
use anom_operators::stage::validate::Validate;
use anom_pipeline::Pipeline;
use anom_runtime::{Emitter, Input, Stage};
use anom_udf::{batch::column, run, Udf, UdfType};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const BATCHES: [usize; 3] = [1, 64, 1024];

fn pipeline(library: &std::path::Path, derive: bool) -> Arc<Pipeline> {
    let udf = if derive {
        format!(
            "udfs:\n  - {{ name: add_one, library: {}, args: [int], returns: int }}\nderive:\n  n1: add_one(n)\n",
            library.display()
        )
    } else {
        String::new()
    };
    Arc::new(
        Pipeline::from_yaml(&format!(
            "name: bench\nkey: k\npartitions: 4\nschema:\n  k: string\n  n: int\n{udf}"
        ))
        .unwrap_or_else(|e| panic!("{e}")),
    )
}

fn udf_calls(c: &mut Criterion) {
    let library = udfs::build("add_one", true);
    let udf = Udf::load("add_one", &library, &[UdfType::Int], UdfType::Int).unwrap();
    let mut g = c.benchmark_group("udf call add_one (rows → arrow → plugin → values)");
    for n in BATCHES {
        let rows: Vec<Value> = (0..n as i64).map(Value::Int).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &rows, |b, rows| {
            b.iter(|| {
                let out = run(&udf, &[column(UdfType::Int, rows.iter())], rows.len());
                assert_eq!(out.len(), rows.len());
                out
            })
        });
    }
    g.finish();
}

fn validate(c: &mut Criterion) {
    let library = udfs::build("add_one", true);
    for derive in [false, true] {
        let p = pipeline(&library, derive);
        let name = if derive {
            "validate with derive add_one(n)"
        } else {
            "validate without derive"
        };
        let mut g = c.benchmark_group(name);
        for n in BATCHES {
            let events: Vec<Vec<u8>> = (0..n)
                .map(|i| format!(r#"{{"k":"key-{}","n":{i}}}"#, i % 100).into_bytes())
                .collect();
            let mut stage = Validate::new(p.clone());
            let mut out = Emitter::new("validate", "bench-validate");
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::from_parameter(n), &events, |b, events| {
                b.iter(|| {
                    out.clear();
                    for (i, e) in events.iter().enumerate() {
                        let input = Input {
                            subject: "anom.bench.in",
                            payload: e,
                            headers: None,
                            stream_seq: i as u64 + 1,
                            published_us: 1_700_000_000_000_000,
                        };
                        stage.process(&input, &mut out).unwrap();
                    }
                    stage.end_batch(&mut out);
                    assert_eq!(out.outputs().len(), events.len());
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, udf_calls, validate);
criterion_main!(benches);
