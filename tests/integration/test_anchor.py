"""Anchors in a real database: a run's ledger line recorded in runbook.runs (never creating the
schema, upgrading an old one under the lock, never rewriting an anchor), read back by verify
--against, and an unreachable target costing the anchor, never the run."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import apply_migrations, make_settings, write_migrations
from thorbis_runbook import anchor, archive, history, ledger, queries
from thorbis_runbook.endpoint import Endpoint

ITEMS = {"20250101000000_items.sql": "CREATE TABLE items (id int PRIMARY KEY);"}


def _endpoint(tmp_path: Path, dsn: str) -> Endpoint:
    settings = make_settings(tmp_path, tmp_path / "migrations")
    return Endpoint(settings, settings.target(), dsn)


def _line(run_id: str, seq: int, runbook: str = "precheck", sha: str = "a" * 64) -> anchor.Line:
    return anchor.Line(
        run_id=run_id, runbook=runbook, target="test", status="succeeded", operator="pytest",
        started="2026-12-02T10:00:00+00:00", finished="2026-12-02T10:00:05+00:00", seq=seq,
        sha256=sha, change_id=None,
    )  # fmt: skip


def _rows(conn: psycopg2.extensions.connection) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT run_id, command, status, ledger_seq, ledger_sha256, finished_at IS NOT NULL "
            "FROM runbook.runs WHERE ledger_sha256 IS NOT NULL ORDER BY ledger_seq"
        )
        return cur.fetchall()


def test_a_fresh_database_records_nothing_and_gets_no_schema(
    tmp_path: Path, pg_database: str, conn: psycopg2.extensions.connection
) -> None:
    why = anchor.record(_endpoint(tmp_path, pg_database), _line("r1", 1))
    assert why == anchor.NO_SCHEMA
    assert not history.schema_exists(conn)
    anchors = anchor.anchored(_endpoint(tmp_path, pg_database))
    assert anchors.rows == () and anchors.note == anchor.NO_SCHEMA


def test_a_read_only_run_gets_a_row_and_an_apply_run_its_own_row_updated(
    tmp_path: Path, pg_database: str, conn: psycopg2.extensions.connection
) -> None:
    migrations = write_migrations(tmp_path / "migrations", ITEMS)
    applied = apply_migrations(pg_database, migrations)
    endpoint = _endpoint(tmp_path, pg_database)
    assert anchor.record(endpoint, _line(applied.run_id, 1, runbook="apply")) is None
    assert anchor.record(endpoint, _line("precheck-run", 2, sha="b" * 64)) is None
    assert _rows(conn) == [
        (applied.run_id, "apply", "succeeded", 1, "a" * 64, True),
        ("precheck-run", "precheck", "succeeded", 2, "b" * 64, True),
    ]
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runbook.runs")
        assert cur.fetchone() == (2,), "the apply run's own row was updated, not doubled"
    again = anchor.record(endpoint, _line("precheck-run", 7, sha="c" * 64))
    assert again == "run precheck-run is already anchored in the target, to another ledger line"
    assert _rows(conn)[1][3:5] == (2, "b" * 64), "an anchor is never rewritten"
    anchors = anchor.anchored(endpoint)
    assert [(a.run_id, a.seq, a.sha256) for a in anchors.rows] == [
        (applied.run_id, 1, "a" * 64), ("precheck-run", 2, "b" * 64),
    ]  # fmt: skip


def test_a_version_1_schema_is_upgraded_under_the_lock_then_recorded(
    tmp_path: Path, pg_database: str, conn: psycopg2.extensions.connection
) -> None:
    with conn.cursor() as cur:
        cur.execute(queries.load("history_v1"))
        cur.execute("INSERT INTO runbook.schema_version (version) VALUES (1)")
    endpoint = _endpoint(tmp_path, pg_database)
    assert anchor.anchored(endpoint).note.startswith(
        "the target's runbook schema predates anchoring"
    )
    assert anchor.record(endpoint, _line("r1", 1)) is None
    assert history.internal_version(conn) == len(history.INTERNAL_VERSIONS), "brought up to date"
    assert _rows(conn)[0][:4] == ("r1", "precheck", "succeeded", 1)


def test_a_busy_lock_or_an_unreachable_target_costs_the_anchor_never_the_run(
    tmp_path: Path, pg_database: str, conn: psycopg2.extensions.connection
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = f"postgresql://nobody@127.0.0.1:{port}/nothing"
    why = anchor.record(_endpoint(tmp_path, closed), _line("r1", 1))
    assert why is not None and why.startswith("cannot connect to target test")
    with conn.cursor() as cur:
        cur.execute(queries.load("history_v1"))
        cur.execute("INSERT INTO runbook.schema_version (version) VALUES (1)")
    holder = psycopg2.connect(pg_database)
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute(history.TRY_LOCK_SQL)
        why = anchor.record(_endpoint(tmp_path, pg_database), _line("r1", 1))
    finally:
        holder.close()
    assert why is not None and why.startswith("another runner holds the migration lock")
    assert history.internal_version(conn) == 1


def test_verify_against_names_a_rewritten_line_and_runs_the_database_never_saw(
    tmp_path: Path, pg_database: str
) -> None:
    root = tmp_path / "reports"
    written = []
    for run_id in ("r1", "r2", "r3"):
        folder = root / "test" / run_id
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"run_id": run_id}))
        entry = {"run_id": run_id, "target": "test", "runbook": "precheck", "status": "succeeded",
                 "files": ledger.run_files(root, folder)}  # fmt: skip
        written.append(ledger.append(root, entry))
    migrations = write_migrations(tmp_path / "migrations", ITEMS)
    apply_migrations(pg_database, migrations)
    endpoint = _endpoint(tmp_path, pg_database)
    for entry in written[:2]:
        line = _line(str(entry["run_id"]), int(entry["seq"]), sha=ledger.line_sha256(entry))
        assert anchor.record(endpoint, line) is None
    checks = archive.anchor_checks(root, "test", anchor.anchored(endpoint))
    assert [(c.name, c.status, c.observed) for c in checks] == [
        ("database test", "pass", "2 run(s) match"), ("run r3", "warn", "not recorded"),
    ]  # fmt: skip
    path = root / ledger.LEDGER_FILE
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([lines[0].replace(b'"r1"', b'"r0"'), *lines[1:]]) + b"\n")
    checks = archive.anchor_checks(root, "test", anchor.anchored(endpoint))
    failed = [c for c in checks if c.status == "fail"]
    assert [(c.name, c.observed) for c in failed] == [("database test", "line 1 differs")]
    assert failed[0].detail == (
        "the archive was rewritten: line 1 is not the line the database recorded for run r1"
    )


@pytest.mark.parametrize("seq", [4, 40])
def test_verify_against_names_a_truncated_archive(
    tmp_path: Path, pg_database: str, seq: int
) -> None:
    root = tmp_path / "reports"
    ledger.append(root, {"run_id": "r1", "target": "test", "files": {}})
    migrations = write_migrations(tmp_path / "migrations", ITEMS)
    apply_migrations(pg_database, migrations)
    endpoint = _endpoint(tmp_path, pg_database)
    assert anchor.record(endpoint, _line("gone", seq)) is None
    checks = archive.anchor_checks(root, "test", anchor.anchored(endpoint))
    assert [(c.name, c.status, c.observed) for c in checks if c.status == "fail"] == [
        ("database test", "fail", f"line {seq} is gone"),
    ]
