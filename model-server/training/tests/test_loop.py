"""The closed loop against a real PostgreSQL with the project's migrations."""

import http.server
import json
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

import synth
from conftest import SMALL, serve
from nbtrain import cli, export, loop, train


def insert(url: str, recs: list[dict]) -> None:
    """Inserts records into ``requests``, only the columns this schema has (columns of later
    migrations may not exist yet)."""
    import psycopg

    with psycopg.connect(url) as conn:
        have = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'requests' ORDER BY ordinal_position")]
        cols = [c for c in have if c in recs[0]]
        with conn.cursor().copy(f"COPY requests ({', '.join(cols)}) FROM STDIN") as cp:
            for r in recs:
                cp.write_row([r[c] for c in cols])


@pytest.fixture
def reload_server():
    """A stand-in model server that records the requests it gets."""
    seen = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append((self.command, self.path))
            body = b'{"result": "applied"}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    with serve(H) as port:
        yield f"http://127.0.0.1:{port}", seen


def models_table(url):
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT version, active, activated_at IS NOT NULL, artifact, holdout FROM models ORDER BY created_at, version"
        ).fetchall()


def test_loop_installs_only_better_models_and_registers_every_version(pg_url, tmp_path, reload_server, monkeypatch,
                                                                     capsys):
    server, seen = reload_server
    for k, pool in enumerate(("api", "static")):
        insert(pg_url, synth.records(pool, 700, seed=10 + k, start=synth.START + timedelta(minutes=k), pool=pool))
    model = tmp_path / "models" / "scorer.onnx"
    archive = tmp_path / "versions"

    # Every install is a rename of a complete file in the same directory onto the target.
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        if Path(dst) == model:
            assert Path(src).parent == model.parent
            renames.append(export.OnnxScorer(src).version)  # complete and loadable before it is visible
        real_replace(src, dst)

    monkeypatch.setattr(export.os, "replace", spy)
    fit = ["--trees", str(SMALL.trees), "--depth", str(SMALL.depth), "--seed", str(SMALL.seed)]

    # 1. No active model: the candidate is installed, the server told.
    assert cli.main(["loop", "--database-url", pg_url, "--model-path", str(model), "--server", server,
                     "--archive", str(archive), *fit]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["installed"] and seen == [("POST", "/v1/reload")]
    assert export.OnnxScorer(model).version == first["version"] and renames == [first["version"]]
    assert set(first["holdout"]["scenarios"]) == {"api", "static"}

    # 2. Same data, same seed: an equal model does not replace the active one.
    second = loop.run(pg_url, model, server, SMALL, archive)
    assert not second["installed"] and second["version"] != first["version"]
    assert second["active_before"]["version"] == first["version"]
    assert second["holdout"]["mae_ms"] == second["active_before"]["holdout"]["mae_ms"]

    # 3. A worse candidate (two shallow trees) is rejected.
    third = loop.run(pg_url, model, None, train.Params(trees=2, depth=1, seed=1), archive)
    assert not third["installed"] and "worse" in third["reason"]
    assert export.OnnxScorer(model).version == first["version"] and renames == [first["version"]]
    assert seen == [("POST", "/v1/reload")]

    # 4. The active file is replaced by a poor model behind the loop's back: the next
    #    candidate beats it on the same rows and is installed.
    poor = train.fit(_shuffled(), train.Params(trees=5, depth=2, seed=1))
    export.write_atomic(export.to_onnx(poor, {"nb_version": "poor"}), model)
    inode = model.stat().st_ino
    fourth = loop.run(pg_url, model, None, SMALL, archive)
    assert fourth["installed"] and fourth["active_before"]["version"] == "poor"
    assert export.OnnxScorer(model).version == fourth["version"] and model.stat().st_ino != inode
    assert sorted(p.name for p in model.parent.iterdir()) == ["scorer.onnx"]  # no temporary file left

    rows = models_table(pg_url)
    versions = [r[0] for r in rows]
    assert versions == [first["version"], second["version"], third["version"], fourth["version"]]
    assert len(set(versions)) == 4
    assert [r[1] for r in rows] == [False, False, False, True]  # exactly one active: the latest install
    assert [r[2] for r in rows] == [True, False, False, True]  # activated_at for each installed one
    for version, _, _, artifact, holdout in rows:
        assert Path(artifact).name == f"{version}.onnx" and export.OnnxScorer(artifact).version == version
        assert {"rows", "mae_ms", "baseline_mae_ms", "brier", "baseline_brier", "decision"} <= set(holdout)


def _shuffled():
    """Rows with the latency target shuffled: a model trained on them is poor."""
    from nbtrain import features

    recs = synth.records("api", 300, seed=99)
    rows = features.build_rows(("api", r) for r in recs)
    ok = rows.success
    rows.latency_ms[ok] = np.random.default_rng(0).permutation(rows.latency_ms[ok])
    return rows


def test_versions_in_the_same_millisecond_are_stepped(pg_url, tmp_path, monkeypatch):
    insert(pg_url, synth.records("api", 300, seed=5))
    fixed = export.new_version(synth.START)
    monkeypatch.setattr(export, "new_version", lambda now=None: fixed)
    a = loop.run(pg_url, tmp_path / "m.onnx", None, SMALL)
    b = loop.run(pg_url, tmp_path / "m.onnx", None, SMALL)
    assert a["version"] == fixed[0] and b["version"] == export.later_version(fixed[0])[0]
    assert [r[0] for r in models_table(pg_url)] == [a["version"], b["version"]]


def test_loop_without_records_fails_cleanly(pg_url, tmp_path):
    assert cli.main(["loop", "--database-url", pg_url, "--model-path", str(tmp_path / "m.onnx")]) == 1
    assert not (tmp_path / "m.onnx").exists() and models_table(pg_url) == []


def test_train_and_evaluate_read_the_database(pg_url, tmp_path, capsys):
    insert(pg_url, synth.records("api", 400, seed=6, new_columns=False))
    out = tmp_path / "m.onnx"
    fit = ["--trees", "10", "--depth", "2"]
    assert cli.main(["train", "--database-url", pg_url, "--out", str(out), *fit]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(out), "--database-url", pg_url]) == 0
    assert json.loads(capsys.readouterr().out)[0]["rows"] == 400
