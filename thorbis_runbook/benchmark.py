"""Performance impact: the [[benchmark.queries]] timed before and after a migration, and compared.

Each query runs ``warmup`` times untimed, then ``runs`` times timed on the client (execute plus
fetch, as an application sees it), inside a READ ONLY transaction that is rolled back. Its
EXPLAIN (FORMAT JSON) plan is kept as the top node and the scan nodes, so a comparison can say
why a query got slower ("Bitmap Index Scan using customers_search_idx -> Seq Scan on customers").
Where pg_stat_statements is loaded, each query's server-side mean execution time over the timed
runs is recorded too (statement_stats), and the comparison shows it before and after.
"""

from __future__ import annotations

import html
import json
import logging
import math
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import db, statement_stats
from .checks import Check, CheckReport, failed, passed, skipped, warned
from .config import reject_unknown_keys
from .display import html_table
from .endpoint import Endpoint
from .errors import ConfigError
from .integrity import read_only, single_select

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)

COLUMNS = ("query", "runs", "min_ms", "median_ms", "p95_ms", "max_ms", "server_mean_ms",
           "top_node", "scans")  # fmt: skip
STATS_CHECK = "benchmark server times"
_SETTINGS_KEYS = {"queries", "runs", "warmup", "threshold", "fail_ratio", "min_difference_ms"}


@dataclass(frozen=True)
class BenchmarkQuery:
    name: str
    sql: str
    description: str = ""


@dataclass(frozen=True)
class BenchmarkSettings:
    """[benchmark]: the queries, how often to run them, and how to grade a slowdown.

    ``min_difference_ms`` is the noise floor: a median that grew by less than this many
    milliseconds passes whatever the ratio (0.05 ms -> 0.08 ms is 1.6x and means nothing).
    """

    queries: tuple[BenchmarkQuery, ...] = ()
    runs: int = 10
    warmup: int = 2
    threshold: float = 1.2
    fail_ratio: float = 1.5
    min_difference_ms: float = 1.0

    @classmethod
    def parse(cls, value: object) -> BenchmarkSettings:
        """Read the [benchmark] table; raise ConfigError for unknown keys or wrong values."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigError("[benchmark] must be a table", "see runbook.toml's [benchmark]")
        reject_unknown_keys(value, _SETTINGS_KEYS, where="[benchmark]")
        numbers = {k: value[k] for k in _SETTINGS_KEYS - {"queries"} if k in value}
        for key, number in numbers.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0:
                raise ConfigError(f"benchmark.{key} = {number!r}", "write a number, 0 or more")
        settings = cls(_parse_queries(value.get("queries")), **numbers)
        if settings.runs < 1 or settings.threshold > settings.fail_ratio:
            raise ConfigError(
                "benchmark.runs must be 1 or more and threshold at most fail_ratio",
                "for example runs = 10, threshold = 1.2, fail_ratio = 1.5",
            )
        return settings


@dataclass(frozen=True)
class QueryTiming:
    """One query's timings in milliseconds and the plan it ran with."""

    name: str
    sql: str
    runs: int
    min_ms: float
    median_ms: float
    p95_ms: float
    max_ms: float
    top_node: str
    scans: tuple[str, ...]
    # The server's own mean execution time over the timed runs (pg_stat_statements); None
    # where it could not be read (the result's stats_note says why).
    server_mean_ms: float | None = None

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.name, self.runs, self.min_ms, self.median_ms, self.p95_ms, self.max_ms,
                self.server_mean_ms, self.top_node, ", ".join(self.scans))  # fmt: skip


@dataclass(frozen=True)
class BenchmarkResult:
    """A benchmark run, JSON-serialisable so it is saved with the run and compared later."""

    target: str
    taken_at: str
    queries: tuple[QueryTiming, ...] = field(default_factory=tuple)
    # Queries whose tables do not exist yet (a precheck before the first migration): not timed.
    missing: tuple[str, ...] = field(default_factory=tuple)
    # Why the server-side mean times are absent (pg_stat_statements not loaded, say); "" when
    # they were recorded (or, in a result saved before they existed, not looked for).
    stats_note: str = ""

    def __iter__(self) -> Iterator[QueryTiming]:
        return iter(self.queries)

    def by_name(self) -> dict[str, QueryTiming]:
        return {query.name: query for query in self.queries}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchmarkResult:
        timings = tuple(
            QueryTiming(**{**q, "scans": tuple(q["scans"])}) for q in data.get("queries", [])
        )
        return cls(
            str(data["target"]), str(data["taken_at"]), timings, tuple(data.get("missing", ())),
            str(data.get("stats_note", "")),
        )  # fmt: skip

    def save(self, path: Path | str) -> Path:
        """Write the result as JSON; return the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: Path | str) -> BenchmarkResult:
        """Read a saved result; raise ConfigError when the file is missing or not one."""
        source = Path(path)
        try:
            return cls.from_dict(json.loads(source.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ConfigError(
                f"benchmark baseline {source} does not exist",
                "pass the file written by: thorbis-runbook benchmark --save PATH",
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{source} is not a saved benchmark result ({exc})",
                "pass the file written by: thorbis-runbook benchmark --save PATH",
            ) from None

    def rows(self) -> list[tuple[Any, ...]]:
        return [query.as_tuple() for query in self.queries]

    def to_frame(self) -> pandas.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(COLUMNS))

    def _repr_html_(self) -> str:
        table = html_table(
            COLUMNS, self.rows(), title=f"benchmark {self.target}", summary=self.taken_at
        )
        notes = self._missing_note() + (
            f"<p>{html.escape(self.stats_note)}.</p>" if self.stats_note else ""
        )
        return f"<div class='runbook-benchmark'>{table}{notes}</div>"

    def _missing_note(self) -> str:
        if not self.missing:
            return ""
        names = html.escape(", ".join(self.missing))
        return f"<p>Not timed, their tables do not exist yet: {names}.</p>"


# undefined_table, undefined_column, undefined_function, invalid_schema_name: the schema the
# query reads is not there yet, which is normal before the first migration.
_NOT_THERE_YET = {"42P01", "42703", "42883", "3F000"}


def run_queries(
    conn: db.Connection,
    queries: Sequence[BenchmarkQuery],
    *,
    target: str,
    runs: int = 10,
    warmup: int = 2,
) -> BenchmarkResult:
    """Time every query (``warmup`` untimed runs, then ``runs`` timed) and read its plan; where
    pg_stat_statements can be read, its server-side mean over the timed runs too."""
    stats = statement_stats.reader(conn) if queries else None
    note = stats if isinstance(stats, str) else ""
    reader = stats if isinstance(stats, statement_stats.StatsReader) else None
    timings = []
    missing = []
    for query in queries:
        try:
            timing = _time_query(conn, query, runs=runs, warmup=warmup, reader=reader)
        except db.DatabaseError as exc:
            if db.sqlstate(exc) in _NOT_THERE_YET:
                missing.append(query.name)
                continue
            raise ConfigError(
                f"benchmark query {query.name!r} failed: {db.error_message(exc)} [SQLSTATE {db.sqlstate(exc)}]",
                "fix its sql in [[benchmark.queries]] of runbook.toml",
            ) from None
        timings.append(timing)
    if reader is not None and timings and all(t.server_mean_ms is None for t in timings):
        note = statement_stats.NO_QUERY_ID
    if note:
        log.info("%s", note)
    taken = datetime.now(UTC).isoformat(timespec="seconds")
    return BenchmarkResult(target, taken, tuple(timings), tuple(missing), note)


def _time_query(
    conn: db.Connection,
    query: BenchmarkQuery,
    *,
    runs: int,
    warmup: int,
    reader: statement_stats.StatsReader | None,
) -> QueryTiming:
    """Plan, warm up and time one query; the server's figures are read around the timed runs
    only, outside their read-only transaction (reading may create the extension, rolled back)."""
    with read_only(conn):
        # VERBOSE adds the query identifier pg_stat_statements files the query under.
        found = db.fetch_all(conn, f"EXPLAIN (VERBOSE, FORMAT JSON) {query.sql}")[0][0]
        for _ in range(warmup):
            db.fetch_all(conn, query.sql)
    explain = found if isinstance(found, list) else json.loads(found)
    queryid = statement_stats.query_id(explain) if reader else None
    before = reader.totals(conn, queryid) if reader and queryid is not None else None
    samples = []
    with read_only(conn):
        for _ in range(runs):
            started = time.perf_counter()
            db.fetch_all(conn, query.sql)
            samples.append((time.perf_counter() - started) * 1000)
    after = reader.totals(conn, queryid) if reader and queryid is not None and before else None
    top, scans = plan_nodes(explain)
    return _timing(query, samples, top, scans, statement_stats.mean_ms(before, after))


def benchmark(endpoint: Endpoint, *, runs: int | None = None) -> BenchmarkResult:
    """Run the [[benchmark.queries]] of runbook.toml against a target.

    Raises ConfigError (no queries, a wrong [benchmark] table) and ConnectionFailed.
    """
    config = BenchmarkSettings.parse(endpoint.settings.sections.get("benchmark"))
    if not config.queries:
        raise ConfigError(
            "runbook.toml declares no [[benchmark.queries]]",
            "add at least one [[benchmark.queries]] with a name and sql",
        )
    if runs is not None and runs < 1:
        raise ConfigError(f"--runs {runs} must be 1 or more", "pass --runs 10, for example")
    with endpoint.connection("thorbis-runbook benchmark") as conn:
        return run_queries(
            conn,
            config.queries,
            target=endpoint.name,
            runs=runs or config.runs,
            warmup=config.warmup,
        )


def compare(
    before: BenchmarkResult,
    after: BenchmarkResult,
    *,
    threshold: float = 1.2,
    fail_ratio: float = 1.5,
    min_difference_ms: float = 1.0,
) -> CheckReport:
    """Grade each query's median after against before: pass within ``threshold``x, warn up to
    ``fail_ratio``x, fail beyond; a growth under ``min_difference_ms`` always passes. A changed
    plan is shown in the detail (scan nodes before -> after)."""
    baseline = before.by_name()
    checks = [_compare_one(baseline.get(q.name), q, threshold, fail_ratio, min_difference_ms)
              for q in after.queries]  # fmt: skip
    note = _stats_note(before, after)
    if note:
        checks.append(skipped(STATS_CHECK, note))
    return CheckReport.of(f"benchmark {after.target} against {before.taken_at}", checks)


def _stats_note(before: BenchmarkResult, after: BenchmarkResult) -> str:
    """Why the comparison shows no server-side times, said once (never a failure)."""
    if after.stats_note:
        return after.stats_note
    recorded = any(q.server_mean_ms is not None for q in after.queries)
    if recorded and all(q.server_mean_ms is None for q in before.queries):
        why = before.stats_note or "it was taken where pg_stat_statements was not read"
        return f"the baseline has no server-side mean times ({why}), so only client times compare"
    return ""


def plan_nodes(explain: Sequence[Mapping[str, Any]]) -> tuple[str, tuple[str, ...]]:
    """Return the top node and every scan node of an EXPLAIN (FORMAT JSON) plan, in plan order."""
    root = explain[0]["Plan"]
    scans: list[str] = []

    def walk(node: Mapping[str, Any]) -> None:
        if "Relation Name" in node or "Index Name" in node:
            label = node["Node Type"]
            if "Index Name" in node:
                label += f" using {node['Index Name']}"
            if "Relation Name" in node:
                label += f" on {node['Relation Name']}"
            if label not in scans:
                scans.append(label)
        for child in node.get("Plans", []):
            walk(child)

    walk(root)
    return _node_label(root), tuple(scans)


def _node_label(node: Mapping[str, Any]) -> str:
    strategy = node.get("Strategy")
    kind = str(node["Node Type"])
    return f"{kind} ({strategy})" if strategy and strategy != "Plain" else kind


def _timing(
    query: BenchmarkQuery,
    samples: list[float],
    top: str,
    scans: tuple[str, ...],
    server_mean_ms: float | None = None,
) -> QueryTiming:
    ordered = sorted(samples)
    # Nearest-rank percentile: an actual sample, never an interpolation between two.
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return QueryTiming(
        name=query.name, sql=query.sql, runs=len(samples), min_ms=round(ordered[0], 3),
        median_ms=round(statistics.median(ordered), 3), p95_ms=round(p95, 3),
        max_ms=round(ordered[-1], 3), top_node=top, scans=scans, server_mean_ms=server_mean_ms,
    )  # fmt: skip


def _compare_one(
    before: QueryTiming | None,
    after: QueryTiming,
    threshold: float,
    fail_ratio: float,
    min_difference_ms: float,
) -> Check:
    name = f"benchmark {after.name}"
    if before is None:
        return skipped(name, "no baseline figure for this query")
    ratio = after.median_ms / before.median_ms if before.median_ms > 0 else math.inf
    observed = f"{before.median_ms:.3f} -> {after.median_ms:.3f} ms ({ratio:.2f}x)"
    limit = f"<= {threshold:g}x"
    plan = (
        f"plan changed: {', '.join(before.scans) or before.top_node} -> "
        f"{', '.join(after.scans) or after.top_node}"
        if before.scans != after.scans or before.top_node != after.top_node
        else f"same plan ({', '.join(after.scans) or after.top_node})"
    )
    if before.server_mean_ms is not None and after.server_mean_ms is not None:
        plan += (
            f"; server mean {before.server_mean_ms:.3f} -> {after.server_mean_ms:.3f} ms "
            "(pg_stat_statements)"
        )
    if after.median_ms - before.median_ms < min_difference_ms:
        return passed(
            name, observed, limit, f"{plan}; change under the {min_difference_ms:g} ms noise floor"
        )
    if ratio <= threshold:
        return passed(name, observed, limit, plan)
    if ratio <= fail_ratio:
        return warned(name, observed, limit, f"slower; {plan}")
    return failed(name, observed, limit, f"slower beyond {fail_ratio:g}x; {plan}")


def _parse_queries(value: object) -> tuple[BenchmarkQuery, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise ConfigError(
            "benchmark.queries must be an array of tables", "write [[benchmark.queries]]"
        )
    result = []
    for i, item in enumerate(value):
        where = f"benchmark.queries[{i}]"
        reject_unknown_keys(item, {"name", "sql", "description"}, where=where)
        name, text = item.get("name"), item.get("sql")
        if not isinstance(name, str) or not isinstance(text, str):
            raise ConfigError(
                f"{where} needs a name and sql, both strings",
                'write name = "business list" and sql = "SELECT ..."',
            )
        result.append(
            BenchmarkQuery(
                name,
                single_select(text, f"benchmark query {name}"),
                str(item.get("description", "")),
            )
        )
    if len({q.name for q in result}) != len(result):
        raise ConfigError("two [[benchmark.queries]] share a name", "give every query its own name")
    return tuple(result)
