"""Server-side statement times from pg_stat_statements, read around the benchmark's timed runs.

The client's timings include the network and the driver; pg_stat_statements' mean execution
time is the server's own. It is never reset (pg_stat_statements_reset() would wipe every other
statement's figures, which a server's monitoring reads): a query's calls and total time are
read before and after its timed runs, and its mean is the difference. Nothing is left behind:
where the extension is not created in the database, each read creates it in a transaction
that is rolled back. Where the library is not loaded (shared_preload_libraries) or the role
may not read it, one sentence says why and the benchmark goes on without.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import db, queries

log = logging.getLogger(__name__)

_CREATE_SQL = "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
_SCHEMA_SQL = (
    "SELECT format('%I', n.nspname) FROM pg_catalog.pg_extension AS e"
    " JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace"
    " WHERE e.extname = 'pg_stat_statements'"
)
# {schema} is the extension's schema as format('%I') quoted it from the catalog, never input.
# The function, not the view: without query texts (showtext false) there is no file to read;
# and it must really be called (a WHERE false would be folded away and prove nothing).
_PROBE_SQL = "SELECT 1 FROM {schema}.pg_stat_statements(false) LIMIT 1"
_TOTALS_SQL = (
    "SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(total_exec_time), 0)::float8"
    " FROM {schema}.pg_stat_statements(false) WHERE queryid = %(queryid)s"
    " AND dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())"
)
_NOT_LOADED = "55000"  # object_not_in_prerequisite_state: not in shared_preload_libraries
NO_QUERY_ID = (
    "EXPLAIN shows no query identifier here (compute_query_id is off), so the benchmark "
    "queries' server-side mean times from pg_stat_statements were not recorded"
)


@dataclass(frozen=True)
class StatsReader:
    """How to read pg_stat_statements on one connection: the view's schema, and whether the
    extension has to be created (and rolled back) around each read."""

    schema: str
    create: bool

    def totals(self, conn: db.Connection, queryid: int) -> tuple[int, float] | None:
        """Calls and total execution time (ms) of one statement in this database so far; None
        when they cannot be read (logged: the benchmark never fails for it)."""
        try:
            with self._reading(conn):
                rows = db.fetch_all(
                    conn, _TOTALS_SQL.format(schema=self.schema), {"queryid": queryid}
                )
        except db.DatabaseError as exc:
            if db.is_connection_lost(exc):
                raise
            log.warning("pg_stat_statements could not be read: %s", db.error_message(exc))
            return None
        return int(rows[0][0]), float(rows[0][1])

    @contextmanager
    def _reading(self, conn: db.Connection) -> Iterator[None]:
        with _rolled_back(conn):
            if self.create:
                db.execute(conn, _CREATE_SQL)
            yield


def reader(conn: db.Connection) -> StatsReader | str:
    """Return how to read pg_stat_statements here, or the one sentence saying why it cannot be."""
    installed_schema, available = db.fetch_all(conn, queries.load("statement_stats_setup"))[0]
    if installed_schema is None and not available:
        return (
            "pg_stat_statements is not installed on this server, so the benchmark queries' "
            "server-side mean times were not recorded"
        )
    try:
        with _rolled_back(conn):
            if installed_schema is None:
                db.execute(conn, _CREATE_SQL)
            schema = installed_schema or str(db.fetch_all(conn, _SCHEMA_SQL)[0][0])
            db.fetch_all(conn, _PROBE_SQL.format(schema=schema))
    except db.DatabaseError as exc:
        if db.is_connection_lost(exc):
            raise
        if db.sqlstate(exc) == _NOT_LOADED:
            return (
                "pg_stat_statements is not loaded, so the benchmark queries' server-side mean "
                "times were not recorded (add it to shared_preload_libraries and restart the "
                "server to have them)"
            )
        return (
            f"pg_stat_statements cannot be read by this role ({db.error_message(exc)}), so the "
            "benchmark queries' server-side mean times were not recorded (a superuser can "
            "CREATE EXTENSION pg_stat_statements in this database)"
        )
    return StatsReader(schema, create=installed_schema is None)


def query_id(explain: Sequence[Mapping[str, Any]]) -> int | None:
    """The query identifier an EXPLAIN (VERBOSE, FORMAT JSON) shows (compute_query_id on)."""
    value = explain[0].get("Query Identifier") if explain else None
    return int(value) if value not in (None, 0) else None


def mean_ms(before: tuple[int, float] | None, after: tuple[int, float] | None) -> float | None:
    """The mean execution time of the calls between two reads, or None when there were none."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return round((after[1] - before[1]) / (after[0] - before[0]), 3)


@contextmanager
def _rolled_back(conn: db.Connection) -> Iterator[None]:
    db.execute(conn, "BEGIN")
    try:
        yield
    finally:
        db.rollback_quietly(conn)
