"""Validation after a migration: verify scripts, history, indexes, integrity, RLS, metrics, speed.

``validate`` gathers every check into one CheckReport; each concern lives in its own module
(amcheck, expectations, integrity, rls, benchmark). Nothing here writes: verify scripts and probes run
in transactions that are rolled back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import amcheck, db, pooler, queries
from .benchmark import BenchmarkResult, BenchmarkSettings, compare, run_queries
from .checks import Check, CheckReport, at_most, failed, passed, skipped, warned
from .config import Settings, Target, reject_unknown_keys
from .endpoint import Endpoint
from .errors import ConfigError
from .expectations import TableExpectation, expectation_checks, parse_expectations
from .history import read_history
from .integrity import (
    FormatRule,
    Reference,
    Rule,
    integrity_probes,
    parse_formats,
    parse_references,
    parse_rules,
    run_parallel,
)
from .migrations import MigrationSet, discover
from .plan import DONE, build_plan
from .rls import RlsSettings, isolation_checks
from .thresholds import Thresholds, load_thresholds

log = logging.getLogger(__name__)

_KEYS = {"schemas", "workers", "tables", "references", "rules", "formats", "rls", "amcheck"}
_SYSTEM_SCHEMAS_SQL = (
    "SELECT nspname::text FROM pg_catalog.pg_namespace WHERE nspname NOT LIKE 'pg\\_%'"
    " AND nspname NOT IN ('information_schema', 'runbook') ORDER BY 1"
)


@dataclass(frozen=True)
class ValidateSettings:
    """The [validate] table of runbook.toml, parsed once before anything connects."""

    schemas: tuple[str, ...] | None = None
    workers: int = 2
    tables: tuple[TableExpectation, ...] = ()
    references: tuple[Reference, ...] = ()
    rules: tuple[Rule, ...] = ()
    formats: tuple[FormatRule, ...] = ()
    rls: RlsSettings = field(default_factory=RlsSettings)
    thresholds: Thresholds = field(default_factory=Thresholds)
    # bt_index_check of the latest run's indexes: with every table row looked up in the index
    # (heapallindexed, a full scan of each table), the index's own pages only, or off.
    amcheck: str = "heapallindexed"

    @classmethod
    def from_settings(cls, settings: Settings, target: Target) -> ValidateSettings:
        """Read [validate] and the target's thresholds; raise ConfigError for a wrong entry."""
        section = settings.sections.get("validate") or {}
        if not isinstance(section, Mapping):
            raise ConfigError("[validate] must be a table", "see runbook.toml's [validate] section")
        reject_unknown_keys(section, _KEYS, where="[validate]")
        schemas = section.get("schemas")
        if schemas is not None and (
            not isinstance(schemas, list) or not all(isinstance(s, str) for s in schemas)
        ):
            raise ConfigError(
                "validate.schemas must be a list of schema names",
                'write schemas = ["business_core"]',
            )
        workers = section.get("workers", 2)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"validate.workers = {workers!r}", "write a whole number, 1 or more")
        mode = section.get("amcheck", "heapallindexed")
        if mode not in amcheck.MODES:
            raise ConfigError(
                f"validate.amcheck = {mode!r} is not a mode",
                'write "heapallindexed", "structure" or "off"',
            )
        return cls(
            schemas=tuple(schemas) if schemas is not None else None,
            workers=workers,
            tables=parse_expectations(section.get("tables")),
            references=parse_references(section.get("references")),
            rules=parse_rules(section.get("rules")),
            formats=parse_formats(section.get("formats")),
            rls=RlsSettings.parse(section.get("rls")),
            amcheck=mode,
            # One [thresholds] table (and the target's own) serves every check.
            thresholds=load_thresholds(settings, target),
        )


def validate(
    endpoint: Endpoint, *, baseline: BenchmarkResult | Path | str | None = None
) -> CheckReport:
    """Run every validation check against a target; one report, any fail fails.

    ``baseline`` (a BenchmarkResult or the path of a saved one) adds the benchmark comparison.
    Raises ConfigError, MigrationFileError and ConnectionFailed before any check runs.
    """
    settings, chosen = endpoint.settings, endpoint.target
    config = ValidateSettings.from_settings(settings, chosen)
    bench = BenchmarkSettings.parse(settings.sections.get("benchmark"))
    before = BenchmarkResult.load(baseline) if isinstance(baseline, (str, Path)) else baseline
    migrations = discover(settings.migrations_dir)
    checks: list[Check] = []
    with endpoint.connection("thorbis-runbook validate") as conn:
        pooler.warn_if_pooled(conn, endpoint.connect, target_name=chosen.name)
        checks += verification_checks(conn, migrations)
        checks += amcheck.index_checks(
            conn, migrations, mode=config.amcheck, lock_timeout_ms=chosen.lock_timeout_ms,
            statement_timeout_ms=chosen.statement_timeout_ms,
        )  # fmt: skip
        checks += expectation_checks(conn, config.tables)
        schemas = config.schemas or tuple(r[0] for r in db.fetch_all(conn, _SYSTEM_SCHEMAS_SQL))
        probes = integrity_probes(
            conn,
            schemas=schemas,
            references=config.references,
            rules=config.rules,
            formats=config.formats,
        )
        checks += run_parallel(
            endpoint.dsn, probes, target_name=chosen.name, workers=config.workers,
            statement_timeout_ms=chosen.statement_timeout_ms,
        )  # fmt: skip
        checks += isolation_checks(conn, config.rls)
        checks += metric_checks(conn, config.thresholds)
        if before is not None:
            after = run_queries(
                conn, bench.queries, target=chosen.name, runs=bench.runs, warmup=bench.warmup
            )
            checks += compare(
                before, after, threshold=bench.threshold, fail_ratio=bench.fail_ratio,
                min_difference_ms=bench.min_difference_ms,
            ).checks  # fmt: skip
    return CheckReport.of(f"validate {chosen.name}", checks)


def verification_checks(conn: db.Connection, migrations: MigrationSet) -> list[Check]:
    """The history against the files, then every applied migration's .verify.sql (rolled back)."""
    plan = build_plan(migrations, read_history(conn))
    problems = [f"{row.version}_{row.name}: {row.state}" for row in plan.rows
                if row.state in ("drifted", "missing file", "failed", "running")]  # fmt: skip
    pending = [m.filename for m in plan.pending]
    observed = ", ".join(f"{n} {state}" for state, n in sorted(plan.counts().items())) or "empty"
    if problems:
        checks = [failed("history matches files", observed, "no drift, failed, running or missing",
                         "; ".join(problems) + "; run thorbis-runbook status for the fix")]  # fmt: skip
    elif pending:
        checks = [warned("history matches files", observed, "nothing pending",
                         f"{len(pending)} migration(s) not applied yet: {', '.join(pending)}")]  # fmt: skip
    else:
        checks = [passed("history matches files", observed, "no drift, failed, running or missing")]
    files = migrations.by_version()
    for row in plan.rows:
        migration = files.get(row.version)
        if migration is None or row.state not in (*DONE, "drifted"):
            continue
        checks.append(_verify(conn, migration.filename, migration.verify_sql))
    return checks


def metric_checks(conn: db.Connection, thresholds: Thresholds) -> list[Check]:
    """Database size, connections against max_connections and the cache hit ratio."""
    size, connections, max_connections, hits, reads = db.fetch_all(
        conn, queries.load("validate_system_metrics")
    )[0]
    t = thresholds
    checks = [
        at_most("database size", round(size / 1024**3, 3), warn=t.database_size_warn_gb,
                fail=t.database_size_fail_gb, unit=" GB", detail=f"{size:,} bytes"),
        at_most("connections", round(100 * connections / max_connections, 1), warn=t.connections_warn_pct,
                fail=t.connections_fail_pct, unit="%",
                detail=f"{connections} client connections of max_connections {max_connections}"),
    ]  # fmt: skip
    total = hits + reads
    if total < t.cache_hit_min_blocks:
        checks.append(
            skipped(
                "cache hit ratio",
                f"only {total} block accesses since the statistics reset (< {t.cache_hit_min_blocks})",
            )
        )
    else:
        checks.append(_at_least("cache hit ratio", round(hits / total, 4), warn=t.cache_hit_warn, fail=t.cache_hit_fail,
                                detail=f"{hits:,} buffer hits, {reads:,} reads"))  # fmt: skip
    return checks


def _verify(conn: db.Connection, filename: str, verify_sql: str | None) -> Check:
    """Run one verify script in a transaction that is rolled back: verifying changes nothing."""
    name = f"verify {filename}"
    if not verify_sql:
        return skipped(name, "no .verify.sql beside the migration")
    db.execute(conn, "BEGIN")
    try:
        db.execute(conn, verify_sql)
    except db.DatabaseError as exc:
        return failed(name, f"SQLSTATE {db.sqlstate(exc)}", "no error",
                      f"{db.error_message(exc)}; the schema is not as the migration intended")  # fmt: skip
    finally:
        if not conn.closed:
            db.execute(conn, "ROLLBACK")
    return passed(name, "ok", "no error")


def _at_least(name: str, observed: float, *, warn: float, fail: float, detail: str) -> Check:
    """Grade a value that should stay high (the counterpart of checks.at_most)."""
    if observed < fail:
        return failed(name, f"{observed:g}", f">= {fail:g}", detail)
    if observed < warn:
        return warned(name, f"{observed:g}", f">= {warn:g}", detail)
    return passed(name, f"{observed:g}", f">= {warn:g}", detail)
