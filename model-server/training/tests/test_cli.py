"""The command line: train with a LOSO report, evaluate, and the install rule."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMALL
from nbtrain import cli, export, loop

FIT = ["--trees", str(SMALL.trees), "--depth", str(SMALL.depth), "--seed", str(SMALL.seed)]
METRICS = {"rows", "mae_ms", "baseline_mae_ms", "brier", "baseline_brier"}


def test_train_with_loso_writes_model_and_report(fleet_dir, tmp_path, capsys):
    out, report = tmp_path / "scorer.onnx", tmp_path / "scorer.report.json"
    assert cli.main(["train", "--records", str(fleet_dir), "--out", str(out), "--report", str(report), "--loso",
                     "--loso-max-rows", "2000", *FIT]) == 0
    r = json.loads(report.read_text())
    scenarios = ["s0-homogeneous", "s1-skew", "s3-sinkhole"]
    assert r["version"] == export.OnnxScorer(out).version
    assert r["records"]["scenarios"] == {s: 600 for s in scenarios}
    assert METRICS <= set(r["holdout"]) and r["holdout"]["scenarios"] == scenarios
    assert [x["scenario"] for x in r["holdout_by_scenario"]] == scenarios
    assert [x["scenario"] for x in r["loso"]] == scenarios
    for x in r["loso"]:
        assert METRICS <= set(x) and x["rows"] == 600 and 0 < x["train_rows"] <= 1200
    assert [f["name"] for f in r["features"]][:2] == ["inflight", "reported_queue"]
    printed = capsys.readouterr().out
    assert "leave-one-scenario-out" in printed and all(s in printed for s in scenarios)


def test_loso_needs_two_scenarios(fleet_dir, tmp_path):
    one = next(fleet_dir.glob("s0-*.jsonl"))
    assert cli.main(["train", "--records", str(one), "--out", str(tmp_path / "m.onnx"), "--loso", *FIT]) == 1


def test_evaluate_prints_metrics_per_model(fleet_dir, tmp_path, candidate, capsys):
    a = export.write_atomic(candidate.model, tmp_path / "a.onnx")
    assert cli.main(["evaluate", "--model", str(a), "--model", str(a), "--records", str(fleet_dir), "--holdout"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 2 and out[0]["version"] == candidate.version
    # the held-out rows are the ones the candidate was measured on
    assert out[0]["rows"] == candidate.holdout["rows"]
    assert out[0]["mae_ms"] == pytest.approx(candidate.holdout["mae_ms"])


def test_module_entry_point():
    here = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "nbtrain", "--help"], cwd=here, capture_output=True, text=True)
    assert r.returncode == 0 and all(c in r.stdout for c in ("train", "evaluate", "loop"))


@pytest.mark.parametrize(
    "cand,active,install",
    [
        ({"mae_ms": 1.0, "brier": 0.1}, None, True),
        ({"mae_ms": 1.0, "brier": 0.1}, {"mae_ms": 2.0, "brier": 0.1}, True),
        ({"mae_ms": 2.0, "brier": 0.0}, {"mae_ms": 1.0, "brier": 0.1}, False),
        ({"mae_ms": 1.0, "brier": 0.1}, {"mae_ms": 1.0, "brier": 0.1}, False),  # a tie keeps the active model
        ({"mae_ms": 1.0, "brier": 0.09}, {"mae_ms": 1.0, "brier": 0.1}, True),
        ({"mae_ms": 1.0, "brier": 0.2}, {"mae_ms": 2.0, "brier": 0.1}, False),  # much worse at failures
        ({"mae_ms": None, "brier": 0.05}, {"mae_ms": None, "brier": 0.1}, True),
    ],
)
def test_install_rule(cand, active, install):
    assert loop.better(cand, active)[0] is install
