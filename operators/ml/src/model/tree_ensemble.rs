//! `TreeEnsembleRegressor` (ai.onnx.ml), which tract does not ship: skl2onnx exports every
//! scikit-learn tree regressor — and each tree of an IsolationForest — with it.
//!
//! The ONNX attributes describe nodes as parallel lists keyed by (tree id, node id), with leaf
//! weights in another set of lists keyed the same way. That is slow to walk, so at load time
//! the ensemble is compiled once into one flat node array with child *indices* and each leaf's
//! (target, weight) pairs gathered into a contiguous range; scoring then walks rows × trees
//! without allocating per row.
//!
//! Semantics follow the ONNX reference implementation (onnx/reference/ops/aionnxml): a NaN
//! feature takes the true branch exactly when `nodes_missing_value_tracks_true` is set, whatever
//! the mode; AVERAGE divides by the number of trees; `base_values` are added after
//! aggregation; MIN / MAX start from the largest / smallest f32, so a target no leaf writes to
//! keeps that value.

use std::collections::HashMap;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::attrs::{self, AttrError};

const OP: &str = "TreeEnsembleRegressor";

pub(super) fn register(register: &mut OnnxOpRegister) {
    register.insert(OP, parse);
}

/// How the leaf weights reached in each tree combine into a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

/// The function applied to each row's targets once aggregated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PostTransform {
    None,
    Softmax,
    Logistic,
    SoftmaxZero,
    Probit,
}

/// The comparison a branch node makes, `feature <mode> threshold`; `Leaf` ends the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode, AttrError> {
        Ok(match s {
            "BRANCH_LEQ" => Mode::Leq,
            "BRANCH_LT" => Mode::Lt,
            "BRANCH_GTE" => Mode::Gte,
            "BRANCH_GT" => Mode::Gt,
            "BRANCH_EQ" => Mode::Eq,
            "BRANCH_NEQ" => Mode::Neq,
            "LEAF" => Mode::Leaf,
            other => {
                return Err(AttrError::Value {
                    op: OP,
                    attr: "nodes_modes".into(),
                    expected:
                        "BRANCH_LEQ, BRANCH_LT, BRANCH_GTE, BRANCH_GT, BRANCH_EQ, BRANCH_NEQ, LEAF",
                    found: other.into(),
                });
            }
        })
    }
}

/// The ensemble as the ONNX attributes state it, one entry per node and per leaf weight.
#[derive(Clone, Debug)]
pub(super) struct EnsembleSpec {
    pub n_targets: usize,
    pub tree_ids: Vec<i64>,
    pub node_ids: Vec<i64>,
    pub feature_ids: Vec<i64>,
    pub modes: Vec<Mode>,
    pub values: Vec<f64>,
    pub true_ids: Vec<i64>,
    pub false_ids: Vec<i64>,
    pub missing_tracks_true: Vec<bool>,
    pub target_tree_ids: Vec<i64>,
    pub target_node_ids: Vec<i64>,
    pub target_ids: Vec<i64>,
    pub target_weights: Vec<f64>,
    pub base_values: Vec<f64>,
    pub aggregate: Aggregate,
    pub post_transform: PostTransform,
}

/// Structural problems in an ensemble's attributes.
#[derive(Debug, thiserror::Error)]
pub(super) enum EnsembleError {
    #[error("TreeEnsembleRegressor: no nodes, expected at least one tree")]
    Empty,
    #[error("TreeEnsembleRegressor: n_targets is {0}, expected at least 1")]
    NoTargets(i64),
    #[error("TreeEnsembleRegressor: a node reads feature {0}, expected at most 65535")]
    Feature(u32),
    #[error("TreeEnsembleRegressor: {attr} contains {found}, expected a non-negative id")]
    NegativeId { attr: &'static str, found: i64 },
    #[error("TreeEnsembleRegressor: node {node} of tree {tree} is declared twice")]
    DuplicateNode { tree: i64, node: i64 },
    #[error(
        "TreeEnsembleRegressor: node {node} of tree {tree} branches to node {child}, which tree {tree} does not have"
    )]
    MissingChild { tree: i64, node: i64, child: i64 },
    #[error("TreeEnsembleRegressor: tree {tree} has a cycle through node {node}, expected a tree")]
    Cycle { tree: i64, node: i64 },
    #[error(
        "TreeEnsembleRegressor: a target weight refers to node {node} of tree {tree}, which is {found}, expected a leaf"
    )]
    TargetNotLeaf {
        tree: i64,
        node: i64,
        found: &'static str,
    },
    #[error("TreeEnsembleRegressor: target id {found} is out of range, expected 0..{n_targets}")]
    TargetId { found: i64, n_targets: usize },
    #[error(
        "TreeEnsembleRegressor: base_values has {found} entries, expected n_targets = {expected}"
    )]
    BaseValues { expected: usize, found: usize },
}

/// One compiled node, 16 bytes so four share a cache line. A branch compares `row[feature]`
/// with `threshold` and continues at node `if_true` or `if_false`; a leaf's (target, weight)
/// pairs are `leaf_*[if_true..if_false]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Node {
    threshold: f32,
    if_true: u32,
    if_false: u32,
    feature: u16,
    mode: Mode,
    missing_true: bool,
}

/// Rows scored together tree by tree, so a tree's nodes stay in cache across the block.
const BLOCK: usize = 64;

/// Rows walked down one tree together (see `Ensemble::leaves_leq_lanes`).
const LANES: usize = 8;

/// A compiled ensemble, ready to score rows.
#[derive(Debug, PartialEq)]
pub(super) struct Ensemble {
    nodes: Vec<Node>,
    /// The thresholds at full precision, for double inputs (parallel to `nodes`).
    thresholds_f64: Vec<f64>,
    roots: Vec<u32>,
    leaf_targets: Vec<u32>,
    leaf_weights: Vec<f64>,
    n_targets: usize,
    /// One more than the largest feature index any branch reads.
    min_features: usize,
    base_values: Vec<f64>,
    aggregate: Aggregate,
    post_transform: PostTransform,
    /// Every branch is BRANCH_LEQ (all scikit-learn exports): a walk without the mode match.
    only_leq: bool,
}

fn non_negative(attr: &'static str, id: i64) -> Result<u32, EnsembleError> {
    u32::try_from(id).map_err(|_| EnsembleError::NegativeId { attr, found: id })
}

impl Ensemble {
    pub(super) fn compile(spec: &EnsembleSpec) -> TractResult<Ensemble> {
        let n = spec.node_ids.len();
        if n == 0 {
            return Err(EnsembleError::Empty.into());
        }
        if spec.n_targets == 0 {
            return Err(EnsembleError::NoTargets(0).into());
        }
        let per_node = "one per node, as nodes_nodeids";
        attrs::expect_len(OP, "nodes_treeids", &spec.tree_ids, n, per_node)?;
        attrs::expect_len(OP, "nodes_featureids", &spec.feature_ids, n, per_node)?;
        attrs::expect_len(OP, "nodes_modes", &spec.modes, n, per_node)?;
        attrs::expect_len(OP, "nodes_values", &spec.values, n, per_node)?;
        attrs::expect_len(OP, "nodes_truenodeids", &spec.true_ids, n, per_node)?;
        attrs::expect_len(OP, "nodes_falsenodeids", &spec.false_ids, n, per_node)?;
        attrs::expect_len(
            OP,
            "nodes_missing_value_tracks_true",
            &spec.missing_tracks_true,
            n,
            per_node,
        )?;
        let t = spec.target_ids.len();
        let per_target = "one per target weight, as target_ids";
        attrs::expect_len(OP, "target_treeids", &spec.target_tree_ids, t, per_target)?;
        attrs::expect_len(OP, "target_nodeids", &spec.target_node_ids, t, per_target)?;
        attrs::expect_len(OP, "target_weights", &spec.target_weights, t, per_target)?;
        if !spec.base_values.is_empty() && spec.base_values.len() != spec.n_targets {
            return Err(EnsembleError::BaseValues {
                expected: spec.n_targets,
                found: spec.base_values.len(),
            }
            .into());
        }

        // Trees in order of first appearance; a tree's root is its first node listed, as in
        // the reference implementation. Nodes keep their attribute order.
        let mut index: HashMap<(i64, i64), u32> = HashMap::with_capacity(n);
        let mut roots: Vec<u32> = vec![];
        let mut tree_of_root: HashMap<i64, ()> = HashMap::new();
        for i in 0..n {
            let (tree, node) = (spec.tree_ids[i], spec.node_ids[i]);
            if index.insert((tree, node), i as u32).is_some() {
                return Err(EnsembleError::DuplicateNode { tree, node }.into());
            }
            if tree_of_root.insert(tree, ()).is_none() {
                roots.push(i as u32);
            }
        }

        // Gather each leaf's weights into one contiguous range.
        let mut weights_of: Vec<Vec<(u32, f64)>> = vec![vec![]; n];
        for k in 0..t {
            let (tree, node) = (spec.target_tree_ids[k], spec.target_node_ids[k]);
            let target = spec.target_ids[k];
            if target < 0 || target as usize >= spec.n_targets {
                return Err(EnsembleError::TargetId {
                    found: target,
                    n_targets: spec.n_targets,
                }
                .into());
            }
            let Some(&i) = index.get(&(tree, node)) else {
                return Err(EnsembleError::TargetNotLeaf {
                    tree,
                    node,
                    found: "absent",
                }
                .into());
            };
            if spec.modes[i as usize] != Mode::Leaf {
                return Err(EnsembleError::TargetNotLeaf {
                    tree,
                    node,
                    found: "a branch",
                }
                .into());
            }
            weights_of[i as usize].push((target as u32, spec.target_weights[k]));
        }

        let mut nodes = Vec::with_capacity(n);
        let mut leaf_targets = vec![];
        let mut leaf_weights = vec![];
        let mut min_features = 0;
        for (i, weights) in weights_of.iter().enumerate() {
            let tree = spec.tree_ids[i];
            let mode = spec.modes[i];
            let node = if mode == Mode::Leaf {
                let start = leaf_targets.len() as u32;
                for &(target, weight) in weights {
                    leaf_targets.push(target);
                    leaf_weights.push(weight);
                }
                let end = leaf_targets.len() as u32;
                Node {
                    threshold: 0.0,
                    feature: 0,
                    if_true: start,
                    if_false: end,
                    mode,
                    missing_true: false,
                }
            } else {
                let child = |id: i64| {
                    index
                        .get(&(tree, id))
                        .copied()
                        .ok_or(EnsembleError::MissingChild {
                            tree,
                            node: spec.node_ids[i],
                            child: id,
                        })
                };
                let feature = non_negative("nodes_featureids", spec.feature_ids[i])?;
                let feature =
                    u16::try_from(feature).map_err(|_| EnsembleError::Feature(feature))?;
                min_features = min_features.max(feature as usize + 1);
                Node {
                    threshold: spec.values[i] as f32,
                    feature,
                    if_true: child(spec.true_ids[i])?,
                    if_false: child(spec.false_ids[i])?,
                    mode,
                    missing_true: spec.missing_tracks_true[i],
                }
            };
            nodes.push(node);
        }
        check_acyclic(&nodes, &roots, spec)?;

        Ok(Ensemble {
            only_leq: nodes
                .iter()
                .all(|n| matches!(n.mode, Mode::Leq | Mode::Leaf)),
            nodes,
            thresholds_f64: spec.values.clone(),
            roots,
            leaf_targets,
            leaf_weights,
            n_targets: spec.n_targets,
            min_features,
            base_values: spec.base_values.clone(),
            aggregate: spec.aggregate,
            post_transform: spec.post_transform,
        })
    }

    pub(super) fn n_targets(&self) -> usize {
        self.n_targets
    }

    /// Scores row-major `input` (rows of `width` features) into `output` (rows of n_targets).
    pub(super) fn eval<T: Feature>(&self, input: &[T], width: usize, output: &mut [f32]) {
        debug_assert!(width >= self.min_features);
        let nt = self.n_targets;
        // One scratch block per call, reused for every block of rows.
        let mut acc = vec![0f64; BLOCK * nt];
        let init = match self.aggregate {
            Aggregate::Sum | Aggregate::Average => 0.0,
            Aggregate::Min => f32::MAX as f64,
            Aggregate::Max => f32::MIN as f64,
        };
        let inputs = input.chunks(BLOCK * width.max(1));
        for (rows, out) in inputs.zip(output.chunks_mut(BLOCK * nt)) {
            let acc = &mut acc[..out.len()];
            acc.fill(init);
            match self.aggregate {
                Aggregate::Sum | Aggregate::Average => {
                    self.visit_leaves(rows, width, |r, t, w| acc[r * nt + t] += w)
                }
                Aggregate::Min => self.visit_leaves(rows, width, |r, t, w| {
                    acc[r * nt + t] = acc[r * nt + t].min(w)
                }),
                Aggregate::Max => self.visit_leaves(rows, width, |r, t, w| {
                    acc[r * nt + t] = acc[r * nt + t].max(w)
                }),
            }
            for (scores, out) in acc.chunks_exact_mut(nt).zip(out.chunks_exact_mut(nt)) {
                if self.aggregate == Aggregate::Average {
                    let trees = self.roots.len() as f64;
                    scores.iter_mut().for_each(|v| *v /= trees);
                }
                for (v, base) in scores.iter_mut().zip(&self.base_values) {
                    *v += base;
                }
                post_transform(self.post_transform, scores);
                for (o, v) in out.iter_mut().zip(scores.iter()) {
                    *o = *v as f32;
                }
            }
        }
    }

    /// Calls `add(row, target, weight)` for every weight of every leaf the block's rows
    /// reach, tree by tree.
    #[inline]
    fn visit_leaves<T: Feature>(
        &self,
        rows: &[T],
        width: usize,
        mut add: impl FnMut(usize, usize, f64),
    ) {
        let rows: Vec<&[T]> = rows.chunks_exact(width.max(1)).collect();
        let mut emit = |r: usize, leaf: &Node| {
            for k in leaf.if_true as usize..leaf.if_false as usize {
                add(r, self.leaf_targets[k] as usize, self.leaf_weights[k]);
            }
        };
        // Walking LANES rows down a tree at once overlaps their independent node loads,
        // which a single walk would wait on one after the other.
        let lanes = if self.only_leq && self.min_features > 0 {
            rows.len() / LANES * LANES
        } else {
            0
        };
        for &root in &self.roots {
            for (group, chunk) in rows[..lanes].chunks_exact(LANES).enumerate() {
                let chunk: &[&[T]; LANES] = chunk.try_into().expect("chunks_exact(LANES)");
                for (l, i) in self.leaves_leq_lanes(root, chunk).into_iter().enumerate() {
                    emit(group * LANES + l, &self.nodes[i as usize]);
                }
            }
            for (r, row) in rows.iter().enumerate().skip(lanes) {
                let leaf = if self.only_leq {
                    self.leaf_leq(root, row)
                } else {
                    self.leaf_any(root, row)
                };
                emit(r, leaf);
            }
        }
    }

    /// [`Ensemble::leaf_leq`] for LANES rows in lockstep; a lane that reached its leaf stays.
    /// Needs every row to have at least one feature, since leaves read feature 0 unused.
    #[inline]
    fn leaves_leq_lanes<T: Feature>(&self, root: u32, rows: &[&[T]; LANES]) -> [u32; LANES] {
        let mut at = [root; LANES];
        loop {
            let mut moved = false;
            for l in 0..LANES {
                let i = at[l] as usize;
                let node = &self.nodes[i];
                let branch = node.mode != Mode::Leaf;
                let x = rows[l][node.feature as usize];
                // Non-short-circuit `|` / `&` keep the step free of data-dependent branches.
                let go_true = (x <= T::threshold(self, node, i)) | (node.missing_true & x.is_nan());
                let next = if go_true { node.if_true } else { node.if_false };
                at[l] = if branch { next } else { at[l] };
                moved |= branch;
            }
            if !moved {
                return at;
            }
        }
    }

    #[inline]
    fn leaf_leq<T: Feature>(&self, root: u32, row: &[T]) -> &Node {
        let mut i = root as usize;
        loop {
            let node = &self.nodes[i];
            if node.mode == Mode::Leaf {
                return node;
            }
            let x = row[node.feature as usize];
            // A NaN compares false, so only missing_true can send it to the true branch.
            let go_true = x <= T::threshold(self, node, i) || (node.missing_true && x.is_nan());
            i = if go_true { node.if_true } else { node.if_false } as usize;
        }
    }

    #[inline]
    fn leaf_any<T: Feature>(&self, root: u32, row: &[T]) -> &Node {
        let mut i = root as usize;
        loop {
            let node = &self.nodes[i];
            if node.mode == Mode::Leaf {
                return node;
            }
            let x = row[node.feature as usize];
            let th = T::threshold(self, node, i);
            let go_true = if x.is_nan() {
                node.missing_true
            } else {
                match node.mode {
                    Mode::Leq => x <= th,
                    Mode::Lt => x < th,
                    Mode::Gte => x >= th,
                    Mode::Gt => x > th,
                    Mode::Eq => x == th,
                    Mode::Neq => x != th,
                    // Handled above, before reading a feature a leaf does not have.
                    Mode::Leaf => false,
                }
            };
            i = if go_true { node.if_true } else { node.if_false } as usize;
        }
    }
}

/// Rejects a cycle among a tree's branches, which would make scoring loop forever.
fn check_acyclic(nodes: &[Node], roots: &[u32], spec: &EnsembleSpec) -> Result<(), EnsembleError> {
    // 0 unseen, 1 on the current path, 2 done.
    let mut state = vec![0u8; nodes.len()];
    for &root in roots {
        let mut stack = vec![(root as usize, false)];
        while let Some((i, leaving)) = stack.pop() {
            if leaving {
                state[i] = 2;
                continue;
            }
            match state[i] {
                1 => {
                    return Err(EnsembleError::Cycle {
                        tree: spec.tree_ids[i],
                        node: spec.node_ids[i],
                    });
                }
                2 => continue,
                _ => {}
            }
            state[i] = 1;
            stack.push((i, true));
            let node = &nodes[i];
            if node.mode != Mode::Leaf {
                for child in [node.if_true, node.if_false] {
                    if state[child as usize] == 1 {
                        return Err(EnsembleError::Cycle {
                            tree: spec.tree_ids[i],
                            node: spec.node_ids[i],
                        });
                    }
                    stack.push((child as usize, false));
                }
            }
        }
    }
    Ok(())
}

/// An input element type the ensemble compares against its thresholds.
pub(super) trait Feature: Copy + PartialOrd {
    fn threshold(ensemble: &Ensemble, node: &Node, index: usize) -> Self;
    fn is_nan(self) -> bool;
}

impl Feature for f32 {
    #[inline]
    fn threshold(_: &Ensemble, node: &Node, _: usize) -> f32 {
        node.threshold
    }
    #[inline]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Feature for f64 {
    #[inline]
    fn threshold(ensemble: &Ensemble, _: &Node, index: usize) -> f64 {
        ensemble.thresholds_f64[index]
    }
    #[inline]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// Applies `transform` to one row of aggregated targets, as the ONNX-ML spec defines them.
pub(super) fn post_transform(transform: PostTransform, row: &mut [f64]) {
    match transform {
        PostTransform::None => {}
        PostTransform::Logistic => row.iter_mut().for_each(|v| *v = logistic(*v)),
        PostTransform::Softmax => {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            row.iter_mut().for_each(|v| *v = (*v - max).exp());
            let sum: f64 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= sum);
        }
        PostTransform::SoftmaxZero => {
            // Softmax that leaves (near-)zero scores at zero weight relative to the max.
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exp_neg_max = (-max).exp();
            let mut sum = 0.0;
            for v in row.iter_mut() {
                if *v > 1e-7 || *v < -1e-7 {
                    *v = (*v - max).exp();
                } else {
                    *v *= exp_neg_max;
                }
                sum += *v;
            }
            if sum == 0.0 {
                row.iter_mut().for_each(|v| *v = 0.5);
            } else {
                row.iter_mut().for_each(|v| *v /= sum);
            }
        }
        PostTransform::Probit => row.iter_mut().for_each(|v| *v = probit(*v)),
    }
}

fn logistic(x: f64) -> f64 {
    // Computed on |x| so exp never overflows.
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 {
        1.0 - v
    } else {
        v
    }
}

/// √2 · erf⁻¹(2x − 1), with the same closed-form erf⁻¹ approximation (Winitzki, a = 0.147)
/// that the ONNX reference and onnxruntime use, so scores agree with them — down to their
/// truncated √2.
#[allow(clippy::approx_constant)]
fn probit(x: f64) -> f64 {
    1.41421356 * erf_inv(x * 2.0 - 1.0)
}

fn erf_inv(x: f64) -> f64 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    if x == 0.0 {
        return 0.0;
    }
    let log = x.ln();
    let v = 2.0 / (std::f64::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sign * v3.sqrt()
}

fn parse_aggregate(s: &str) -> Result<Aggregate, AttrError> {
    Ok(match s {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        other => {
            return Err(AttrError::Value {
                op: OP,
                attr: "aggregate_function".into(),
                expected: "SUM, AVERAGE, MIN, MAX",
                found: other.into(),
            });
        }
    })
}

pub(super) fn parse_post_transform(op: &'static str, s: &str) -> Result<PostTransform, AttrError> {
    Ok(match s {
        "NONE" => PostTransform::None,
        "SOFTMAX" => PostTransform::Softmax,
        "LOGISTIC" => PostTransform::Logistic,
        "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
        "PROBIT" => PostTransform::Probit,
        other => {
            return Err(AttrError::Value {
                op,
                attr: "post_transform".into(),
                expected: "NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO, PROBIT",
                found: other.into(),
            });
        }
    })
}

fn parse(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let n_targets: i64 = node.get_attr_opt("n_targets")?.unwrap_or(1);
    if n_targets < 1 {
        return Err(EnsembleError::NoTargets(n_targets).into());
    }
    let node_ids = attrs::required_ints(node, OP, "nodes_nodeids")?;
    let modes = node
        .get_attr_opt_vec::<String>("nodes_modes")?
        .ok_or_else(|| AttrError::Missing {
            op: OP,
            attr: "nodes_modes".into(),
        })?
        .iter()
        .map(|s| Mode::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let missing_tracks_true =
        match node.get_attr_opt_slice::<i64>("nodes_missing_value_tracks_true")? {
            Some(flags) => flags.iter().map(|&f| f != 0).collect(),
            None => vec![false; node_ids.len()],
        };
    let target_weights = attrs::required_floats(ctx, node, OP, "target_weights")?;
    let spec = EnsembleSpec {
        n_targets: n_targets as usize,
        tree_ids: attrs::required_ints(node, OP, "nodes_treeids")?,
        feature_ids: attrs::required_ints(node, OP, "nodes_featureids")?,
        values: attrs::required_floats(ctx, node, OP, "nodes_values")?,
        true_ids: attrs::required_ints(node, OP, "nodes_truenodeids")?,
        false_ids: attrs::required_ints(node, OP, "nodes_falsenodeids")?,
        node_ids,
        modes,
        missing_tracks_true,
        target_tree_ids: attrs::required_ints(node, OP, "target_treeids")?,
        target_node_ids: attrs::required_ints(node, OP, "target_nodeids")?,
        target_ids: attrs::required_ints(node, OP, "target_ids")?,
        target_weights,
        base_values: attrs::floats(ctx, node, OP, "base_values")?.unwrap_or_default(),
        aggregate: parse_aggregate(node.get_attr_opt("aggregate_function")?.unwrap_or("SUM"))?,
        post_transform: parse_post_transform(
            OP,
            node.get_attr_opt("post_transform")?.unwrap_or("NONE"),
        )?,
    };
    let ensemble = Arc::new(Ensemble::compile(&spec)?);
    Ok((expand(TreeEnsembleRegressor { ensemble }), vec![]))
}

/// The inference-time form: states the output's type and shape, then wires the typed op.
#[derive(Debug, Clone)]
struct TreeEnsembleRegressor {
    ensemble: Arc<Ensemble>,
}

impl Expansion for TreeEnsembleRegressor {
    fn name(&self) -> StaticName {
        OP.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], self.ensemble.n_targets().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(
            prefix,
            TreeEnsembleRegressorOp {
                ensemble: self.ensemble.clone(),
            },
            inputs,
        )
    }
}

/// The typed, runnable op.
#[derive(Debug, Clone)]
pub(super) struct TreeEnsembleRegressorOp {
    pub ensemble: Arc<Ensemble>,
}

// Two ops are the same only if they share one compiled ensemble: comparing forests node by
// node would cost more than it could save.
impl PartialEq for TreeEnsembleRegressorOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ensemble, &other.ensemble)
    }
}
impl Eq for TreeEnsembleRegressorOp {}

impl Op for TreeEnsembleRegressorOp {
    fn name(&self) -> StaticName {
        OP.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let e = &self.ensemble;
        Ok(vec![format!(
            "{} trees, {} nodes, {} targets, {:?}, {:?}",
            e.roots.len(),
            e.nodes.len(),
            e.n_targets,
            e.aggregate,
            e.post_transform
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for TreeEnsembleRegressorOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let &[rows, width] = input.shape() else {
            bail!(
                "{OP}: input has shape {:?}, expected [N, features]",
                input.shape()
            );
        };
        ensure!(
            width >= self.ensemble.min_features,
            "{OP}: input has {width} features, the trees read feature {}",
            self.ensemble.min_features - 1
        );
        let mut output = Tensor::zero::<f32>(&[rows, self.ensemble.n_targets])?;
        {
            let mut out = output.try_as_plain_ram_mut()?;
            let out = out.as_slice_mut::<f32>()?;
            if input.datum_type() == f32::datum_type() {
                let x = input.try_as_plain_ram()?;
                self.ensemble.eval(x.as_slice::<f32>()?, width, out);
            } else {
                // Doubles, and the integer inputs the spec also allows, compare in f64.
                let x = input.cast_to::<f64>()?;
                let x = x.try_as_plain_ram()?;
                self.ensemble.eval(x.as_slice::<f64>()?, width, out);
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for TreeEnsembleRegressorOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let input = inputs[0];
        ensure!(
            input.rank() == 2,
            "{OP}: input has rank {}, expected 2 ([N, features])",
            input.rank()
        );
        ensure!(
            matches!(
                input.datum_type,
                DatumType::F32 | DatumType::F64 | DatumType::I64 | DatumType::I32
            ),
            "{OP}: input is {:?}, expected float, double, int64 or int32",
            input.datum_type
        );
        if let Some(width) = input.shape[1].as_i64() {
            ensure!(
                width as usize >= self.ensemble.min_features,
                "{OP}: input has {width} features, the trees read feature {}",
                self.ensemble.min_features - 1
            );
        }
        Ok(tvec!(f32::fact(&[
            input.shape[0].clone(),
            self.ensemble.n_targets.to_dim()
        ])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tree 0: x0 <mode> 1.0 ? leaf 1 (10) : leaf 2 (20). Tree 1: x1 <= 0 ? leaf 1 (1) : leaf 2 (2).
    fn two_trees(mode: Mode) -> EnsembleSpec {
        EnsembleSpec {
            n_targets: 1,
            tree_ids: vec![0, 0, 0, 1, 1, 1],
            node_ids: vec![0, 1, 2, 0, 1, 2],
            feature_ids: vec![0, 0, 0, 1, 0, 0],
            modes: vec![
                mode,
                Mode::Leaf,
                Mode::Leaf,
                Mode::Leq,
                Mode::Leaf,
                Mode::Leaf,
            ],
            values: vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            true_ids: vec![1, 0, 0, 1, 0, 0],
            false_ids: vec![2, 0, 0, 2, 0, 0],
            missing_tracks_true: vec![false; 6],
            target_tree_ids: vec![0, 0, 1, 1],
            target_node_ids: vec![1, 2, 1, 2],
            target_ids: vec![0, 0, 0, 0],
            target_weights: vec![10.0, 20.0, 1.0, 2.0],
            base_values: vec![],
            aggregate: Aggregate::Sum,
            post_transform: PostTransform::None,
        }
    }

    fn score(spec: &EnsembleSpec, rows: &[[f32; 2]]) -> Vec<f32> {
        let ensemble = Ensemble::compile(spec).unwrap();
        let input: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut out = vec![f32::NAN; rows.len() * spec.n_targets];
        ensemble.eval(&input, 2, &mut out);
        out
    }

    #[test]
    fn every_mode_compares_as_named() {
        // x0 below, at and above the threshold 1.0; x1 = 5 always takes tree 1's false leaf (2).
        let rows = [[0.5, 5.0], [1.0, 5.0], [1.5, 5.0]];
        let cases = [
            (Mode::Leq, [12.0, 12.0, 22.0]),
            (Mode::Lt, [12.0, 22.0, 22.0]),
            (Mode::Gte, [22.0, 12.0, 12.0]),
            (Mode::Gt, [22.0, 22.0, 12.0]),
            (Mode::Eq, [22.0, 12.0, 22.0]),
            (Mode::Neq, [12.0, 22.0, 12.0]),
        ];
        for (mode, expected) in cases {
            assert_eq!(score(&two_trees(mode), &rows), expected, "{mode:?}");
        }
    }

    #[test]
    fn nan_goes_where_missing_value_tracks_true_says_whatever_the_mode() {
        let rows = [[f32::NAN, f32::NAN]];
        for mode in [
            Mode::Leq,
            Mode::Lt,
            Mode::Gte,
            Mode::Gt,
            Mode::Eq,
            Mode::Neq,
        ] {
            let mut spec = two_trees(mode);
            assert_eq!(score(&spec, &rows), [22.0], "{mode:?}, missing false");
            spec.missing_tracks_true[0] = true;
            assert_eq!(score(&spec, &rows), [12.0], "{mode:?}, tree 0 missing true");
            spec.missing_tracks_true[3] = true;
            assert_eq!(score(&spec, &rows), [11.0], "{mode:?}, both missing true");
        }
    }

    #[test]
    fn aggregates_and_base_values() {
        let rows = [[0.5, 5.0], [1.5, -1.0]];
        let mut spec = two_trees(Mode::Leq);
        // Leaves reached: row 0 → 10 and 2, row 1 → 20 and 1.
        for (aggregate, expected) in [
            (Aggregate::Sum, [12.0, 21.0]),
            (Aggregate::Average, [6.0, 10.5]),
            (Aggregate::Min, [2.0, 1.0]),
            (Aggregate::Max, [10.0, 20.0]),
        ] {
            spec.aggregate = aggregate;
            spec.base_values = vec![];
            assert_eq!(score(&spec, &rows), expected, "{aggregate:?}");
            spec.base_values = vec![0.25];
            assert_eq!(
                score(&spec, &rows),
                [expected[0] + 0.25, expected[1] + 0.25],
                "{aggregate:?} + base"
            );
        }
    }

    /// Two targets: tree 0's leaves write target 0 and 1 (leaf 1 writes both), tree 1 writes
    /// only target 1.
    fn two_targets() -> EnsembleSpec {
        let mut spec = two_trees(Mode::Leq);
        spec.n_targets = 2;
        spec.target_tree_ids = vec![0, 0, 0, 1, 1];
        spec.target_node_ids = vec![1, 1, 2, 1, 2];
        spec.target_ids = vec![0, 1, 0, 1, 1];
        spec.target_weights = vec![1.0, 2.0, 3.0, 4.0, 5.0];
        spec
    }

    #[test]
    fn several_targets() {
        let rows = [[0.5, -1.0], [1.5, 5.0]];
        let mut spec = two_targets();
        assert_eq!(score(&spec, &rows), [1.0, 6.0, 3.0, 5.0]);
        spec.aggregate = Aggregate::Average;
        spec.base_values = vec![1.0, -1.0];
        assert_eq!(score(&spec, &rows), [1.5, 2.0, 2.5, 1.5]);
        // Row 1 reaches no weight for target 0 in tree 1 but does in tree 0 (3); MIN over
        // target 1 only sees tree 1's 5.
        spec.aggregate = Aggregate::Min;
        spec.base_values = vec![];
        assert_eq!(score(&spec, &rows), [1.0, 2.0, 3.0, 5.0]);
        spec.aggregate = Aggregate::Max;
        assert_eq!(score(&spec, &rows), [1.0, 4.0, 3.0, 5.0]);
    }

    #[test]
    fn min_of_a_target_no_leaf_writes_is_the_largest_float() {
        let mut spec = two_targets();
        // Only tree 1 writes target 1 now, and only tree 0 target 0.
        spec.target_ids = vec![0, 0, 0, 1, 1];
        spec.aggregate = Aggregate::Min;
        spec.target_weights = vec![1.0, 2.0, 3.0, 4.0, 5.0];
        let ensemble = Ensemble::compile(&spec).unwrap();
        let mut out = [0.0; 2];
        // Tree 0 leaf 2 writes target 0 = 3; tree 1 leaf 2 writes target 1 = 5.
        ensemble.eval(&[1.5f32, 5.0], 2, &mut out);
        assert_eq!(out, [3.0, 5.0]);
        spec.target_ids = vec![0, 0, 0, 0, 0];
        let ensemble = Ensemble::compile(&spec).unwrap();
        ensemble.eval(&[1.5f32, 5.0], 2, &mut out);
        assert_eq!(out, [3.0, f32::MAX]);
    }

    #[test]
    fn post_transforms() {
        let close = |got: &[f64], want: &[f64]| {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-7, "got {got:?}, want {want:?}");
            }
        };
        let mut row = [0.0, 2f64.ln()];
        post_transform(PostTransform::Softmax, &mut row);
        close(&row, &[1.0 / 3.0, 2.0 / 3.0]);

        let mut row = [3f64.ln(), -(3f64.ln())];
        post_transform(PostTransform::Logistic, &mut row);
        close(&row, &[0.75, 0.25]);

        // SOFTMAX_ZERO: the zero score weighs exp(-max) relative 0 → stays 0.
        let mut row = [0.0, 2f64.ln(), 0.0];
        post_transform(PostTransform::SoftmaxZero, &mut row);
        close(&row, &[0.0, 1.0, 0.0]);
        let mut row = [0.0, 0.0];
        post_transform(PostTransform::SoftmaxZero, &mut row);
        close(&row, &[0.5, 0.5]);

        // PROBIT(0.5) = 0; the values at Φ(1) and 0.9 are what the ONNX reference
        // compute_probit returns for them (its erf⁻¹ approximation, not the exact 1 and 1.2816).
        let mut row = [0.5, 0.8413447460685429, 0.9];
        post_transform(PostTransform::Probit, &mut row);
        assert_eq!(row[0], 0.0);
        assert!((row[1] - 1.000174037578826).abs() < 1e-12, "{row:?}");
        assert!((row[2] - 1.281712896987819).abs() < 1e-12, "{row:?}");
    }

    #[test]
    fn applies_post_transform_after_base_values() {
        let mut spec = two_trees(Mode::Leq);
        spec.target_weights = vec![1.0, 1.0, 1.0, 1.0];
        spec.base_values = vec![-2.0];
        spec.post_transform = PostTransform::Logistic;
        // 1 + 1 - 2 = 0 → logistic 0.5.
        assert_eq!(score(&spec, &[[0.0, 0.0]]), [0.5]);
    }

    #[test]
    fn double_inputs_compare_against_full_precision_thresholds() {
        let mut spec = two_trees(Mode::Leq);
        spec.values[0] = 0.1; // not representable in f32: 0.1f32 > 0.1
        let ensemble = Ensemble::compile(&spec).unwrap();
        let mut out = [0.0];
        ensemble.eval(&[0.1000000001f64, 5.0], 2, &mut out);
        assert_eq!(out, [22.0]);
        ensemble.eval(&[0.1f64, 5.0], 2, &mut out);
        assert_eq!(out, [12.0]);
    }

    #[test]
    fn rows_walked_in_lockstep_score_as_rows_walked_alone() {
        // 150 rows (two full blocks of 64 plus a remainder that is not a multiple of LANES)
        // mixing values on both sides of the thresholds, on them, and NaN.
        let mut spec = two_trees(Mode::Leq);
        spec.missing_tracks_true = vec![true, false, false, false, false, false];
        let ensemble = Ensemble::compile(&spec).unwrap();
        let values = [0.5, 1.0, 1.5, f32::NAN, -1.0, 0.0];
        let rows: Vec<f32> = (0..150)
            .flat_map(|i| [values[i % 6], values[(i / 6) % 6]])
            .collect();
        let mut together = vec![0.0; 150];
        ensemble.eval(&rows, 2, &mut together);
        for (i, row) in rows.chunks_exact(2).enumerate() {
            let mut alone = [0.0];
            ensemble.eval(row, 2, &mut alone);
            assert_eq!(together[i], alone[0], "row {i}: {row:?}");
        }
        // And the values themselves: NaN x0 tracks true (10), NaN x1 goes false (2).
        assert_eq!(&together[..4], [12.0, 12.0, 22.0, 12.0]);
        assert_eq!(together[6 * 3 + 3], 12.0);
    }

    #[test]
    fn rejects_malformed_ensembles() {
        let err = |spec: &EnsembleSpec| Ensemble::compile(spec).unwrap_err().to_string();
        let mut spec = two_trees(Mode::Leq);
        spec.true_ids[0] = 7;
        assert_eq!(
            err(&spec),
            "TreeEnsembleRegressor: node 0 of tree 0 branches to node 7, which tree 0 does not have"
        );
        let mut spec = two_trees(Mode::Leq);
        spec.true_ids[0] = 0;
        assert!(err(&spec).contains("cycle"), "{}", err(&spec));
        let mut spec = two_trees(Mode::Leq);
        spec.target_node_ids[0] = 0;
        assert!(
            err(&spec).contains("which is a branch, expected a leaf"),
            "{}",
            err(&spec)
        );
        let mut spec = two_trees(Mode::Leq);
        spec.target_ids[0] = 1;
        assert_eq!(
            err(&spec),
            "TreeEnsembleRegressor: target id 1 is out of range, expected 0..1"
        );
        let mut spec = two_trees(Mode::Leq);
        spec.values.pop();
        assert_eq!(
            err(&spec),
            "TreeEnsembleRegressor: attribute nodes_values has 5 entries, expected 6 (one per node, as nodes_nodeids)"
        );
    }
}
