"""Fitting the scorer and measuring it against the baselines it must beat.

Two compact gradient-boosted tree ensembles (scikit-learn ``GradientBoostingRegressor``,
the tree model that skl2onnx converts exactly; the histogram variant does not convert):

* latency: squared error on the upstream latency of attempts that succeeded;
* failure: squared error on a 0/1 "failed" label over all attempts, i.e. a probability
  estimate, clipped to [0, 1] (a Brier-score fit).

A failure is not a fast answer (DESIGN §7): the latency model never sees failures' latency,
and the failure model sees every attempt.

Hold-out: the latest ``HOLDOUT_FRACTION`` of each scenario's rows by time, so the figures
measure the model on traffic that came after everything it was fit on. On those rows:

* ``mae_ms`` / ``baseline_mae_ms``: mean absolute error of the predicted latency and of the
  peak-EWMA feature (``latency_ewma_ms``) on the successes where that feature is > 0, the
  same rows for both;
* ``brier`` / ``baseline_brier``: mean squared error of ``p_fail`` and of the recent failure
  rate (``failure_rate``) against the failed label, on all rows.

Training time grows faster than linearly with rows (exact-split trees); ``max_rows`` caps the
rows each fit uses (a seeded uniform sample) so a fit takes a minute or so on 2 cores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor

from .features import Rows

HOLDOUT_FRACTION = 0.2


@dataclass
class Params:
    trees: int = 150
    depth: int = 4
    learning_rate: float = 0.1
    subsample: float = 0.8
    max_rows: int = 60_000
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Scorer:
    """The two fitted ensembles; :meth:`predict` is the reference the ONNX graph must match."""

    latency: GradientBoostingRegressor
    failure: GradientBoostingRegressor
    training_rows: int

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        lat = np.maximum(self.latency.predict(x), 0.0)
        p = np.clip(self.failure.predict(x), 0.0, 1.0)
        return lat, p


def _gbr(p: Params, seed: int) -> GradientBoostingRegressor:
    return GradientBoostingRegressor(
        loss="squared_error",
        n_estimators=p.trees,
        max_depth=p.depth,
        learning_rate=p.learning_rate,
        subsample=p.subsample,
        random_state=seed,
    )


def sample(n: int, cap: int, seed: int) -> np.ndarray:
    """Indices of at most ``cap`` of ``n`` rows, a seeded uniform sample in original order."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def fit(rows: Rows, p: Params) -> Scorer:
    rows = rows.subset(sample(len(rows), p.max_rows, p.seed))
    ok = rows.success
    if not ok.any():
        raise ValueError("no successful attempts to learn latency from")
    latency = _gbr(p, p.seed).fit(rows.x[ok], rows.latency_ms[ok])
    failure = _gbr(p, p.seed + 1).fit(rows.x, rows.failed.astype(np.float64))
    return Scorer(latency, failure, len(rows))


def holdout_split(rows: Rows, fraction: float = HOLDOUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, holdout): per scenario, the latest ``fraction`` of rows by time
    are held out (ties broken by record order)."""
    hold = np.zeros(len(rows), dtype=bool)
    for s in rows.scenarios():
        idx = np.flatnonzero(rows.scenario == s)
        idx = idx[np.argsort(rows.time_us[idx], kind="stable")]
        k = int(round(len(idx) * fraction))
        if k:
            hold[idx[len(idx) - k:]] = True
    return ~hold, hold


def _r(v: float | None) -> float | None:
    """7 significant digits: figures that read well and compare equal when equal."""
    return None if v is None else float(f"{float(v):.7g}")


def metrics(rows: Rows, latency_ms: np.ndarray, p_fail: np.ndarray) -> dict:
    """Error of predictions on ``rows`` and of the two baseline features (module docs)."""
    ok = rows.success
    ewma = rows.column("latency_ewma_ms").astype(np.float64)
    on = ok & (ewma > 0)
    y = rows.latency_ms
    failed = rows.failed.astype(np.float64)
    n = len(rows)
    return {
        "rows": int(n),
        "success_rows": int(ok.sum()),
        "failures": int(rows.failed.sum()),
        "latency_rows": int(on.sum()),
        "mae_ms": _r(np.abs(latency_ms[on] - y[on]).mean()) if on.any() else None,
        "baseline_mae_ms": _r(np.abs(ewma[on] - y[on]).mean()) if on.any() else None,
        "all_success_mae_ms": _r(np.abs(latency_ms[ok] - y[ok]).mean()) if ok.any() else None,
        "brier": _r(((p_fail - failed) ** 2).mean()) if n else None,
        "baseline_brier": _r(((rows.column("failure_rate") - failed) ** 2).mean()) if n else None,
    }


def loso(rows: Rows, p: Params, log=None) -> list[dict]:
    """Leave-one-scenario-out: for each scenario, fit on all the others' rows and measure on
    all of its own. Shows how the model does on a fleet it has never seen."""
    out = []
    names = rows.scenarios()
    if len(names) < 2:
        raise ValueError("leave-one-scenario-out needs records of at least two scenarios")
    for s in names:
        test = rows.scenario == s
        train = rows.subset(~test)
        if not train.success.any():
            out.append({"scenario": s, "train_rows": 0, "error": "no successes to train on"})
            continue
        scorer = fit(train, p)
        held = rows.subset(test)
        out.append({"scenario": s, "train_rows": scorer.training_rows, **metrics(held, *scorer.predict(held.x))})
        if log:
            log(f"loso: {s} done")
    return out


def table(results: list[dict]) -> str:
    """A fixed-width table of per-scenario metrics (LOSO or hold-out)."""
    cols = ("scenario", "rows", "mae_ms", "baseline_mae_ms", "brier", "baseline_brier")
    fmt = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
    cells = [cols] + [tuple(fmt(r.get(c)) for c in cols) for r in results]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells)

