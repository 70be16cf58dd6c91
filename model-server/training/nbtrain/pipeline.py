"""Rows in, a validated ONNX candidate out: the steps ``train`` and ``loop`` share.

Split by time per scenario, fit on the older part, export, and measure the *exported* graph
(through onnxruntime) on the held-out part, so the figures in the model's ``nb_holdout`` are
the artifact's own. The shipped model is the one fit without the held-out rows: its figures
describe exactly it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx

from . import export, train
from .features import Rows


@dataclass
class Candidate:
    model: onnx.ModelProto
    version: str
    trained_at: str
    training_rows: int
    holdout: dict
    holdout_rows: Rows
    per_scenario: list[dict] = field(default_factory=list)
    loso: list[dict] | None = None
    elapsed_s: float = 0.0

    def bytes(self) -> bytes:
        return self.model.SerializeToString()

    def stamp(self, version: str, trained_at: str) -> None:
        """Sets the version (and the metadata that carries it)."""
        self.version, self.trained_at = version, trained_at
        export.set_metadata(self.model, export.metadata(version, trained_at, self.training_rows, self.holdout))


def build(rows: Rows, params: train.Params, loso_params: train.Params | None = None,
          log=lambda _msg: None) -> Candidate:
    """Fits, exports and measures a candidate; with ``loso_params`` also runs
    leave-one-scenario-out with them."""
    started = time.monotonic()
    if not len(rows):
        raise ValueError("no usable records (every record lacked features or an upstream latency)")
    fit_mask, hold_mask = train.holdout_split(rows)
    held = rows.subset(hold_mask)
    if not len(held):
        raise ValueError("too few records to hold any out")
    log(f"{len(rows)} rows ({rows.dropped} records dropped), scenarios {', '.join(rows.scenarios())}; "
        f"fitting on {int(fit_mask.sum())} (at most {params.max_rows}), holding out {len(held)}")
    scorer = train.fit(rows.subset(fit_mask), params)
    model = export.to_onnx(scorer)
    lat, p = export.OnnxScorer(model).predict(held.x)
    holdout = train.metrics(held, lat, p)
    holdout["split"] = f"latest {train.HOLDOUT_FRACTION:.0%} of each scenario's rows by time"
    holdout["scenarios"] = rows.scenarios()
    per_scenario = []
    for s in held.scenarios():
        m = held.scenario == s
        per_scenario.append({"scenario": s, **train.metrics(held.subset(m), lat[m], p[m])})
    loso = None
    if loso_params is not None:
        loso = train.loso(rows, loso_params, log)
    c = Candidate(model, "", "", scorer.training_rows, holdout, held, per_scenario, loso)
    c.stamp(*export.new_version())
    c.elapsed_s = round(time.monotonic() - started, 1)
    return c
