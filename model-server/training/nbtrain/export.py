"""The scorer as one ONNX graph, with the metadata the model server and the proxy check.

docs/ml.md fixes the graph's interface: input ``features`` (float32 [N, 7]), outputs
``latency_ms`` and ``p_fail`` (float32 [N]), and ``metadata_props`` ``nb_features``,
``nb_version``, ``nb_trained_at``, ``nb_training_rows``, ``nb_holdout``.

Each ensemble becomes one ``TreeEnsembleRegressor`` node over the shared input (cast to
double, see :func:`tree_ensemble`), then ``Relu`` (latency ≥ 0) and ``Clip`` (p in [0, 1])
finish the outputs exactly as :meth:`nbtrain.train.Scorer.predict` does, so Python and ONNX
agree to float32 rounding. :class:`OnnxScorer` runs a graph with onnxruntime: the hold-out
figures are the exported artifact's own, and the same code evaluates the active model.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import __version__
from .features import FEATURES

OPSET = {"": 17, "ai.onnx.ml": 3}
INPUT = "features"
OUTPUTS = ("latency_ms", "p_fail")


def new_version(now: datetime | None = None) -> tuple[str, str]:
    """``(version, trained_at)``: ``20261207T181500.123Z`` and the RFC 3339 time, both UTC with
    milliseconds."""
    return _stamp(now or datetime.now(timezone.utc))


def later_version(version: str) -> tuple[str, str]:
    """The version one millisecond after ``version`` (to step past one already taken)."""
    t = datetime.strptime(version, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
    return _stamp(t + timedelta(milliseconds=1))


def _stamp(t: datetime) -> tuple[str, str]:
    t = t.astimezone(timezone.utc)
    ms = f"{t.microsecond // 1000:03d}"
    return t.strftime("%Y%m%dT%H%M%S.") + ms + "Z", t.strftime("%Y-%m-%dT%H:%M:%S.") + ms + "Z"


def tree_ensemble(est, inp: str, out: str, name: str) -> onnx.NodeProto:
    """A fitted ``GradientBoostingRegressor`` as one ``TreeEnsembleRegressor`` (ai.onnx.ml 3)
    over double input, thresholds, leaf values and sum in double, as scikit-learn computes.

    skl2onnx's converter stores thresholds and leaf values as float32 and sums in float32:
    that differs from scikit-learn by ~1e-4 ms on latencies of a few hundred ms and may
    flip a comparison when a value sits next to a threshold. Here the only rounding left is
    the output's, to float32 (relative 6e-8). A test checks this against skl2onnx."""
    nodes = {k: [] for k in ("tree", "id", "feature", "value", "mode", "true", "false")}
    leaves = {k: [] for k in ("tree", "id", "weight")}
    for t, (tree,) in enumerate(est.estimators_):
        tr = tree.tree_
        for i in range(tr.node_count):
            leaf = tr.children_left[i] == -1  # scikit-learn's TREE_LEAF
            nodes["tree"].append(t)
            nodes["id"].append(i)
            nodes["mode"].append("LEAF" if leaf else "BRANCH_LEQ")  # x <= threshold: left child
            nodes["feature"].append(0 if leaf else int(tr.feature[i]))
            nodes["value"].append(0.0 if leaf else float(tr.threshold[i]))
            nodes["true"].append(0 if leaf else int(tr.children_left[i]))
            nodes["false"].append(0 if leaf else int(tr.children_right[i]))
            if leaf:
                leaves["tree"].append(t)
                leaves["id"].append(i)
                leaves["weight"].append(float(tr.value[i].ravel()[0]) * est.learning_rate)
    f64 = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.float64), name)
    return helper.make_node(
        "TreeEnsembleRegressor", [inp], [out], name=name, domain="ai.onnx.ml",
        n_targets=1, aggregate_function="SUM", post_transform="NONE",
        base_values_as_tensor=f64("base_values", np.ravel(est.init_.constant_)[:1]),
        nodes_treeids=nodes["tree"], nodes_nodeids=nodes["id"], nodes_featureids=nodes["feature"],
        nodes_values_as_tensor=f64("nodes_values", nodes["value"]), nodes_modes=nodes["mode"],
        nodes_truenodeids=nodes["true"], nodes_falsenodeids=nodes["false"],
        target_treeids=leaves["tree"], target_nodeids=leaves["id"], target_ids=[0] * len(leaves["id"]),
        target_weights_as_tensor=f64("target_weights", leaves["weight"]),
    )


def to_onnx(scorer, meta: dict[str, str] | None = None) -> onnx.ModelProto:
    """One graph computing both predictions. Its ``metadata_props`` hold ``nb_features`` and
    ``meta``; the rest can be added later with :func:`set_metadata` (metadata does not change
    what the graph computes, so a graph can be measured before its figures are stamped on)."""
    axis = numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    nodes = [
        helper.make_node("Cast", [INPUT], ["features_f64"], to=TensorProto.DOUBLE, name="features_f64"),
        tree_ensemble(scorer.latency, "features_f64", "latency_raw", "latency_trees"),
        helper.make_node("Relu", ["latency_raw"], ["latency_nonneg"], name="latency_nonneg"),
        helper.make_node("Squeeze", ["latency_nonneg", "axis1"], ["latency_ms"], name="latency_ms"),
        tree_ensemble(scorer.failure, "features_f64", "p_raw", "failure_trees"),
        helper.make_node("Clip", ["p_raw", "zero", "one"], ["p_clipped"], name="p_fail_clip"),
        helper.make_node("Squeeze", ["p_clipped", "axis1"], ["p_fail"], name="p_fail"),
    ]
    graph = helper.make_graph(
        nodes,
        "nb_scorer",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", len(FEATURES)])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N"]) for o in OUTPUTS],
        initializer=[axis, zero, one],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in OPSET.items()],
        producer_name="nbtrain",
        producer_version=__version__,
        doc_string="NeuraBalancer scorer: predicted latency of a success (ms) and failure probability "
        "per backend row (docs/ml.md)",
    )
    model.ir_version = 8  # opset 17; readable by every onnxruntime since 1.12
    set_metadata(model, {"nb_features": features_json(), **(meta or {})})
    onnx.checker.check_model(model, full_check=True)
    return model


def set_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> onnx.ModelProto:
    """Adds or replaces ``metadata_props`` entries."""
    props = {p.key: p.value for p in model.metadata_props}
    props.update(meta)
    helper.set_model_props(model, props)
    return model


def features_json() -> str:
    return json.dumps([{"name": n, "unit": u} for n, u in FEATURES])


def metadata(version: str, trained_at: str, training_rows: int, holdout: dict) -> dict[str, str]:
    return {
        "nb_features": features_json(),
        "nb_version": version,
        "nb_trained_at": trained_at,
        "nb_training_rows": str(int(training_rows)),
        "nb_holdout": json.dumps(holdout, sort_keys=True),
    }


def write_atomic(model: onnx.ModelProto | bytes, path: str | Path) -> Path:
    """Writes to a temporary file in the target's directory, fsyncs, then renames over the
    target: a reader (the model server's file watch) sees the old file or the new one, never
    a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class OnnxScorer:
    """An exported model run with onnxruntime, its metadata parsed."""

    def __init__(self, model: onnx.ModelProto | bytes | str | Path):
        import onnxruntime as ort

        if isinstance(model, (str, Path)):
            model = Path(model).read_bytes()
        if isinstance(model, onnx.ModelProto):
            model = model.SerializeToString()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.features = [(f["name"], f["unit"]) for f in json.loads(self.meta.get("nb_features", "[]"))]
        self.version = self.meta.get("nb_version")

    def columns(self) -> list[int]:
        """Where each of the model's features sits in our row; ValueError when the model names
        a feature (or unit) this pipeline does not build."""
        ours = {f: i for i, f in enumerate(FEATURES)}
        missing = [f for f in self.features if f not in ours]
        if missing or not self.features:
            raise ValueError(f"model {self.version} has features this pipeline does not build: {missing or 'none'}")
        return [ours[f] for f in self.features]

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32)[:, self.columns()])
        lat, p = self.session.run(list(OUTPUTS), {INPUT: x})
        return lat.reshape(-1).astype(np.float64), p.reshape(-1).astype(np.float64)
