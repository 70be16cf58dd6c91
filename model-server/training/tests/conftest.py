"""Shared fixtures: a small trained model and a throwaway PostgreSQL.

``pg_cluster`` starts a fresh cluster (initdb into a temporary directory, a free port on
127.0.0.1, trust authentication, durability off) with the newest server binaries under
/usr/lib/postgresql/*/bin (or ``PG_BINDIR``); as root they run as ``postgres`` through
``runuser`` (initdb refuses root). It is stopped and deleted at the end of the session.
With ``DATABASE_URL`` set no server is started: the databases are created on that server and
dropped afterwards. ``pg_url`` hands each test its own database with migrations/*.sql
applied in order.
"""

from __future__ import annotations

import contextlib
import glob
import http.server
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

import synth
from nbtrain import features, train

REPO = Path(__file__).resolve().parents[3]
MIGRATIONS = REPO / "migrations"
# Small enough that a fit takes a fraction of a second.
SMALL = train.Params(trees=30, depth=3, max_rows=5_000, seed=7)


@pytest.fixture(scope="session")
def fleet_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("records")
    synth.fleet(d)
    return d


@pytest.fixture(scope="session")
def rows(fleet_dir) -> features.Rows:
    from nbtrain import records

    return records.rows_from_jsonl([fleet_dir])


@pytest.fixture(scope="session")
def candidate(rows):
    from nbtrain import pipeline

    return pipeline.build(rows, SMALL)


def _bindir() -> Path | None:
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(handler: type[http.server.BaseHTTPRequestHandler]):
    """Serves ``handler`` on a free port of 127.0.0.1 in a thread; yields the port."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="session")
def pg_cluster():
    """The admin URL of a server to create test databases on."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    bindir = _bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (scripts/setup.sh installs them) and no DATABASE_URL")
    root = os.geteuid() == 0
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    tmp = Path(tempfile.mkdtemp(prefix="nbtrain-pg-", dir=base))
    if root:
        shutil.chown(tmp, "postgres", "postgres")

    def run(*cmd):
        cmd = (["runuser", "-u", "postgres", "--"] if root else []) + [str(c) for c in cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode:
            log = (tmp / "log").read_text() if (tmp / "log").exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stdout}{r.stderr}{log}")

    data = tmp / "data"
    port = free_port()
    # If this process dies without tearing down (killed, timed out), a watchdog in its own
    # session sees EOF on a pipe only we hold open and stops the server, so none is left behind.
    as_pg = "runuser -u postgres -- " if root else ""
    watchdog = subprocess.Popen(
        ["sh", "-c", f'cat >/dev/null; {as_pg}"$0" -D "$1" -m immediate -w stop >/dev/null 2>&1; rm -rf "$2"',
         str(bindir / "pg_ctl"), str(data), str(tmp)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        opts = (f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off")
        run(bindir / "pg_ctl", "-D", data, "-l", tmp / "log", "-w", "-t", "30", "-o", opts, "start")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        watchdog.stdin.close()
        watchdog.wait(timeout=30)


def apply_migrations(url: str) -> list[str]:
    import psycopg

    applied = []
    with psycopg.connect(url, autocommit=True) as conn:
        for f in sorted(MIGRATIONS.glob("*.sql")):
            with conn.transaction():
                conn.execute(f.read_text())
            applied.append(f.name)
    return applied


@pytest.fixture
def pg_url(pg_cluster):
    """A fresh database with the migrations applied; dropped afterwards."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"nbtrain_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(**{**conninfo_to_dict(pg_cluster), "dbname": name})
    apply_migrations(url)
    yield url
    with psycopg.connect(pg_cluster, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
