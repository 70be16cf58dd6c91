"""``python -m nbtrain``: train, evaluate, loop.

    train    --records PATH... [--scenario-from-dir] | --database-url URL
             --out model.onnx [--report report.json] [--loso] [--seed N]
    evaluate --model A.onnx [--model B.onnx ...] --records PATH... | --database-url URL [--holdout]
    loop     --database-url URL --model-path PATH [--server URL] [--archive DIR]

Progress goes to stderr; results (tables, JSON) to stdout. Exit status 0 on success (for
``loop`` whether or not the candidate was installed), 1 when something failed, 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import export, loop, pipeline, records, train
from .features import FEATURES


def log(msg: str) -> None:
    print(f"nbtrain: {msg}", file=sys.stderr, flush=True)


def _params(a, max_rows: int) -> train.Params:
    return train.Params(trees=a.trees, depth=a.depth, learning_rate=a.learning_rate, max_rows=max_rows, seed=a.seed)


def _rows(a):
    if a.database_url:
        return records.rows_from_database(a.database_url, a.max_records)
    return records.rows_from_jsonl(a.records, a.scenario_from_dir)


def cmd_train(a) -> int:
    rows = _rows(a)
    loso_params = _params(a, a.loso_max_rows) if a.loso else None
    c = pipeline.build(rows, _params(a, a.max_rows), loso_params, log=log)
    export.write_atomic(c.model, a.out)
    print(f"model {c.version}: {c.training_rows} training rows, {c.holdout['rows']} held out -> {a.out}")
    print("hold-out (latest 20% per scenario):")
    print(train.table(c.per_scenario + [{"scenario": "all", **c.holdout}]))
    if c.loso is not None:
        print("leave-one-scenario-out (trained on the others):")
        print(train.table(c.loso))
    if a.report:
        report = {
            "version": c.version,
            "trained_at": c.trained_at,
            "training_rows": c.training_rows,
            "features": [{"name": n, "unit": u} for n, u in FEATURES],
            "params": _params(a, a.max_rows).as_dict(),
            "records": {"rows": len(rows), "dropped": rows.dropped,
                        "scenarios": {s: int((rows.scenario == s).sum()) for s in rows.scenarios()}},
            "holdout": c.holdout,
            "holdout_by_scenario": c.per_scenario,
            "loso": c.loso,
            "model": str(a.out),
            "elapsed_s": c.elapsed_s,
        }
        if a.loso:
            report["loso_params"] = loso_params.as_dict()
        Path(a.report).parent.mkdir(parents=True, exist_ok=True)
        Path(a.report).write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {a.report}")
    log(f"done in {c.elapsed_s} s")
    return 0


def cmd_evaluate(a) -> int:
    rows = _rows(a)
    if a.holdout:
        rows = rows.subset(train.holdout_split(rows)[1])
    out = []
    for m in a.model:
        s = export.OnnxScorer(m)
        out.append({"model": m, "version": s.version, **train.metrics(rows, *s.predict(rows.x))})
    print(json.dumps(out, indent=2))
    return 0


def cmd_loop(a) -> int:
    result = loop.run(a.database_url, a.model_path, a.server, _params(a, a.max_rows), a.archive, a.max_records, log=log)
    print(loop.dumps(result))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nbtrain", description="NeuraBalancer's training pipeline (docs/ml.md).")
    sub = p.add_subparsers(dest="command", required=True)

    def source(sp, db_only=False):
        if not db_only:
            g = sp.add_mutually_exclusive_group(required=True)
            g.add_argument("--records", nargs="+", metavar="PATH",
                           help="JSONL request logs or directories of *.jsonl; a record's scenario is its file "
                                "name up to the first '.'")
            g.add_argument("--database-url", metavar="URL", help="read the training_requests view (scenario = pool)")
            sp.add_argument("--scenario-from-dir", action="store_true",
                            help="a record's scenario is the name of the directory holding its file")
        sp.add_argument("--max-records", type=int, default=records.DEFAULT_MAX_RECORDS,
                        help="newest records read from the database (default %(default)s)")

    def fitting(sp):
        d = train.Params()
        sp.add_argument("--seed", type=int, default=d.seed, help="seed of sampling and trees (default %(default)s)")
        sp.add_argument("--trees", type=int, default=d.trees, help="trees per ensemble (default %(default)s)")
        sp.add_argument("--depth", type=int, default=d.depth, help="tree depth (default %(default)s)")
        sp.add_argument("--learning-rate", type=float, default=d.learning_rate, help="(default %(default)s)")
        sp.add_argument("--max-rows", type=int, default=d.max_rows,
                        help="rows a fit samples at most; fit time grows faster than linearly (default %(default)s)")

    t = sub.add_parser("train", help="train a model from records and export it as ONNX")
    source(t)
    fitting(t)
    t.add_argument("--out", required=True, help="the ONNX file to write (atomically)")
    t.add_argument("--report", help="also write the figures as JSON here")
    t.add_argument("--loso", action="store_true", help="also leave-one-scenario-out: train on the others, test on each")
    t.add_argument("--loso-max-rows", type=int, default=20_000, help="--max-rows of each LOSO fit (default %(default)s)")
    t.set_defaults(run=cmd_train)

    e = sub.add_parser("evaluate", help="metrics of ONNX models on records")
    source(e)
    e.add_argument("--model", action="append", required=True, help="an ONNX model (repeatable)")
    e.add_argument("--holdout", action="store_true", help="only the rows training holds out (latest 20%% per scenario)")
    e.set_defaults(run=cmd_evaluate)

    lp = sub.add_parser("loop", help="export from PostgreSQL, train, install if better than the active model, register")
    lp.add_argument("--database-url", required=True, metavar="URL")
    source(lp, db_only=True)
    fitting(lp)
    lp.add_argument("--model-path", required=True, help="the model file the model server watches")
    lp.add_argument("--server", metavar="URL", help="the model server, to POST /v1/reload after an install")
    lp.add_argument("--archive", help="where every candidate is kept as VERSION.onnx (default: versions/ next to "
                                      "--model-path)")
    lp.set_defaults(run=cmd_loop)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        return a.run(a)
    except Exception as e:
        # Expected failures (bad input, unreachable database) as one line; bugs with a traceback.
        if isinstance(e, (ValueError, RuntimeError, OSError)) or type(e).__module__.startswith("psycopg"):
            log(f"error: {e}")
            return 1
        raise
