//! Fitting and scoring, after Liu, Ting & Zhou (2008) as scikit-learn implements it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Euler–Mascheroni constant, for the harmonic-number approximation H(i) ≈ ln(i) + γ.
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// `Node::feature` of a leaf.
const LEAF: u32 = u32::MAX;

/// How to grow the forest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForestParams {
    /// Number of trees.
    pub trees: usize,
    /// Rows drawn (without replacement) for each tree, ψ; fewer if the training set is smaller.
    pub sample_size: usize,
    /// Seed of the random generator: the same seed and rows give the same forest (with the
    /// locked version of `rand`, whose StdRng may change stream between releases).
    pub seed: u64,
    /// Deepest split; `None` means ceil(log2 ψ), the average depth of an unbalanced tree.
    pub max_depth: Option<usize>,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            trees: 100,
            sample_size: 256,
            seed: 0,
            max_depth: None,
        }
    }
}

/// Why a forest could not be fitted, or rows could not be scored.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ForestError {
    /// `n_features` was zero.
    #[error("expected at least one feature per row, found n_features = 0")]
    NoFeatures,
    /// The flat row buffer does not split into whole rows.
    #[error("expected a multiple of {n_features} values (whole rows), found {len}")]
    Ragged { len: usize, n_features: usize },
    /// Too few rows (or too small a sample size) to isolate anything.
    #[error("expected at least 2 training rows, found {found}")]
    TooFewRows { found: usize },
    /// A parameter out of range.
    #[error("{name} must be {expected}, found {found}")]
    Param {
        name: &'static str,
        expected: &'static str,
        found: usize,
    },
    /// A NaN or infinite training value: it has no place between a node's min and max.
    #[error("row {row}, feature {feature}: expected a finite number, found {value}")]
    NotFinite {
        row: usize,
        feature: usize,
        value: f32,
    },
    /// Feature names given for export do not match the forest.
    #[error("expected {expected} feature names (one per feature), found {found}")]
    FeatureNames { expected: usize, found: usize },
}

/// One node of the flat node array. Splits send `x[feature] <= value` to `left` and the rest
/// to `left + 1`; a leaf (`feature == LEAF`) holds its share of the mean path length in `value`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Node {
    pub(super) feature: u32,
    pub(super) value: f32,
    pub(super) left: u32,
}

impl Node {
    pub(super) fn is_leaf(&self) -> bool {
        self.feature == LEAF
    }
}

/// A fitted Isolation Forest. Scores are s(x) = 2^(−E[h(x)]/c(ψ)) in (0, 1), higher = more
/// anomalous (scikit-learn's `-score_samples`).
#[derive(Clone, Debug)]
pub struct IsolationForest {
    n_features: usize,
    params: ForestParams,
    psi: usize,
    max_depth: usize,
    /// Index of each tree's root; a tree's nodes run up to the next tree's root.
    pub(super) roots: Vec<u32>,
    pub(super) nodes: Vec<Node>,
    /// −1/c(ψ) in float32, the constant the ONNX graph multiplies by.
    pub(super) neg_inv_c: f32,
}

/// c(n): the average path length of an unsuccessful search in a binary search tree of n
/// nodes, which is what a leaf holding n samples would still have added had it been grown.
pub(super) fn average_path_length(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
        }
    }
}

impl IsolationForest {
    /// Fits a forest on `rows`, row-major with `n_features` values per row.
    ///
    /// Refuses empty, ragged or non-finite input, naming the first offending row and feature.
    pub fn fit(
        rows: &[f32],
        n_features: usize,
        params: &ForestParams,
    ) -> Result<IsolationForest, ForestError> {
        if n_features == 0 {
            return Err(ForestError::NoFeatures);
        }
        if !rows.len().is_multiple_of(n_features) {
            return Err(ForestError::Ragged {
                len: rows.len(),
                n_features,
            });
        }
        let n = rows.len() / n_features;
        if n < 2 {
            return Err(ForestError::TooFewRows { found: n });
        }
        if params.trees == 0 {
            return Err(ForestError::Param {
                name: "trees",
                expected: "at least 1",
                found: 0,
            });
        }
        // With ψ = 1 every tree is a single leaf and c(ψ) = 0: the score would be 0/0.
        if params.sample_size < 2 {
            return Err(ForestError::Param {
                name: "sample_size",
                expected: "at least 2",
                found: params.sample_size,
            });
        }
        // Node indices and feature ids are u32 in the flat arrays.
        if n_features >= LEAF as usize || n > u32::MAX as usize {
            return Err(ForestError::Param {
                name: "rows and features",
                expected: "fewer than 2^32 each",
                found: n.max(n_features),
            });
        }
        if let Some(at) = rows.iter().position(|v| !v.is_finite()) {
            return Err(ForestError::NotFinite {
                row: at / n_features,
                feature: at % n_features,
                value: rows[at],
            });
        }

        let psi = params.sample_size.min(n);
        // ceil(log2 ψ) for ψ >= 2, as scikit-learn computes it.
        let max_depth = params
            .max_depth
            .unwrap_or((usize::BITS - (psi - 1).leading_zeros()) as usize);
        let mut rng = StdRng::seed_from_u64(params.seed);
        let mut grower = Grower {
            rows,
            n_features,
            max_depth,
            trees: params.trees as f64,
            features: (0..n_features as u32).collect(),
            sample: Vec::with_capacity(psi),
            stack: Vec::new(),
        };
        let mut roots = Vec::with_capacity(params.trees);
        let mut nodes = Vec::with_capacity(params.trees * (2 * psi - 1));
        for _ in 0..params.trees {
            grower.sample.clear();
            grower.sample.extend(
                rand::seq::index::sample(&mut rng, n, psi)
                    .into_iter()
                    .map(|i| i as u32),
            );
            roots.push(nodes.len() as u32);
            grower.grow(&mut rng, &mut nodes);
        }
        Ok(IsolationForest {
            n_features,
            params: params.clone(),
            psi,
            max_depth,
            roots,
            nodes,
            neg_inv_c: (-1.0 / average_path_length(psi)) as f32,
        })
    }

    /// Anomaly score of one row, in (0, 1); higher = more anomalous.
    ///
    /// Computed in float32 exactly as the exported ONNX graph does, so the two agree. A NaN
    /// feature fails every `<=` test and goes right, as the graph's
    /// `nodes_missing_value_tracks_true = 0` also sends it.
    ///
    /// # Panics
    /// If `row.len()` is not [`IsolationForest::n_features`].
    pub fn score(&self, row: &[f32]) -> f64 {
        assert_eq!(
            row.len(),
            self.n_features,
            "expected a row of {} features, found {}",
            self.n_features,
            row.len()
        );
        let mut mean_path = 0f32;
        for &root in &self.roots {
            let mut at = root as usize;
            loop {
                let node = self.nodes[at];
                if node.is_leaf() {
                    mean_path += node.value;
                    break;
                }
                // Written as a negated `<=` so that NaN goes right as well.
                let goes_left = row[node.feature as usize] <= node.value;
                at = node.left as usize + usize::from(!goes_left);
            }
        }
        f64::from(2f32.powf(mean_path * self.neg_inv_c))
    }

    /// Scores of row-major `rows`, one per row.
    pub fn score_batch(&self, rows: &[f32]) -> Result<Vec<f64>, ForestError> {
        if !rows.len().is_multiple_of(self.n_features) {
            return Err(ForestError::Ragged {
                len: rows.len(),
                n_features: self.n_features,
            });
        }
        Ok(rows
            .chunks_exact(self.n_features)
            .map(|row| self.score(row))
            .collect())
    }

    /// Values per row.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// The parameters the forest was fitted with.
    pub fn params(&self) -> &ForestParams {
        &self.params
    }

    /// Rows each tree was grown on, ψ: the requested sample size or the whole training set
    /// if that was smaller.
    pub fn sample_size(&self) -> usize {
        self.psi
    }

    /// The depth limit the trees were grown with.
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }
}

/// Scratch space for growing trees, reused from tree to tree.
struct Grower<'a> {
    rows: &'a [f32],
    n_features: usize,
    max_depth: usize,
    trees: f64,
    /// Feature ids, shuffled in place to draw them without replacement.
    features: Vec<u32>,
    /// The tree's sample (row ids), partitioned in place as nodes split.
    sample: Vec<u32>,
    /// Nodes still to grow: (node index, sample range start, end, depth).
    stack: Vec<(usize, usize, usize, usize)>,
}

impl Grower<'_> {
    fn value(&self, row: u32, feature: u32) -> f32 {
        self.rows[row as usize * self.n_features + feature as usize]
    }

    /// Grows one tree on `self.sample`, appending its nodes; a split's two children are
    /// adjacent so that a node needs only one child index.
    fn grow(&mut self, rng: &mut StdRng, nodes: &mut Vec<Node>) {
        let root = nodes.len();
        nodes.push(Node {
            feature: LEAF,
            value: 0.0,
            left: 0,
        });
        self.stack.push((root, 0, self.sample.len(), 0));
        while let Some((at, start, end, depth)) = self.stack.pop() {
            let split = if depth >= self.max_depth || end - start <= 1 {
                None
            } else {
                self.draw_split(rng, start, end)
            };
            let Some((feature, threshold)) = split else {
                let path = depth as f64 + average_path_length(end - start);
                nodes[at].value = (path / self.trees) as f32;
                continue;
            };
            let mut mid = start;
            for i in start..end {
                if self.value(self.sample[i], feature) <= threshold {
                    self.sample.swap(i, mid);
                    mid += 1;
                }
            }
            let left = nodes.len();
            let leaf = nodes[at];
            nodes.push(leaf);
            nodes.push(leaf);
            nodes[at] = Node {
                feature,
                value: threshold,
                left: left as u32,
            };
            self.stack.push((left + 1, mid, end, depth + 1));
            self.stack.push((left, start, mid, depth + 1));
        }
    }

    /// A random feature that is not constant over the node's rows and a threshold drawn
    /// uniformly between its min and max; `None` if every feature is constant there.
    ///
    /// Constant features are skipped rather than ending the node, as scikit-learn does: only
    /// all-equal rows make a leaf before the depth limit.
    fn draw_split(&mut self, rng: &mut StdRng, start: usize, end: usize) -> Option<(u32, f32)> {
        for k in 0..self.n_features {
            let pick = rng.random_range(k..self.n_features);
            self.features.swap(k, pick);
            let feature = self.features[k];
            let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
            for &row in &self.sample[start..end] {
                let v = self.value(row, feature);
                min = min.min(v);
                max = max.max(v);
            }
            if min < max {
                let u: f64 = rng.random();
                let mut threshold = (f64::from(min) + u * (f64::from(max) - f64::from(min))) as f32;
                // Rounding to float32 may reach max, which would send every row left.
                if threshold >= max {
                    threshold = min;
                }
                return Some((feature, threshold));
            }
        }
        None
    }
}
