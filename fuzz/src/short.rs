//! The short run CI does (`scripts/test`): every target over its committed corpus, byte-level
//! mutations of it, random bytes and random structures, from a fixed seed so that a failure
//! reproduces. The long runs are `scripts/fuzz`'s (docs/fuzzing.md).

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const RANDOM: usize = 4_000;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The corpus, each input mutated a few ways, then random inputs of up to 1 KiB.
fn inputs(target: &str, seed: u64) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let base = corpus(target);
    let mut all = base.clone();
    for b in &base {
        for _ in 0..8 {
            let mut m = b.clone();
            for _ in 0..rng.random_range(1..8) {
                if m.is_empty() {
                    break;
                }
                let i = rng.random_range(0..m.len());
                match rng.random_range(0..3) {
                    0 => m[i] = rng.random(),
                    1 => {
                        m.remove(i);
                    }
                    _ => m.truncate(i),
                }
            }
            all.push(m);
        }
    }
    for _ in 0..RANDOM {
        let mut v = vec![0; rng.random_range(0..1024)];
        rng.fill_bytes(&mut v);
        all.push(v);
    }
    all.into_iter()
}

fn run_structured<T: for<'a> Arbitrary<'a>>(target: &str, seed: u64, body: impl Fn(T)) {
    let mut n = 0;
    for data in inputs(target, seed) {
        if let Ok(input) = T::arbitrary_take_rest(Unstructured::new(&data)) {
            body(input);
            n += 1;
        }
    }
    assert!(
        n > RANDOM / 2,
        "{target}: only {n} structured inputs were made"
    );
}

#[test]
fn event_bytes() {
    inputs("event_bytes", 1).for_each(|d| crate::event::bytes(&d));
}

#[test]
fn event_structured() {
    run_structured("event_structured", 2, crate::event::structured);
}

#[test]
fn definition_bytes() {
    inputs("definition_bytes", 3).for_each(|d| crate::definition::bytes(&d));
}

#[test]
fn definition_structured() {
    run_structured("definition_structured", 4, crate::definition::structured);
}

#[test]
fn expr_bytes() {
    inputs("expr_bytes", 5).for_each(|d| crate::expr::bytes(&d));
}

#[test]
fn expr_structured() {
    run_structured("expr_structured", 6, crate::expr::structured);
}

#[test]
fn csv_bytes() {
    inputs("csv_bytes", 7).for_each(|d| crate::csv::bytes(&d));
}

#[test]
fn csv_structured() {
    run_structured("csv_structured", 8, crate::csv::structured);
}
