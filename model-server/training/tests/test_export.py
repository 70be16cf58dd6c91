"""The exported graph: names, shapes, metadata, and agreement with the Python model."""

import json
import re
from datetime import datetime

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from nbtrain import export, train
from nbtrain.features import FEATURES, INDEX


def test_io_names_types_and_shapes(candidate):
    g = candidate.model.graph
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    assert [i.name for i in g.input] == ["features"]
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT and dims(g.input[0]) == ["N", 7]
    assert [o.name for o in g.output] == ["latency_ms", "p_fail"]
    for o in g.output:
        assert o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and dims(o) == ["N"]
    s = export.OnnxScorer(candidate.bytes())
    lat, p = s.session.run(None, {"features": candidate.holdout_rows.x[:5]})
    assert lat.dtype == np.float32 and lat.shape == (5,) and p.shape == (5,)


def test_metadata_keys_and_content(candidate):
    meta = {p.key: p.value for p in candidate.model.metadata_props}
    assert set(meta) == {"nb_features", "nb_version", "nb_trained_at", "nb_training_rows", "nb_holdout"}
    assert json.loads(meta["nb_features"]) == [{"name": n, "unit": u} for n, u in FEATURES]
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z", meta["nb_version"])
    at = datetime.fromisoformat(meta["nb_trained_at"])
    assert at.utcoffset().total_seconds() == 0 and at.strftime("%Y%m%dT%H%M%S.") + meta["nb_version"][16:] == meta["nb_version"]
    assert int(meta["nb_training_rows"]) == candidate.training_rows > 0
    h = json.loads(meta["nb_holdout"])
    for k in ("rows", "mae_ms", "baseline_mae_ms", "brier", "baseline_brier"):
        assert isinstance(h[k], (int, float)), k
    assert h["rows"] == len(candidate.holdout_rows)
    # on this data the model beats peak-EWMA by far
    assert h["mae_ms"] < 0.5 * h["baseline_mae_ms"]


def _scorer(rows):
    return train.fit(rows.subset(train.holdout_split(rows)[0]), train.Params(trees=60, depth=4, seed=3))


@pytest.fixture(scope="module")
def fitted(rows):
    scorer = _scorer(rows)
    return scorer, export.OnnxScorer(export.to_onnx(scorer))


def test_parity_on_a_batch(fitted, rows):
    scorer, onnx_scorer = fitted
    rng = np.random.default_rng(0)
    x = np.concatenate([rows.x, rows.x * rng.uniform(0.5, 1.5, rows.x.shape).astype(np.float32)])
    lat_py, p_py = scorer.predict(x)
    lat_ox, p_ox = onnx_scorer.predict(x)
    assert np.abs(lat_py - lat_ox).max() <= 1e-4
    assert np.abs(p_py - p_ox).max() <= 1e-4
    assert (lat_ox >= 0).all() and ((p_ox >= 0) & (p_ox <= 1)).all()


def test_parity_on_an_inflight_sweep(fitted, rows):
    """The scorer asks for each backend's curve: the same row at inflight 0..15, with the
    latency-at-this-level feature read per level."""
    scorer, onnx_scorer = fitted
    for base in rows.x[:: max(1, len(rows) // 20)]:
        sweep = np.repeat(base[None, :], 16, axis=0)
        sweep[:, INDEX["inflight"]] = np.arange(16)
        sweep[:, INDEX["latency_rif_ms"]] = base[INDEX["latency_rif_ms"]] / (base[INDEX["inflight"]] + 1) * (np.arange(16) + 1)
        lat_py, p_py = scorer.predict(sweep)
        lat_ox, p_ox = onnx_scorer.predict(sweep)
        assert np.abs(lat_py - lat_ox).max() <= 1e-4 and np.abs(p_py - p_ox).max() <= 1e-4
    # and the curve rises with load, as the data does
    assert lat_ox[-1] > lat_ox[0]


def test_outputs_stay_in_range_on_extreme_rows(fitted):
    _, onnx_scorer = fitted
    x = np.array([[0] * 7, [1e9] * 7, [-1e9] * 7, [15, 1e6, 1, 1e6, 1e6, 1, 100]], dtype=np.float32)
    lat, p = onnx_scorer.predict(x)
    assert np.isfinite(lat).all() and (lat >= 0).all() and ((p >= 0) & (p <= 1)).all()


def test_tree_conversion_agrees_with_skl2onnx(fitted, rows):
    """An independent converter (float32 thresholds) gives the same predictions up to its
    float32 rounding: our TreeEnsembleRegressor has the tree semantics right."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    scorer, _ = fitted
    ours = export.OnnxScorer(export.to_onnx(scorer)).session
    for est, out in ((scorer.latency, "latency_ms"), (scorer.failure, None)):
        ref = convert_sklearn(est, initial_types=[("features", FloatTensorType([None, 7]))],
                              target_opset={"": 17, "ai.onnx.ml": 1})
        r = ort.InferenceSession(ref.SerializeToString()).run(None, {"features": rows.x})[0].ravel()
        if out is None:
            r = np.clip(r, 0, 1)
            mine = ours.run(["p_fail"], {"features": rows.x})[0]
        else:
            r = np.maximum(r, 0)
            mine = ours.run(["latency_ms"], {"features": rows.x})[0]
        assert np.allclose(mine, r, rtol=1e-5, atol=1e-3)


def test_a_model_with_unknown_features_is_refused(candidate):
    m = onnx.ModelProto()
    m.CopyFrom(candidate.model)
    export.set_metadata(m, {"nb_features": json.dumps([{"name": "cpu", "unit": "ratio"}] * 7)})
    with pytest.raises(ValueError, match="does not build"):
        export.OnnxScorer(m).predict(candidate.holdout_rows.x)


def test_versions_carry_milliseconds():
    v, at = export.new_version(datetime.fromisoformat("2026-12-07T18:15:00.123456+00:00"))
    assert (v, at) == ("20261207T181500.123Z", "2026-12-07T18:15:00.123Z")
    assert export.later_version("20261207T181559.999Z") == ("20261207T181600.000Z", "2026-12-07T18:16:00.000Z")


def test_write_atomic_leaves_only_the_target(tmp_path, candidate):
    target = tmp_path / "m" / "scorer.onnx"
    export.write_atomic(candidate.model, target)
    export.write_atomic(candidate.bytes(), target)
    assert [p.name for p in target.parent.iterdir()] == ["scorer.onnx"]
    assert export.OnnxScorer(target).version == candidate.version
