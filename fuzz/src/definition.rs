//! The definition loader: YAML text to a compiled pipeline or located problems.

use anom_pipeline::Pipeline;
use arbitrary::Arbitrary;

/// A refused definition says what is wrong: at least one problem, each with a message.
fn check(text: &str) {
    if let Err(e) = Pipeline::from_yaml(text) {
        assert!(!e.0.is_empty(), "refused without a problem");
        for p in &e.0 {
            assert!(!p.to_string().trim().is_empty(), "a problem without words");
        }
    }
}

pub fn bytes(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
}

/// Seeds every part of the language reaches; mutations pick lines from them.
const SEEDS: [&str; 5] = [
    include_str!("../../pipelines/routes.yaml"),
    include_str!("../../pipelines/expenses.yaml"),
    include_str!("../../pipelines/hosts.yaml"),
    include_str!("../../pipelines/iot.yaml"),
    include_str!("../../pipelines/payments.yaml"),
];

#[derive(Debug, Arbitrary)]
pub enum Edit {
    /// Line `a` of the seed becomes line `b` of another seed.
    Swap(u16, u8, u16),
    /// Line `a` is dropped.
    Drop(u16),
    /// Text inserted at line `a`, indented by `b` spaces.
    Insert(u16, u8, String),
    /// Line `a` is duplicated.
    Repeat(u16),
}

#[derive(Debug, Arbitrary)]
pub struct Mutated {
    pub seed: u8,
    pub edits: Vec<Edit>,
}

pub fn structured(m: Mutated) {
    let mut lines: Vec<String> = SEEDS[m.seed as usize % SEEDS.len()]
        .lines()
        .map(str::to_string)
        .collect();
    for e in m.edits.iter().take(16) {
        if lines.is_empty() {
            break;
        }
        let at = |i: u16| i as usize % lines.len();
        match e {
            Edit::Swap(a, s, b) => {
                let other: Vec<&str> = SEEDS[*s as usize % SEEDS.len()].lines().collect();
                let i = at(*a);
                lines[i] = other[*b as usize % other.len()].to_string();
            }
            Edit::Drop(a) => {
                let i = at(*a);
                lines.remove(i);
            }
            Edit::Insert(a, indent, text) => {
                let i = at(*a);
                let indent = " ".repeat(*indent as usize % 12);
                lines.insert(i, format!("{indent}{text}"));
            }
            Edit::Repeat(a) => {
                let i = at(*a);
                let l = lines[i].clone();
                lines.insert(i, l);
            }
        }
    }
    check(&lines.join("\n"));
}
