"""Runs an ONNX model through onnx's reference evaluator, an implementation independent of ours.

Usage: $(scripts/ml/venv) scripts/ml/onnx_reference_eval.py MODEL INPUT_JSON

INPUT_JSON: {"features": [[f32, ...], ...],
             "sklearn": {"train": [[...], ...], "trees": T, "sample_size": S, "seed": N}}
("sklearn" optional). Checks the model with onnx.checker (full_check), feeds "features" to
the graph's input "features" as float32 and prints one JSON object on stdout:
{"outputs": {name: flattened values}, "sklearn_score": [...]}, where sklearn_score is
-score_samples of a scikit-learn IsolationForest fitted on "train" with the given parameters
(present only when "sklearn" was given).
"""

import json
import sys

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} MODEL INPUT_JSON")
    model = onnx.load(sys.argv[1])
    onnx.checker.check_model(model, full_check=True)
    with open(sys.argv[2]) as f:
        request = json.load(f)
    features = np.asarray(request["features"], dtype=np.float32)
    names = [o.name for o in model.graph.output]
    values = ReferenceEvaluator(model).run(None, {"features": features})
    # float32 values become Python floats exactly; JSON keeps them exactly.
    reply = {
        "outputs": {
            name: np.asarray(value).ravel().astype(np.float64).tolist()
            for name, value in zip(names, values)
        }
    }
    sk = request.get("sklearn")
    if sk is not None:
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(
            n_estimators=sk["trees"],
            max_samples=sk["sample_size"],
            random_state=sk["seed"],
        ).fit(np.asarray(sk["train"], dtype=np.float32))
        reply["sklearn_score"] = (-forest.score_samples(features)).tolist()
    json.dump(reply, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
