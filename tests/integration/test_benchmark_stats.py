"""The benchmark records pg_stat_statements' server-side mean where it can, and says once why not."""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import run_sql
from thorbis_runbook import embedded
from thorbis_runbook.benchmark import STATS_CHECK, BenchmarkQuery, compare, run_queries

QUERIES = (
    BenchmarkQuery("count", "SELECT count(*) FROM items WHERE n > 10"),
    BenchmarkQuery("lookup", "SELECT n FROM items WHERE n = 42"),
)


def _arrange(dsn: str) -> None:
    run_sql(dsn, "CREATE TABLE items (n int PRIMARY KEY)")
    run_sql(dsn, "INSERT INTO items SELECT generate_series(1, 5000)")


def _connect(dsn: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def test_server_mean_times_are_recorded_and_compared_without_a_reset(
    pg_database: str, conn
) -> None:  # type: ignore[no-untyped-def]
    _arrange(pg_database)
    with conn.cursor() as cur:  # figures of another statement, which a reset would wipe
        cur.execute("SELECT count(*) FROM items")
    before = run_queries(conn, QUERIES, target="test", runs=4, warmup=1)
    after = run_queries(conn, QUERIES, target="test", runs=4, warmup=1)

    assert before.stats_note == "" and after.stats_note == ""
    for timing in (*before.queries, *after.queries):
        assert timing.server_mean_ms is not None and timing.server_mean_ms > 0
    saved = type(before).from_dict(before.to_dict())
    assert saved.queries[0].server_mean_ms == before.queries[0].server_mean_ms
    report = compare(saved, after, min_difference_ms=1000)
    assert [c.name for c in report] == ["benchmark count", "benchmark lookup"]
    assert all("ms (pg_stat_statements)" in c.detail for c in report)
    # Nothing left behind: the extension came and went in rolled-back transactions, and no
    # other statement's figures were reset.
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")
        assert cur.fetchone() == (0,)
        cur.execute("CREATE EXTENSION pg_stat_statements")
        cur.execute(
            "SELECT sum(calls) FROM pg_stat_statements WHERE query = 'SELECT count(*) FROM items'"
        )
        assert cur.fetchone()[0] >= 1


def test_a_role_that_cannot_read_them_gets_one_note_and_the_benchmark_goes_on(
    pg_database: str,
) -> None:
    _arrange(pg_database)
    role = f"bench_{secrets.token_hex(4)}"
    run_sql(pg_database, f"CREATE ROLE {role} LOGIN")
    run_sql(pg_database, f"GRANT SELECT ON items TO {role}")
    conn = _connect(pg_database.replace("postgresql://postgres@", f"postgresql://{role}@"))
    try:
        result = run_queries(conn, QUERIES, target="test", runs=2, warmup=0)
    finally:
        conn.close()

    assert "pg_stat_statements cannot be read by this role" in result.stats_note
    assert [q.server_mean_ms for q in result.queries] == [None, None]
    assert [q.runs for q in result.queries] == [2, 2]
    assert "were not recorded (a superuser can CREATE EXTENSION" in result._repr_html_()
    report = compare(result, result)
    notes = [c for c in report if c.name == STATS_CHECK]
    assert len(notes) == 1 and notes[0].status == "skip" and report.ok
    # A baseline without server times beside a result with them: said once, never a fail.
    recorded = dataclasses.replace(
        result,
        stats_note="",
        queries=tuple(dataclasses.replace(q, server_mean_ms=0.5) for q in result.queries),
    )
    (note,) = [c for c in compare(result, recorded) if c.name == STATS_CHECK]
    assert "the baseline has no server-side mean times" in note.detail


@pytest.fixture(scope="module")
def unloaded_server() -> Iterator[embedded.EmbeddedStatus]:
    """An embedded server started without pg_stat_statements in shared_preload_libraries."""
    state = Path(tempfile.mkdtemp(prefix="runbook-unloaded-"))
    try:
        run_sql(embedded.start(state).uri(), "ALTER SYSTEM RESET shared_preload_libraries")
        embedded.stop(state)
        yield embedded.start(state)
    finally:
        embedded.destroy(state)
        shutil.rmtree(state, ignore_errors=True)


def test_a_server_without_the_library_loaded_gets_one_note_and_the_benchmark_goes_on(
    unloaded_server: embedded.EmbeddedStatus,
) -> None:
    dsn = unloaded_server.uri()
    _arrange(dsn)
    conn = _connect(dsn)
    try:
        result = run_queries(conn, QUERIES, target="test", runs=2, warmup=0)
    finally:
        conn.close()

    assert result.stats_note.startswith("pg_stat_statements is not loaded, so the benchmark")
    assert "shared_preload_libraries" in result.stats_note
    assert [q.server_mean_ms for q in result.queries] == [None, None]
    report = compare(result, result)
    assert report.ok and [c.name for c in report].count(STATS_CHECK) == 1
