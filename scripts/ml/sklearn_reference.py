"""Trains small scikit-learn models, exports them to ONNX with skl2onnx and writes what
scikit-learn itself predicts, so the Rust tests can check tract's scores row by row.

Usage: $(scripts/ml/venv) scripts/ml/sklearn_reference.py OUT_DIR

Writes OUT_DIR/<model>.onnx for each model and OUT_DIR/reference.json:
  {"n_features": 8, "inputs": [[...8 floats...], ...],
   "models": [{"name", "file", "outputs": [{"onnx_name", "sklearn", "kind": "int"|"float",
                                           "values": [[...], ...]}]}]}
Every value is computed from the same float32 inputs the ONNX model receives.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from skl2onnx import to_onnx
from sklearn.ensemble import (
    GradientBoostingRegressor,
    IsolationForest,
    RandomForestRegressor,
)
from sklearn.neural_network import MLPRegressor

SEED = 20261121
N_FEATURES = 8
# ai.onnx.ml 3 is what the tree ops need; the default domain at 17 keeps every op tract knows.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def make_data(rng):
    """Correlated Gaussian traffic plus a few per cent of far-away outliers, as float32."""
    n_normal, n_outliers = 3000, 90
    mixing = rng.normal(size=(N_FEATURES, N_FEATURES)) * 0.4 + np.eye(N_FEATURES)
    normal = rng.normal(size=(n_normal, N_FEATURES)) @ mixing
    outliers = rng.uniform(-8.0, 8.0, size=(n_outliers, N_FEATURES))
    x = np.vstack([normal, outliers]).astype(np.float32)
    rng.shuffle(x)
    return x


def export(model, x, path, fix=None):
    onx = to_onnx(model, x[:1], target_opset=TARGET_OPSET)
    if fix is not None:
        fix(onx, model)
    onnx.save_model(onx, str(path))
    return [o.name for o in onx.graph.output]


def fix_mlp_output_shape(onx, model):
    """skl2onnx 1.20 ends every MLPRegressor graph with Reshape(-1, 1), which folds a
    multi-output regressor's [N, k] into [N * k, 1]; reshape to [-1, k] instead."""
    k = model.n_outputs_
    (shape,) = [i for i in onx.graph.initializer if i.name == "shape_tensor"]
    assert list(onnx.numpy_helper.to_array(shape)) == [-1, 1], shape
    shape.CopyFrom(onnx.numpy_helper.from_array(np.array([-1, k], dtype=np.int64), "shape_tensor"))
    onx.graph.output[0].type.tensor_type.shape.dim[1].dim_value = k


def ensemble_nodes(path):
    """(feature ids, modes, thresholds, true ids, tree ids, node ids) of every
    TreeEnsembleRegressor in an exported model, as float32 thresholds the graph compares."""
    model = onnx.load(str(path))
    found = []
    for node in model.graph.node:
        if node.op_type != "TreeEnsembleRegressor":
            continue
        # IsolationForest feeds each tree Gather(X, columns); with max_features=1.0 the
        # columns are all of X in order, so feature ids index X directly.
        if node.input[0] != model.graph.input[0].name:
            (gather,) = [n for n in model.graph.node if n.output[0] == node.input[0]]
            (cols,) = [i for i in model.graph.initializer if i.name == gather.input[1]]
            assert list(onnx.numpy_helper.to_array(cols)) == list(range(N_FEATURES))
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        found.append(a)
    return found


def boundary_rows(rng, base, paths, n):
    """Rows whose features sit exactly on the thresholds along one root-to-leaf path of a
    tree, so a comparison mode that treats equality wrongly changes the score."""
    ensembles = [a for p in paths for a in ensemble_nodes(p)]
    out = []
    for _ in range(n):
        a = ensembles[rng.integers(len(ensembles))]
        trees = sorted(set(a["nodes_treeids"]))
        tree = trees[rng.integers(len(trees))]
        index = {
            (t, i): k for k, (t, i) in enumerate(zip(a["nodes_treeids"], a["nodes_nodeids"]))
        }
        row = base[rng.integers(len(base))].copy()
        fixed = set()
        k = index[tree, 0]
        while a["nodes_modes"][k] != b"LEAF":
            assert a["nodes_modes"][k] == b"BRANCH_LEQ"
            f = a["nodes_featureids"][k]
            th = np.float32(a["nodes_values"][k])
            if f not in fixed:
                row[f] = th
                fixed.add(f)
            nxt = a["nodes_truenodeids"][k] if row[f] <= th else a["nodes_falsenodeids"][k]
            k = index[tree, nxt]
        out.append(row)
    return np.array(out, dtype=np.float32)


def rows(values):
    values = np.asarray(values)
    if values.ndim == 1:
        values = values.reshape(-1, 1)
    return values.tolist()


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    x = make_data(rng)
    train, test = x[:2500], x[2500:]
    seed = SEED % 2**31

    forest = IsolationForest(n_estimators=100, random_state=seed).fit(train)
    forest_outputs = export(forest, train, out / "isolation_forest.onnx")
    # skl2onnx names the outputs (label, scores): predict's labels and decision_function.
    assert forest_outputs == ["label", "scores"], forest_outputs

    # Autoencoder: reconstructs its input through a 3-wide bottleneck.
    autoencoder = MLPRegressor(
        hidden_layer_sizes=(6, 3, 6), max_iter=400, random_state=seed
    ).fit(train, train)
    autoencoder_outputs = export(
        autoencoder, train, out / "autoencoder.onnx", fix=fix_mlp_output_shape
    )

    # Plain regressors: TreeEnsembleRegressor with SUM + base_values (boosting) and
    # AVERAGE over two targets (random forest).
    y = np.sin(train[:, 0]) + train[:, 1] * train[:, 2] - 0.5 * np.abs(train[:, 3])
    boosting = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=seed)
    boosting.fit(train, y)
    boosting_outputs = export(boosting, train, out / "gradient_boosting.onnx")
    y2 = np.stack([y, train[:, 4] - train[:, 5]], axis=1)
    random_forest = RandomForestRegressor(n_estimators=10, max_depth=6, random_state=seed)
    random_forest.fit(train, y2)
    random_forest_outputs = export(random_forest, train, out / "random_forest.onnx")

    trees = [out / f for f in ("isolation_forest.onnx", "gradient_boosting.onnx",
                                "random_forest.onnx")]
    test = np.vstack([test, boundary_rows(rng, test, trees, 300)])

    def single(onnx_name, sklearn, kind, values):
        return {"onnx_name": onnx_name, "sklearn": sklearn, "kind": kind, "values": rows(values)}

    models = [
        {
            "name": "isolation_forest",
            "file": "isolation_forest.onnx",
            "outputs": [
                single(forest_outputs[0], "predict", "int", forest.predict(test)),
                single(forest_outputs[1], "decision_function", "float",
                       forest.decision_function(test)),
            ],
        },
        {
            "name": "autoencoder",
            "file": "autoencoder.onnx",
            "outputs": [single(autoencoder_outputs[0], "predict", "float",
                               autoencoder.predict(test))],
        },
        {
            "name": "gradient_boosting",
            "file": "gradient_boosting.onnx",
            "outputs": [single(boosting_outputs[0], "predict", "float", boosting.predict(test))],
        },
        {
            "name": "random_forest",
            "file": "random_forest.onnx",
            "outputs": [single(random_forest_outputs[0], "predict", "float",
                               random_forest.predict(test))],
        },
    ]
    reference = {"n_features": N_FEATURES, "inputs": test.tolist(), "models": models}
    (out / "reference.json").write_text(json.dumps(reference))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: sklearn_reference.py OUT_DIR")
    main(sys.argv[1])
