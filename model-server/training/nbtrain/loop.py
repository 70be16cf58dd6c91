"""The closed loop in one step: records in PostgreSQL → candidate → compared → installed or not.

1. Export the newest records from the ``training_requests`` view (scenario = pool).
2. Train a candidate (:func:`nbtrain.pipeline.build`) and measure it on the held-out rows.
3. Measure the active model (the file at ``model_path``, if any) on the *same* rows.
4. Install the candidate only if it is better (:func:`better`): written to a temporary file in
   the same directory and renamed over ``model_path`` (atomic: the model server, which
   watches that file, sees the old model or the new one, never half a file); with a server
   URL also ``POST {server}/v1/reload``. The server still probes the model before it swaps.
5. Register the candidate in the ``models`` table, installed or not, in one transaction with
   the install: the installed one ``active`` with ``activated_at``, the previous active one
   set inactive; a rejected one ``active = false``. The rename happens inside the
   transaction, so a failed install leaves no row claiming it.

Every candidate is also kept as ``<archive>/<version>.onnx`` (``artifact`` in the table), so a
registered version can be inspected or reinstalled later.

Versions are UTC timestamps with milliseconds; one already in the table is stepped forward a
millisecond at a time, so every run registers a distinct version.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

from . import export, pipeline, records, train

# Relative improvement of mae_ms below which two models count as equally good (measurement
# noise; keeping the active model avoids churn).
MAE_TIE = 1e-3
# How much worse (absolute) a candidate's Brier score may be and still replace the active
# model on a better mae_ms.
BRIER_SLACK = 0.005


def better(cand: dict, active: dict | None) -> tuple[bool, str]:
    """Whether the candidate's held-out figures beat the active model's on the same rows.

    The rule: latency error first. The candidate wins when its ``mae_ms`` is lower by more
    than ``MAE_TIE`` (relative) and its ``brier`` is not worse by more than ``BRIER_SLACK``;
    when the two ``mae_ms`` tie (or neither has latency rows), the lower ``brier`` wins; an
    exact tie keeps the active model. Without an active model (none, unreadable, or built on
    other features) the candidate wins."""
    if active is None:
        return True, "no comparable active model"
    cm, am = cand.get("mae_ms"), active.get("mae_ms")
    cb, ab = cand["brier"], active["brier"]
    if cm is not None and am is not None and abs(cm - am) > MAE_TIE * max(am, 1e-9):
        if cm > am:
            return False, f"mae_ms {cm:.4f} is worse than the active model's {am:.4f}"
        if cb > ab + BRIER_SLACK:
            return False, f"mae_ms {cm:.4f} < {am:.4f} but brier {cb:.4f} is worse than {ab:.4f} + {BRIER_SLACK}"
        return True, f"mae_ms {cm:.4f} < {am:.4f} (brier {cb:.4f} vs {ab:.4f})"
    if cb < ab:
        return True, f"mae_ms ties, brier {cb:.4f} < {ab:.4f}"
    return False, f"no better than the active model (mae_ms {cm} vs {am}, brier {cb:.4f} vs {ab:.4f})"


def active_metrics(model_path: Path, held) -> tuple[str | None, dict | None, str]:
    """``(version, metrics, note)`` of the model at ``model_path`` on the held-out rows."""
    if not model_path.is_file():
        return None, None, "no active model file"
    try:
        active = export.OnnxScorer(model_path)
        return active.version, train.metrics(held, *active.predict(held.x)), "compared"
    except Exception as e:  # a model that does not load or builds other features loses
        return None, None, f"active model not comparable: {e}"


def reload(server: str, timeout: float = 10.0) -> str:
    """Asks the model server to re-read its file now; its answer, or why there was none. Not
    fatal: the server also reloads on its own when the file changes."""
    req = urllib.request.Request(server.rstrip("/") + "/v1/reload", data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return f"{r.status} {r.read().decode(errors='replace').strip()}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode(errors='replace').strip()}"
    except OSError as e:
        return f"unreachable: {e}"


def run(url: str, model_path: str | Path, server: str | None = None, params: train.Params | None = None,
        archive: str | Path | None = None, max_records: int = records.DEFAULT_MAX_RECORDS,
        log=lambda _msg: None) -> dict:
    """One turn of the loop (module docs); returns what happened."""
    import psycopg
    from psycopg.types.json import Jsonb

    model_path = Path(model_path)
    archive = Path(archive) if archive else model_path.parent / "versions"
    rows = records.rows_from_database(url, max_records)
    cand = pipeline.build(rows, params or train.Params(), log=log)
    active_version, active, note = active_metrics(model_path, cand.holdout_rows)
    install, why = better(cand.holdout, active)
    log(f"candidate: mae_ms {cand.holdout['mae_ms']} brier {cand.holdout['brier']}; active {active_version}: "
        f"{'-' if active is None else (active['mae_ms'], active['brier'])}; {'install' if install else 'keep'}: {why}")
    with psycopg.connect(url) as conn:
        with conn.transaction():
            while conn.execute("SELECT 1 FROM models WHERE version = %s", (cand.version,)).fetchone():
                cand.stamp(*export.later_version(cand.version))
            artifact = export.write_atomic(cand.bytes(), archive / f"{cand.version}.onnx")
            holdout = {**cand.holdout, "compared_with": {"version": active_version, "note": note, **(active or {})},
                       "decision": why}
            if install:
                conn.execute("UPDATE models SET active = false WHERE active")
            conn.execute(
                "INSERT INTO models (version, trained_at, training_rows, holdout, artifact, active, activated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END)",
                (cand.version, datetime.fromisoformat(cand.trained_at), cand.training_rows, Jsonb(holdout),
                 str(artifact.resolve()), install, install),
            )
            if install:
                export.write_atomic(cand.bytes(), model_path)
    result = {
        "version": cand.version,
        "installed": install,
        "reason": why,
        "model_path": str(model_path),
        "artifact": str(artifact),
        "holdout": cand.holdout,
        "active_before": {"version": active_version, "note": note, "holdout": active},
    }
    if install and server:
        result["reload"] = reload(server)
        log(f"reload: {result['reload']}")
    return result


def dumps(result: dict) -> str:
    return json.dumps(result, indent=2, sort_keys=True)
