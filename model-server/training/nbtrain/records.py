"""Where request records come from: JSONL request logs or the PostgreSQL view.

Both carry the same columns (proxy/src/store/record.rs writes one encoder for both), so
both yield plain dicts and :func:`nbtrain.features.build_rows` does not care which.

Every record belongs to a *scenario*: the unit the hold-out split and leave-one-scenario-out
work by. For a JSONL file it is the file name up to its first ``.`` (``nb-bench --record``
writes ``<scenario>.<strategy>.<run>.jsonl``), or with ``scenario_from_dir`` the name of the
directory holding the file (for layouts like ``DIR/<scenario>/*.jsonl``). For the database
it is the record's pool: one deployment's traffic, split per pool.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from .features import COLUMNS, Rows, build_rows

# Newest records read from the database at most: enough for a few minutes of training,
# small enough to stay in memory.
DEFAULT_MAX_RECORDS = 1_000_000


def jsonl_files(paths: list[str | Path]) -> list[Path]:
    """The JSONL files named, directories expanded to their ``*.jsonl`` (recursively), sorted."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.jsonl")))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {p}")
    if not files:
        raise FileNotFoundError(f"no *.jsonl records in {', '.join(map(str, paths))}")
    return files


def scenario_of(path: Path, from_dir: bool = False) -> str:
    return path.parent.name if from_dir else path.name.split(".", 1)[0]


def read_jsonl(paths: list[str | Path], scenario_from_dir: bool = False) -> Iterator[tuple[str, dict]]:
    for f in jsonl_files(paths):
        scenario = scenario_of(f, scenario_from_dir)
        with f.open(encoding="utf-8") as lines:
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    yield scenario, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{f}:{n}: not a JSON record: {e}") from None


def rows_from_jsonl(paths: list[str | Path], scenario_from_dir: bool = False) -> Rows:
    return build_rows(read_jsonl(paths, scenario_from_dir))


def read_database(url: str, max_records: int = DEFAULT_MAX_RECORDS) -> Iterator[tuple[str, dict]]:
    """The newest ``max_records`` rows of ``training_requests``, oldest first, streamed with
    a server-side cursor. Selects the columns the features need that the view has (columns
    of later migrations may be absent: they read as null)."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url) as conn:
        have = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'training_requests'"
            )
        }
        if not have:
            raise RuntimeError("the database has no training_requests view (are the migrations applied?)")
        cols = ", ".join(c for c in COLUMNS if c in have)
        sql = (
            f"SELECT * FROM (SELECT {cols} FROM training_requests ORDER BY time DESC LIMIT %s) t "
            "ORDER BY time"
        )
        with conn.cursor(name="nbtrain_export", row_factory=dict_row) as cur:
            cur.itersize = 10_000
            cur.execute(sql, (max_records,))
            for rec in cur:
                yield rec.get("pool") or "default", rec


def rows_from_database(url: str, max_records: int = DEFAULT_MAX_RECORDS) -> Rows:
    return build_rows(read_database(url, max_records))
