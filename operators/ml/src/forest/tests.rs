use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tract_onnx::pb::ModelProto;

use super::isolation::average_path_length;
use super::*;

const FEATURES: usize = 4;
const OUTLIERS: usize = 6;

/// A dense standard-normal cluster of `inliers` rows followed by `OUTLIERS` rows 8 to 12
/// standard deviations out, each along another direction.
fn cluster_with_outliers(inliers: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rows = Vec::with_capacity((inliers + OUTLIERS) * FEATURES);
    for _ in 0..inliers * FEATURES {
        // Box–Muller.
        let (u, v): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
        rows.push(((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32);
    }
    for k in 0..OUTLIERS {
        for f in 0..FEATURES {
            let sign = if (k + f) % 2 == 0 { 1.0 } else { -1.0 };
            let far = if f == k % FEATURES { 12.0 } else { 8.0 };
            rows.push(sign * far);
        }
    }
    rows
}

fn params(seed: u64) -> ForestParams {
    ForestParams {
        seed,
        ..ForestParams::default()
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("f{i}")).collect()
}

#[test]
fn average_path_length_matches_scikit_learn() {
    assert_eq!(average_path_length(0), 0.0);
    assert_eq!(average_path_length(1), 0.0);
    assert_eq!(average_path_length(2), 1.0);
    // sklearn.ensemble._iforest._average_path_length([256, 3, 100]).
    for (n, expected) in [(256, 10.24477092), (3, 1.20739236), (100, 8.36467103)] {
        assert!((average_path_length(n) - expected).abs() < 1e-7, "c({n})");
    }
}

#[test]
fn outliers_score_above_every_inlier_and_all_scores_are_in_the_unit_interval() {
    let inliers = 2000;
    let rows = cluster_with_outliers(inliers, 1);
    let forest = IsolationForest::fit(&rows, FEATURES, &params(7)).unwrap();
    let scores = forest.score_batch(&rows).unwrap();
    assert_eq!(scores.len(), inliers + OUTLIERS);
    assert!(scores.iter().all(|&s| s > 0.0 && s < 1.0), "{scores:?}");
    let top_inlier = scores[..inliers].iter().copied().fold(0.0, f64::max);
    let low_outlier = scores[inliers..].iter().copied().fold(1.0, f64::min);
    assert!(
        low_outlier > top_inlier,
        "least anomalous outlier {low_outlier} vs most anomalous inlier {top_inlier}"
    );
    // Isolated at the first splits, far outliers score well above the 0.5 of an average row.
    assert!(low_outlier > 0.7, "{low_outlier}");
    let mean_inlier = scores[..inliers].iter().sum::<f64>() / inliers as f64;
    assert!(mean_inlier < 0.5, "{mean_inlier}");
}

#[test]
fn the_same_seed_grows_the_same_forest_and_another_seed_another() {
    let rows = cluster_with_outliers(500, 2);
    let scores = |seed| {
        IsolationForest::fit(&rows, FEATURES, &params(seed))
            .unwrap()
            .score_batch(&rows)
            .unwrap()
    };
    assert_eq!(scores(3), scores(3));
    assert_ne!(scores(3), scores(4));
}

#[test]
fn sample_size_and_depth_follow_the_training_set() {
    let rows = cluster_with_outliers(94, 3); // 100 rows
    let forest = IsolationForest::fit(&rows, FEATURES, &params(0)).unwrap();
    assert_eq!(forest.sample_size(), 100);
    assert_eq!(forest.max_depth(), 7); // ceil(log2 100)
    let rows = cluster_with_outliers(1000, 3);
    let forest = IsolationForest::fit(&rows, FEATURES, &params(0)).unwrap();
    assert_eq!(forest.sample_size(), 256);
    assert_eq!(forest.max_depth(), 8);
    let p = ForestParams {
        sample_size: 257,
        ..params(0)
    };
    assert_eq!(
        IsolationForest::fit(&rows, FEATURES, &p)
            .unwrap()
            .max_depth(),
        9
    );
    let p = ForestParams {
        max_depth: Some(2),
        ..params(0)
    };
    let shallow = IsolationForest::fit(&rows, FEATURES, &p).unwrap();
    assert_eq!(shallow.max_depth(), 2);
    // A tree of depth 2 has at most 7 nodes.
    for (tree, &root) in shallow.roots.iter().enumerate() {
        let end = shallow
            .roots
            .get(tree + 1)
            .map_or(shallow.nodes.len(), |&n| n as usize);
        assert!(end - root as usize <= 7);
    }
}

#[test]
fn constant_features_are_never_split_on() {
    let mut rows = cluster_with_outliers(300, 4);
    for row in rows.chunks_exact_mut(FEATURES) {
        row[2] = 5.0;
    }
    let forest = IsolationForest::fit(&rows, FEATURES, &params(0)).unwrap();
    let splits: Vec<_> = forest.nodes.iter().filter(|n| !n.is_leaf()).collect();
    assert!(!splits.is_empty());
    assert!(splits.iter().all(|n| n.feature != 2));
    // Every other feature is used somewhere.
    for f in [0, 1, 3] {
        assert!(splits.iter().any(|n| n.feature == f), "feature {f}");
    }
}

#[test]
fn all_equal_rows_make_single_leaf_trees_scoring_one_half() {
    // Each tree is one leaf of ψ rows: E[h] = c(ψ), so s = 2^-1.
    let rows = vec![1.5f32; 50 * 3];
    let forest = IsolationForest::fit(&rows, 3, &params(0)).unwrap();
    assert_eq!(forest.nodes.len(), forest.params().trees);
    for s in forest.score_batch(&rows).unwrap() {
        assert!((s - 0.5).abs() < 1e-6, "{s}");
    }
}

#[test]
fn leaves_hold_depth_plus_c_of_their_size_over_the_tree_count() {
    // Two distinct rows: the root splits them into two leaves of one row at depth 1,
    // each worth (1 + c(1)) / trees; E[h] = 1 = c(2), so both score 2^-1.
    let rows = [0.0f32, 1.0];
    let p = ForestParams {
        trees: 4,
        ..params(0)
    };
    let forest = IsolationForest::fit(&rows, 1, &p).unwrap();
    assert_eq!(forest.nodes.len(), 4 * 3);
    let leaves: Vec<f32> = forest
        .nodes
        .iter()
        .filter(|n| n.is_leaf())
        .map(|n| n.value)
        .collect();
    assert_eq!(leaves, vec![0.25; 8]);
    for s in forest.score_batch(&rows).unwrap() {
        assert!((s - 0.5).abs() < 1e-7, "{s}");
    }
    // Thresholds lie in [min, max) so that both sides get a row.
    for split in forest.nodes.iter().filter(|n| !n.is_leaf()) {
        assert!((0.0..1.0).contains(&split.value), "{}", split.value);
    }
}

#[test]
fn nan_at_scoring_time_takes_the_right_branch() {
    // Same rule as the exported graph (nodes_missing_value_tracks_true = 0).
    let rows = [0.0f32, 1.0];
    let forest = IsolationForest::fit(&rows, 1, &params(0)).unwrap();
    assert_eq!(forest.score(&[f32::NAN]), forest.score(&[1.0]));
}

#[test]
fn bad_training_input_is_refused_with_its_whereabouts() {
    let p = ForestParams::default();
    assert_eq!(
        IsolationForest::fit(&[], 3, &p).unwrap_err(),
        ForestError::TooFewRows { found: 0 }
    );
    assert_eq!(
        IsolationForest::fit(&[1.0, 2.0, 3.0], 3, &p).unwrap_err(),
        ForestError::TooFewRows { found: 1 }
    );
    assert_eq!(
        IsolationForest::fit(&[1.0; 7], 3, &p).unwrap_err(),
        ForestError::Ragged {
            len: 7,
            n_features: 3
        }
    );
    assert_eq!(
        IsolationForest::fit(&[1.0; 6], 0, &p).unwrap_err(),
        ForestError::NoFeatures
    );
    let mut rows = vec![0.5f32; 30];
    rows[3 * 5 + 2] = f32::NAN;
    let err = IsolationForest::fit(&rows, 3, &p).unwrap_err();
    assert!(
        matches!(err, ForestError::NotFinite { row: 5, feature: 2, value } if value.is_nan()),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "row 5, feature 2: expected a finite number, found NaN"
    );
    rows[3 * 5 + 2] = 0.0;
    rows[7 * 3] = f32::INFINITY;
    assert!(matches!(
        IsolationForest::fit(&rows, 3, &p).unwrap_err(),
        ForestError::NotFinite {
            row: 7,
            feature: 0,
            ..
        }
    ));
    rows[7 * 3] = 0.0;
    let zero_trees = ForestParams {
        trees: 0,
        ..ForestParams::default()
    };
    assert!(matches!(
        IsolationForest::fit(&rows, 3, &zero_trees).unwrap_err(),
        ForestError::Param { name: "trees", .. }
    ));
    let one_sample = ForestParams {
        sample_size: 1,
        ..ForestParams::default()
    };
    assert!(matches!(
        IsolationForest::fit(&rows, 3, &one_sample).unwrap_err(),
        ForestError::Param {
            name: "sample_size",
            found: 1,
            ..
        }
    ));
    let forest = IsolationForest::fit(&rows, 3, &p).unwrap();
    assert_eq!(
        forest.score_batch(&[0.0; 4]).unwrap_err(),
        ForestError::Ragged {
            len: 4,
            n_features: 3
        }
    );
}

#[test]
fn the_onnx_model_decodes_with_one_ensemble_then_mul_and_pow() {
    let rows = cluster_with_outliers(300, 5);
    let forest = IsolationForest::fit(&rows, FEATURES, &params(0)).unwrap();
    let bytes = forest.to_onnx(&names(FEATURES), "unit test").unwrap();
    let model = ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(model.ir_version, 8);
    assert_eq!(model.producer_name, "anom");
    let opsets: Vec<_> = model
        .opset_import
        .iter()
        .map(|o| (o.domain.as_str(), o.version))
        .collect();
    assert_eq!(opsets, [("", 17), ("ai.onnx.ml", 3)]);
    assert!(model.doc_string.contains("[f0, f1, f2, f3]"));
    assert!(model.doc_string.ends_with("unit test"));
    let graph = model.graph.unwrap();
    let ops: Vec<_> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(ops, ["TreeEnsembleRegressor", "Mul", "Pow"]);
    assert_eq!(graph.input[0].name, INPUT_NAME);
    assert_eq!(graph.output[0].name, OUTPUT_NAME);
    assert_eq!(shape(&graph.input[0]), ["N", "4"]);
    assert_eq!(shape(&graph.output[0]), ["N", "1"]);
    let ensemble = &graph.node[0];
    let attr = |name: &str| {
        ensemble
            .attribute
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no attribute {name}"))
    };
    let n = forest.nodes.len();
    for name in [
        "nodes_treeids",
        "nodes_nodeids",
        "nodes_featureids",
        "nodes_truenodeids",
        "nodes_falsenodeids",
    ] {
        assert_eq!(attr(name).ints.len(), n, "{name}");
    }
    assert_eq!(attr("nodes_values").floats.len(), n);
    let leaves = forest.nodes.iter().filter(|n| n.is_leaf()).count();
    assert_eq!(attr("target_weights").floats.len(), leaves);
    assert_eq!(attr("target_nodeids").ints.len(), leaves);
    // Node ids are local to a tree: tree 0 holds the nodes before tree 1's root, which is 0.
    let tree_ids = &attr("nodes_treeids").ints;
    assert_eq!(
        tree_ids.iter().filter(|&&t| t == 0).count(),
        forest.roots[1] as usize
    );
    assert_eq!(
        attr("nodes_nodeids").ints[forest.roots[1] as usize],
        0,
        "tree 1 starts at node 0"
    );
    let modes = &attr("nodes_modes").strings;
    assert!(modes.iter().all(|m| m == b"LEAF" || m == b"BRANCH_LEQ"));
    assert_eq!(modes.iter().filter(|m| *m == b"LEAF").count(), leaves);
    assert_eq!(attr("aggregate_function").s, b"SUM");
    let meta: std::collections::HashMap<_, _> = model
        .metadata_props
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(meta["feature_names"], r#"["f0","f1","f2","f3"]"#);
    assert_eq!(meta["trees"], "100");
    assert_eq!(
        forest.to_onnx(&names(3), "").unwrap_err(),
        ForestError::FeatureNames {
            expected: 4,
            found: 3
        }
    );
}

/// A float tensor's dims, symbolic ones by name.
fn shape(value: &tract_onnx::pb::ValueInfoProto) -> Vec<String> {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    use tract_onnx::pb::type_proto;
    let Some(type_proto::Value::TensorType(tensor)) = &value.r#type.as_ref().unwrap().value else {
        panic!("{} is not a tensor", value.name);
    };
    assert_eq!(tensor.elem_type, 1, "float");
    tensor
        .shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| match d.value.as_ref().unwrap() {
            Value::DimParam(p) => p.clone(),
            Value::DimValue(v) => v.to_string(),
        })
        .collect()
}

fn context() -> CardContext<'static> {
    CardContext {
        pipeline: "cpu",
        pipeline_version: "abc123",
        from_ms: 1_700_000_000_000,
        to_ms: 1_700_086_400_000,
        created_at_ms: 1_700_090_000_500,
    }
}

#[test]
fn the_card_threshold_flags_about_the_contamination() {
    let inliers = 3000;
    let rows = cluster_with_outliers(inliers, 6);
    let n = inliers + OUTLIERS;
    let forest = IsolationForest::fit(&rows, FEATURES, &params(1)).unwrap();
    let scores = forest.score_batch(&rows).unwrap();
    for contamination in [0.01, 0.05, 0.2] {
        let card = ModelCard::build(
            &forest,
            &rows,
            FEATURES,
            &names(FEATURES),
            contamination,
            &context(),
        )
        .unwrap();
        let flagged = scores.iter().filter(|&&s| s > card.threshold).count();
        assert_eq!(flagged, card.flagged_in_training);
        let expected = contamination * n as f64;
        // Linear interpolation puts the threshold within one row of the exact share.
        assert!(
            (flagged as f64 - expected).abs() <= 1.0,
            "contamination {contamination}: flagged {flagged}, expected {expected}"
        );
    }
}

#[test]
fn the_card_describes_the_training_scores() {
    let rows = cluster_with_outliers(1000, 7);
    let forest = IsolationForest::fit(&rows, FEATURES, &params(2)).unwrap();
    let card =
        ModelCard::build(&forest, &rows, FEATURES, &names(FEATURES), 0.01, &context()).unwrap();
    let mut scores = forest.score_batch(&rows).unwrap();
    scores.sort_by(f64::total_cmp);
    let s = &card.scores;
    assert_eq!(card.samples, 1006);
    assert_eq!(s.min, scores[0]);
    assert_eq!(s.max, scores[1005]);
    let mean = scores.iter().sum::<f64>() / 1006.0;
    assert!((s.mean - mean).abs() < 1e-12);
    // p50 of 1006 sorted values: halfway between the 503rd and 504th.
    assert!((s.quantiles.p50 - (scores[502] + scores[503]) / 2.0).abs() < 1e-12);
    let q = &s.quantiles;
    assert!(s.min <= q.p50 && q.p50 <= q.p90 && q.p90 <= q.p95);
    assert!(q.p95 <= q.p99 && q.p99 <= q.p99_9 && q.p99_9 <= s.max);
    assert_eq!(card.threshold, q.p99);
    assert_eq!(s.histogram.counts.len(), HISTOGRAM_BINS);
    assert_eq!(s.histogram.counts.iter().sum::<u64>(), 1006);
    // The outliers are the top bin; the bulk sits low.
    assert!(s.histogram.counts[HISTOGRAM_BINS - 1] >= 1);
    assert!(s.histogram.counts[..HISTOGRAM_BINS / 2].iter().sum::<u64>() > 900);
    assert_eq!(card.features, names(FEATURES));
    assert_eq!(card.training_from.rfc3339, "2023-11-14T22:13:20Z");
    assert_eq!(card.training_to.ms, 1_700_086_400_000);
    assert_eq!(card.created_at.rfc3339, "2023-11-15T23:13:20.5Z");
    assert_eq!(card.forest.trees, 100);
    assert_eq!(card.forest.sample_size, 256);
    assert_eq!(card.forest.seed, 2);

    let summary = card.to_string();
    eprintln!("{summary}");
    assert!(
        summary.contains("pipeline cpu (version abc123)"),
        "{summary}"
    );
    assert!(summary.contains("f0, f1, f2, f3"), "{summary}");
    assert!(
        summary.contains(&format!("threshold {:.4}", card.threshold)),
        "{summary}"
    );

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cpu.onnx");
    let path = card.write_beside(&model).unwrap();
    assert_eq!(path, dir.path().join("cpu.card.json"));
    let back = ModelCard::read_beside(&model).unwrap();
    // serde_json (without float_roundtrip) may parse the last digit of a float differently,
    // so compare with the card after the same trip through JSON text, and the threshold
    // within rounding.
    let reparsed: ModelCard = serde_json::from_str(&serde_json::to_string(&card).unwrap()).unwrap();
    assert_eq!(back, reparsed);
    assert!((back.threshold - card.threshold).abs() < 1e-15);
}

#[test]
fn the_card_refuses_inconsistent_inputs() {
    let rows = cluster_with_outliers(100, 8);
    let forest = IsolationForest::fit(&rows, FEATURES, &params(0)).unwrap();
    let build = |rows: &[f32], n_features, names: &[String], c, ctx: &CardContext| {
        ModelCard::build(&forest, rows, n_features, names, c, ctx).unwrap_err()
    };
    let ok_names = names(FEATURES);
    for c in [0.0, 0.6, f64::NAN, -0.1] {
        assert!(matches!(
            build(&rows, FEATURES, &ok_names, c, &context()),
            CardError::Contamination(_)
        ));
    }
    assert!(matches!(
        build(&rows, 3, &names(3), 0.1, &context()),
        CardError::Features {
            expected: 4,
            found: 3
        }
    ));
    assert!(matches!(
        build(&rows, FEATURES, &names(5), 0.1, &context()),
        CardError::FeatureNames {
            expected: 4,
            found: 5
        }
    ));
    assert!(matches!(
        build(&[], FEATURES, &ok_names, 0.1, &context()),
        CardError::NoRows
    ));
    let backwards = CardContext {
        from_ms: 10,
        to_ms: 5,
        ..context()
    };
    assert!(matches!(
        build(&rows, FEATURES, &ok_names, 0.1, &backwards),
        CardError::Range {
            from_ms: 10,
            to_ms: 5
        }
    ));
    let far_future = CardContext {
        created_at_ms: i64::MAX,
        ..context()
    };
    assert!(matches!(
        build(&rows, FEATURES, &ok_names, 0.1, &far_future),
        CardError::Timestamp {
            what: "created at",
            ..
        }
    ));
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        ModelCard::read_beside(&dir.path().join("missing.onnx")).unwrap_err(),
        CardError::Io { .. }
    ));
}
