"""Feature rows and labels from records: order, units and null handling per docs/ml.md."""

import json
import math
import re
from datetime import datetime, timezone

import numpy as np
import pytest

import synth
from conftest import REPO
from nbtrain import features, records, train


def record(**over):
    r = synth.records(n=5, seed=1)[4]
    r.update(over)
    return r


def test_order_and_units_match_the_contract_page():
    doc = REPO / "docs" / "ml.md"
    if not doc.exists():
        pytest.skip("docs/ml.md not present")
    text = doc.read_text().split("## Features", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \|.*\| (.*) \|$", text, re.M)
    assert [(n, u) for n, u, _ in rows] == list(features.FEATURES)
    for (name, _, column), ours in zip(rows, features.NAMES):
        # every record column the page names for a feature is one this pipeline reads
        for col in re.findall(r"`(f_\w+)`", column):
            assert col in features.COLUMNS, (name, col)


def test_row_from_a_full_record():
    r = record(f_inflight=3.0, f_reported_queue=2.0, f_latency_ewma_ms=12.5, f_latency_rif_ms=20.25,
               f_failure_rate=0.125, f_weight=2.0, f_error_rate=0.9)
    assert features.feature_row(r) == [3.0, 2.0, 1.0, 12.5, 20.25, 0.125, 2.0]


def test_nulls_read_as_zero_and_no_report_clears_has_report():
    r = record(f_inflight=0.0, f_reported_queue=None, f_latency_ewma_ms=None, f_latency_rif_ms=None,
               f_failure_rate=None, f_weight=None)
    assert features.feature_row(r) == [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, features.DEFAULT_WEIGHT]


def test_columns_of_later_migrations_may_be_absent():
    r = synth.records(n=5, seed=1, new_columns=False)[4]
    assert "f_failure_rate" not in r and "f_latency_rif_ms" not in r
    row = features.feature_row(r)
    assert row[features.INDEX["latency_rif_ms"]] == 0.0 and row[features.INDEX["failure_rate"]] == 0.0


def test_a_record_without_backend_or_features_has_no_row():
    assert features.feature_row(record(backend=None, f_inflight=None)) is None
    assert features.feature_row(record(f_inflight=None)) is None


@pytest.mark.parametrize(
    "status,error,upstream,expected",
    [
        (200, None, 12_500, (False, 12.5)),
        (404, None, 800, (False, 0.8)),  # a 4xx is an answer
        (499, None, 1_000, (False, 1.0)),
        (500, None, 300, (True, None)),
        (503, None, 100, (True, None)),  # a fast 503 is a failure, not a fast answer
        (0, "connect_refused", None, (True, None)),
        (200, "upstream_reset", 5_000, (True, None)),  # a proxy error fails even after a status
        (0, None, None, (True, None)),  # no response sent
        (200, None, None, None),  # a success without upstream latency teaches nothing
    ],
)
def test_labels(status, error, upstream, expected):
    got = features.label(record(status=status, error=error, upstream_latency_us=upstream))
    if expected is None:
        assert got is None
        return
    assert got[0] == expected[0]
    assert math.isnan(got[1]) if expected[1] is None else got[1] == pytest.approx(expected[1])


def test_build_rows_counts_drops_and_reads_times():
    recs = synth.records(n=10, seed=3)
    recs[0].update(backend=None, f_inflight=None)
    recs[1].update(status=200, error=None, upstream_latency_us=None)
    recs[2]["time"] = datetime(2026, 1, 5, 12, 0, 0, 20_000, tzinfo=timezone.utc)  # as psycopg gives it
    rows = features.build_rows(("s", r) for r in recs)
    assert len(rows) == 8 and rows.dropped == 2
    assert rows.x.dtype == np.float32 and rows.x.shape == (8, 7)
    assert rows.time_us[0] == pytest.approx(datetime(2026, 1, 5, 12, 0, 0, 20_000, tzinfo=timezone.utc).timestamp() * 1e6)
    assert np.all(np.diff(rows.time_us) > 0)
    assert np.isnan(rows.latency_ms[rows.failed]).all() and not np.isnan(rows.latency_ms[~rows.failed]).any()


def test_scenario_is_the_file_stem_or_the_directory(tmp_path):
    synth.write_jsonl(tmp_path / "a" / "s3-sinkhole.prequal.s1000.jsonl", synth.records(n=4))
    synth.write_jsonl(tmp_path / "b" / "x.jsonl", synth.records(n=4))
    assert records.rows_from_jsonl([tmp_path]).scenarios() == ["s3-sinkhole", "x"]
    assert records.rows_from_jsonl([tmp_path], scenario_from_dir=True).scenarios() == ["a", "b"]
    (tmp_path / "bad.jsonl").write_text('{"time": 1}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        records.rows_from_jsonl([tmp_path / "bad.jsonl"])


def test_holdout_is_the_latest_fifth_of_each_scenario(rows):
    fit, hold = train.holdout_split(rows)
    assert not (fit & hold).any() and (fit | hold).all()
    for s in rows.scenarios():
        m = rows.scenario == s
        assert hold[m].sum() == round(m.sum() * 0.2)
        assert rows.time_us[m & hold].min() >= rows.time_us[m & fit].max()


def test_metrics_compare_with_the_baselines_on_the_same_rows():
    recs = [record(status=200, upstream_latency_us=10_000, f_latency_ewma_ms=8.0, f_failure_rate=0.5),
            record(status=200, upstream_latency_us=20_000, f_latency_ewma_ms=None, f_failure_rate=0.0),
            record(status=503, upstream_latency_us=100, f_latency_ewma_ms=1.0, f_failure_rate=1.0)]
    rows = features.build_rows(("s", r) for r in recs)
    m = train.metrics(rows, np.array([11.0, 30.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    assert m["latency_rows"] == 1  # the success whose peak-EWMA is 0 is not compared
    assert m["mae_ms"] == pytest.approx(1.0) and m["baseline_mae_ms"] == pytest.approx(2.0)
    assert m["all_success_mae_ms"] == pytest.approx(5.5)
    assert m["brier"] == 0.0 and m["baseline_brier"] == pytest.approx(0.25 / 3, rel=1e-6)
    json.dumps(m)
