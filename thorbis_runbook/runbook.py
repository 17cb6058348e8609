"""The facade the runbook notebooks import: one Run per notebook execution, steps that display themselves.

A step method never lets a RunbookError escape: it records the failure, shows it, and later
steps show that they were skipped. ``finish()`` then raises the first failure from the last
cell, after every report cell has rendered (papermill and the CLI exit non-zero). Anything
that is not a RunbookError (a bug) propagates at once: papermill must see it.
"""

from __future__ import annotations

import html
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import (
    backfill,
    benchmark,
    changes,
    charts,
    config,
    ledger,
    migrate,
    parameters,
    precheck,
    promotion,
    redaction,
    rehearse,
    rls,
    seed,
    sql_archive,
    status,
    troubleshoot,
    validate,
)
from .checks import CheckReport
from .display import Notice, html_table, message_box
from .endpoint import Endpoint, resolve
from .errors import AlreadySeeded, ConfigError, RunbookError
from .recovery import backup
from .recovery import rollback as recovery
from .runs import git_commit, new_run_id, operator_name
from .summary import CheckRow, ErrorSummary, MigrationRow, RunSummary, StepSummary
from .thresholds import load_thresholds

log = logging.getLogger("thorbis_runbook")
BENCHMARK_FILE = "benchmark.json"
# The most samples (and probe runs, and lock waits) of the monitor kept in summary.json.
MONITOR_POINTS = 300


@dataclass
class StepRecord:
    """What one step of the run did, for the summary and the report's headline."""

    name: str
    status: str  # succeeded, failed, skipped
    detail: str = ""
    checks: list[CheckRow] = field(default_factory=list)
    result: Any = None  # the step's result object, for the charts drawn after it


class Run:
    """One execution of one runbook against one target."""

    def __init__(
        self, runbook: str, settings: config.Settings, target: config.Target, *,
        run_id: str, operator: str, report_dir: Path | None, change_id: str = "",
    ) -> None:  # fmt: skip
        self.runbook = runbook
        self.settings = settings
        self.target = target
        redaction.gather(settings)  # before anything can be shown, logged or archived
        if redaction.looks_secret("run_id", run_id):
            raise ConfigError(
                "the run_id parameter looks like a credential",
                "leave run_id empty (one is made) or give a run id, never a password",
            )
        self.run_id = run_id
        self.operator = redaction.blank_secret(operator)  # recorded in the target's history
        self.report_dir = report_dir
        self.started_at = datetime.now(UTC)
        self.git_commit = git_commit(settings.migrations_dir)
        self.steps: list[StepRecord] = []
        self.failure: RunbookError | None = None
        self.migrations: list[MigrationRow] = []
        self.figures: dict[str, Any] = {}
        self.baseline_path: Path | None = None
        self.rls_report: CheckReport | None = None
        self.context: list[str] = []  # what a reader of a failed run needs beside the error
        self._endpoint: Endpoint | None = None
        # The change this run is attached to: its files must be the pinned ones from the
        # first cell on; apply and rollback check the change again when their step starts.
        self.change = self._attach(change_id) if change_id else None

    @property
    def endpoint(self) -> Endpoint:
        """The target resolved once for the whole run (the embedded server started on first use).

        Raises ConfigError or EmbeddedServerError, which a step records as its failure.
        """
        if self._endpoint is None:
            self._endpoint = resolve(self.settings, self.target)
        return self._endpoint

    # -- steps ---------------------------------------------------------------------------
    def status(self) -> Any:
        """Show every migration's state on the target (read-only, so it runs even after a
        failure: the DBA needs to see the state the database is in)."""
        return self._step(
            "status",
            lambda: status.status(self.endpoint),
            record=self._record_status,
            always=True,
        )

    def apply(
        self, *, dry_run: bool = False, to_version: str = "", lock_timeout: str = "",
        statement_timeout: str = "", confirm_production: bool = False, allow_drift: bool = False,
        allow_out_of_order: bool = False, allow_missing: bool = False,
    ) -> Any:  # fmt: skip
        """Apply pending migrations (or show the exact SQL with dry_run), logging live to the cell."""

        def run() -> Any:
            parameters.expect_bools(
                dry_run=dry_run,
                confirm_production=confirm_production,
                allow_drift=allow_drift,
                allow_out_of_order=allow_out_of_order,
                allow_missing=allow_missing,
            )
            pinned = self._gate("apply", dry_run=dry_run)
            request = migrate.ApplyRequest(
                to_version=to_version or None, dry_run=dry_run,
                confirm_production=confirm_production, allow_drift=allow_drift,
                allow_out_of_order=allow_out_of_order, allow_missing=allow_missing,
                lock_timeout_ms=parameters.duration_ms(lock_timeout, what="lock_timeout"),
                statement_timeout_ms=parameters.duration_ms(
                    statement_timeout, what="statement_timeout"
                ),
                run_id=self.run_id, operator=self.operator, pinned=pinned,
                change_id=self.change.change_id if self.change else "",
            )  # fmt: skip
            before = None if dry_run else self._rls_snapshot()
            with _live_log():
                result = migrate.apply(self.endpoint, request)
            if result.failure is not None:
                self._fail("apply", result.failure)
            if before is not None:
                self.rls_report = self._rls_compare(before, result)
            return result

        return self._step("apply", run, record=self._record_apply)

    def seed_demo(self, businesses: int = 0) -> Any:
        """Load demo data into an empty schema (never into a production target); 0 skips."""
        if not businesses:
            return Notice("skipped", "no demo data asked for (demo_businesses is 0)")

        def run() -> Any:
            config.guard_production(
                self.target, "demo data stays out of it", hint="set demo_businesses to 0"
            )
            with self.endpoint.connection("thorbis-runbook seed") as conn:
                try:
                    return seed.seed(conn, businesses=businesses)
                except AlreadySeeded as exc:
                    return Notice("skipped", exc.message)

        return self._step("demo data", run, record=lambda step, result: None)

    def rls_preserved(self) -> Any:
        """Policies and RLS flags after apply against the snapshot taken just before it."""
        if self.rls_report is None:
            return Notice("skipped", "no live apply ran in this run, so nothing was compared")
        return self.rls_report

    def _rls_snapshot(self) -> rls.RlsSnapshot:
        with self.endpoint.connection("thorbis-runbook rls") as conn:
            return rls.snapshot_rls(conn)

    def _rls_compare(self, before: rls.RlsSnapshot, result: migrate.ApplyResult) -> CheckReport:
        """Fail the run when a policy was dropped or changed, or RLS switched off, unless allowed."""
        ran = {s.version for s in result.steps if s.status == "applied"}
        applied = [m for m in result.migrations if m.version in ran]
        report = CheckReport.of(
            "row-level security preserved",
            rls.compare_rls(before, self._rls_snapshot(), applied=applied),
        )
        if not report.ok:
            self._fail_checks(report)
        self.figures["rls_checks"] = report.counts()
        return report

    def chart_apply(self) -> Any:
        """Time per migration of this run's apply step (nothing to draw: a note instead)."""
        step = next((s for s in self.steps if s.name == "apply"), None)
        result = step.result if step else None
        chart = (
            charts.apply_durations(
                result.steps, target=self.target.name, lock_timeout_ms=self.target.lock_timeout_ms
            )
            if result
            else None
        )
        if chart is None:
            return Notice("skipped", "no migration ran, so there is nothing to chart")
        return chart

    def precheck(self) -> Any:
        """Run every precheck (health, locks, backups, lint of the pending files with live statistics)."""

        def run() -> Any:
            report = precheck.precheck(self.endpoint)
            if not report.ok:
                self._fail_checks(report)
            return report

        return self._step("precheck", run, record=self._record_checks)

    def troubleshoot(self) -> Any:
        """Long queries, the blocked-by tree, half-applied migrations, invalid indexes, and the
        SQL a DBA could run next for each (never run by the runbook)."""
        return self._step(
            "troubleshoot",
            lambda: troubleshoot.troubleshoot(self.endpoint),
            record=self._record_troubleshoot,
        )

    def chart_capacity(self) -> Any:
        """Connections against max_connections, and database size against free disk."""
        if self.failure is not None and not self.steps:
            return Notice("skipped", "the target could not be read")
        try:
            cap = precheck.capacity(self.endpoint)
        except RunbookError as exc:
            redaction.scrub_error(exc)
            return Notice("skipped", f"capacity not measured: {exc.message}", exc.hint)
        limits = load_thresholds(self.settings, self.target)
        return charts.capacity(
            cap,
            target=self.target.name,
            connections_warn_pct=limits.connections_warn_pct,
            connections_fail_pct=limits.connections_fail_pct,
        )

    def chart_monitor(self) -> Any:
        """Sessions and lock waits, then the application's health (probes, transactions and
        error rate, WAL, replication lag, disk) sampled while apply ran, and the alerts raised."""
        step = next((s for s in self.steps if s.name == "apply"), None)
        result = step.result if step else None
        monitored = getattr(result, "monitor", None)
        if monitored is None or not monitored.samples:
            return Notice("skipped", "apply ran no migration, so there was nothing to watch")
        found = (charts.monitor_timeline(monitored), charts.monitor_signals(monitored))
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in monitored.notes)
        alerts = monitored.alerts_html() or "<p>No alert was raised while apply ran.</p>"
        return charts.ChartGroup(
            tuple(c for c in found if c is not None),
            alerts + (f"<ul>{notes}</ul>" if notes else ""),
        )

    def chart_batches(self) -> Any:
        """Each batch of this run's batched migrations: size, rows, time, throttle sleeps.

        Read back from the target's runbook.batch_progress, so a walk resumed from an earlier
        run shows its earlier batches too.
        """
        step = next((s for s in self.steps if s.name == "apply"), None)
        result = step.result if step else None
        ran = {s.version for s in getattr(result, "steps", ()) if s.status != "planned"}
        versions = [m.version for m in getattr(result, "migrations", ()) if m.version in ran]
        if not versions:
            return Notice("skipped", "no batched migration ran in this run")
        try:
            with self.endpoint.connection("thorbis-runbook batches") as conn:
                rows = backfill.batch_rows(conn, versions)
        except RunbookError as exc:
            redaction.scrub_error(exc)
            return Notice("skipped", f"the batches could not be read: {exc.message}", exc.hint)
        chart = charts.batch_timeline(rows, target=self.target.name)
        if chart is None:
            return Notice("skipped", "no batched migration ran in this run")
        self.figures["batches"] = len(rows)
        return chart

    def benchmark(self, runs: int = 0) -> Any:
        """Time the benchmark queries of runbook.toml; saved with the run as a later baseline."""
        if not benchmark.BenchmarkSettings.parse(self.settings.sections.get("benchmark")).queries:
            self.steps.append(
                StepRecord("benchmark", "skipped", "runbook.toml declares no benchmark queries")
            )
            return Notice(
                "skipped", "runbook.toml declares no [[benchmark.queries]], so nothing was timed"
            )

        def run() -> Any:
            result = benchmark.benchmark(self.endpoint, runs=runs or None)
            if self.report_dir is not None:
                result.save(self.report_dir / BENCHMARK_FILE)
            return result

        return self._step("benchmark", run, record=self._record_benchmark)

    def validate(self, baseline: str = "") -> Any:
        """Run every validation check; compare benchmarks with ``baseline`` (a run id, a file, or
        empty for the newest archived benchmark of this target)."""

        def run() -> Any:
            self.baseline_path = self._baseline(baseline)
            report = validate.validate(self.endpoint, baseline=self.baseline_path)
            if not report.ok:
                self._fail_checks(report)
            return report

        return self._step("validate", run, record=self._record_validate)

    def chart_benchmark(self) -> Any:
        """Benchmark medians before (the baseline) and after, with the threshold drawn."""
        step = next(
            (s for s in self.steps if s.name == "benchmark" and s.status == "succeeded"), None
        )
        if step is None:
            return Notice("skipped", "no benchmark ran in this run")
        before = benchmark.BenchmarkResult.load(self.baseline_path) if self.baseline_path else None
        limits = benchmark.BenchmarkSettings.parse(self.settings.sections.get("benchmark"))
        return charts.benchmark_comparison(before, step.result, threshold=limits.threshold)

    def rollback(
        self, *, strategy: str = "schema_only", rollback_run: str = "", to_version: str = "",
        to_time: str = "", confirm_production: bool = False, rehearsal: bool = False,
    ) -> Any:  # fmt: skip
        """Roll the target back with one of the three strategies (the result times the recovery);
        with ``rehearsal`` only rehearse apply / roll back / apply on a scratch copy instead."""
        if rehearsal is True:
            return self.rehearse()

        def run() -> Any:
            parameters.expect_bools(confirm_production=confirm_production, rehearsal=rehearsal)
            self._gate("rollback")
            moment = parameters.moment(to_time, what="to_time") if to_time else None
            request = recovery.RollbackRequest(
                strategy=strategy, run_id=rollback_run or None, to_version=to_version or None,
                to_time=moment, confirm_production=confirm_production,
            )  # fmt: skip
            with _live_log():
                result = recovery.rollback(self.endpoint, request)
            if not result.ok:
                self._fail_checks(result.checks)
            return result

        return self._step("rollback", run, record=self._record_rollback)

    def rehearse(self) -> Any:
        """Apply, roll back and apply again on a scratch copy of the target (never the target)."""

        def run() -> Any:
            with _live_log():
                result = rehearse.rehearse(self.endpoint)
            if not result.ok:
                self._fail_checks(result.checks)
            return result

        return self._step(
            "rehearsal", run, record=lambda step, result: self._record_checks(step, result.checks)
        )

    def backups(self) -> Any:
        """The target's backups, newest last, with their verification."""
        return self._step(
            "backups",
            lambda: backup.list_backups(self.settings, self.target),
            record=lambda s, r: None,
        )

    # -- the end -------------------------------------------------------------------------
    def summary(self) -> RunSummary:
        """The machine-readable record of the run (the report's summary.json)."""
        return RunSummary(
            runbook=self.runbook, run_id=self.run_id, target=self.target.name,
            status="failed" if self.failure else "succeeded",
            started=self.started_at.isoformat(), finished=datetime.now(UTC).isoformat(),
            operator=self.operator, git_commit=self.git_commit, migrations=tuple(self.migrations),
            steps=tuple(StepSummary(s.name, s.status, s.detail) for s in self.steps),
            checks=tuple(c for s in self.steps for c in s.checks), figures=dict(self.figures),
            error=self._error_summary() if self.failure else None,
            change_id=self.change.change_id if self.change else "",
            pin=self.change.pin_sha256 if self.change else "",
        )  # fmt: skip

    def _error_summary(self) -> ErrorSummary:
        """The failure with what surrounds it: blockers, clean-up, the state now, what to run next."""
        assert self.failure is not None
        context = list(self.context)
        try:
            now = status.status(self.endpoint)
            counts = ", ".join(f"{n} {state}" for state, n in sorted(now.plan.counts().items()))
            context.append(f"state now: schema version {now.current_version or 'none'} ({counts})")
        except RunbookError as exc:
            context.append(f"state now: unknown ({exc.message})")
        return ErrorSummary(
            self.failure.message, self.failure.hint, tuple(context),
            f"thorbis-runbook run {self.runbook} --target {self.target.name}  (after the fix above)",
        )  # fmt: skip

    def finish(self) -> Notice:
        """Write summary.json beside the report, then raise the first failure, if any."""
        summary = self.summary()
        if self.report_dir is not None:
            summary.write(self.report_dir)
        if self.failure is not None:
            raise self.failure
        return Notice(
            "succeeded", f"{self.runbook} on {self.target.name} finished (run {self.run_id})"
        )

    # -- display -------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        rows = [
            ("runbook", self.runbook), ("target", self.target.name),
            ("production", "yes" if self.target.production else "no"), ("run id", self.run_id),
            ("operator", self.operator), ("git commit", self.git_commit),
            ("started", self.started_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
            ("migrations folder", str(self.settings.migrations_dir)),
            ("lock_timeout", f"{self.target.lock_timeout_ms} ms"),
            ("statement_timeout", f"{self.target.statement_timeout_ms} ms (0 = none)"),
            ("change", self._change_text()),
        ]  # fmt: skip
        table = html_table(("", "value"), rows, title=f"Run {self.run_id}")
        if self.change is not None and self.change.emergency:
            warning = "EMERGENCY change: approvals and promotion are skipped; approve it afterwards"
            return message_box("fail", warning, label="emergency") + table
        return table

    def __repr__(self) -> str:
        return f"Run({self.runbook!r}, target={self.target.name!r}, run_id={self.run_id!r})"

    # -- the change ----------------------------------------------------------------------
    def _attach(self, change_id: str) -> changes.Change:
        """Load the run's change and refuse files that differ from its pin.

        Raises ConfigError (a malformed id), ChangeNotFound or ChangeRefused.
        """
        change = changes.load_change(ledger.reports_root(self.settings), change_id)
        promotion.require_pinned(change, self.settings, runbook=self.runbook)
        return change

    def _gate(self, runbook: str, *, dry_run: bool = False) -> dict[str, str] | None:
        """Check the target's change policy as the step starts (papermill or an orchestrator may
        run this notebook without the CLI's own check); return the pin apply compares with.

        The change is read again: an approval may have come, or a re-pin voided one, since
        the first cell. Raises ChangeRefused, which the step records as its failure.
        """
        change = None
        if self.change is not None:
            change = changes.load_change(ledger.reports_root(self.settings), self.change.change_id)
        promotion.require_allowed(
            change, self.target, operator=self.operator, runbook=runbook,
            settings=self.settings, dry_run=dry_run,
        )  # fmt: skip
        if change is not None and change.pin_sha256 != self.change_pin:
            raise ConfigError(
                f"change {change.change_id} was re-pinned while this run was going "
                f"(pin {change.pin_number} now)",
                "run this runbook again: it is checked against the new pin",
            )
        return change.pin.checksums() if change is not None else None

    @property
    def change_pin(self) -> str:
        return self.change.pin_sha256 if self.change is not None else ""

    def _change_text(self) -> str:
        change = self.change
        if change is None:
            return "none"
        flag = "EMERGENCY, " if change.emergency else ""
        return (
            f"{change.change_id} ({flag}{change.category}, ticket {change.ticket}, "
            f"pin {change.pin_number} {change.pin_sha256[:12]})"
        )

    # -- internals -----------------------------------------------------------------------
    def _step(
        self,
        name: str,
        action: Callable[[], Any],
        *,
        record: Callable[[StepRecord, Any], None],
        always: bool = False,
    ) -> Any:
        """Run one step; ``always`` for read-only steps that still run after a failure."""
        failed_before = self.failure is not None
        if failed_before and not always:
            self.steps.append(
                StepRecord(name, "skipped", f"an earlier step failed: {self.failure.message}")  # type: ignore[union-attr]
            )
            return Notice("skipped", f"{name} was not run because an earlier step failed")
        try:
            result = action()
        except RunbookError as exc:
            self._fail(name, exc)
            self.steps.append(StepRecord(name, "failed", exc.message))
            return Notice("failed", exc.message, exc.hint)
        failed_now = self.failure is not None and not failed_before
        step = StepRecord(name, "failed" if failed_now else "succeeded")
        record(step, result)
        self.steps.append(step)
        return result

    def _fail(self, name: str, exc: RunbookError) -> None:
        """Keep the first failure, scrubbed: it is shown, archived and raised by finish()."""
        redaction.scrub_error(exc)
        if self.failure is None:
            self.failure = exc
        log.error("%s failed: %s", name, exc.message)

    def _fail_checks(self, report: Any) -> None:
        try:
            report.raise_for_failures()
        except RunbookError as exc:
            self._fail(report.title, exc)

    def _record_checks(self, step: StepRecord, report: Any) -> None:
        step.checks = _check_rows(report)
        counts = report.counts()
        step.detail = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        self.figures[f"{step.name}_checks"] = counts

    def _record_benchmark(self, step: StepRecord, result: Any) -> None:
        step.result = result
        self.figures["benchmark_median_ms"] = {q.name: q.median_ms for q in result.queries}
        step.detail = f"{len(result.queries)} queries timed"

    def _record_validate(self, step: StepRecord, report: Any) -> None:
        """The checks, and the baseline's medians: the change record draws before against after."""
        self._record_checks(step, report)
        if self.baseline_path is None:
            return
        try:
            before = benchmark.BenchmarkResult.load(self.baseline_path)
        except RunbookError:
            return  # validate already said what is wrong with the baseline
        self.figures["baseline_median_ms"] = {q.name: q.median_ms for q in before.queries}
        inside = self.baseline_path.resolve().is_relative_to(ledger.reports_root(self.settings))
        self.figures["baseline"] = (
            self.baseline_path.parent.name if inside else self.baseline_path.name
        )

    def _baseline(self, given: str) -> Path | None:
        return ledger.benchmark_baseline(
            self.settings, self.target.name, given, exclude_run=self.run_id
        )

    def _record_rollback(self, step: StepRecord, result: Any) -> None:
        self._record_checks(step, result.checks)
        step.detail = f"{result.strategy}: undid {', '.join(result.undone) or 'nothing'}"
        self.figures["recovery_seconds"] = result.timings.get("total")
        self.figures["undone"] = list(result.undone)
        self.figures["rollback_strategy"] = result.strategy
        self.figures["undone_run"] = result.undone_run or ""

    def _record_troubleshoot(self, step: StepRecord, report: Any) -> None:
        self._record_checks(step, report.checks)
        step.detail += f"; {len(report.actions)} suggested action(s)"

    def _record_status(self, step: StepRecord, report: Any) -> None:
        self.migrations = [MigrationRow(r.version, r.name, state=r.state) for r in report.plan.rows]
        step.detail = f"schema version {report.current_version or 'none'}"
        self.figures["schema_version"] = report.current_version

    def _record_apply(self, step: StepRecord, result: migrate.ApplyResult) -> None:
        step.result = result
        applied = [s for s in result.steps if s.status == "applied"]
        step.detail = (
            f"dry run: {len(result.steps)} migration(s) planned"
            if result.dry_run
            else f"{len(applied)} migration(s) applied"
        )
        step.checks = _check_rows(self.rls_report) if self.rls_report is not None else []
        self.figures["applied"] = len(applied)
        self.figures["apply_ms"] = sum(s.duration_ms for s in result.steps)
        self.figures["migration_ms"] = {s.version: s.duration_ms for s in result.steps}
        cleaned = [name for s in result.steps for name in s.cleaned_up]
        if cleaned:
            self.context.append(
                f"cleaned up: dropped INVALID index(es) {', '.join(cleaned)} left by the failed build"
            )
        if result.failure is not None and result.monitor is not None and result.monitor.waits:
            last = result.monitor.waits[-1]
            self.context.append(
                f"blocking at that moment (monitor): pid {last.pid} waited {last.wait_ms} ms for "
                f"{last.mode or 'a lock'} on {last.relation or 'an object'}, blocked by pid(s) "
                f"{', '.join(map(str, last.blockers)) or 'unknown'}"
            )
        trips = {s.version: list(s.breaker_trips) for s in result.steps if s.breaker_trips}
        if trips:  # each attempt the circuit breaker cancelled, and why
            self.figures["breaker_trips"] = trips
        allowed = {s.version: s.long_lock_allowed for s in result.steps if s.long_lock_allowed}
        if allowed:
            self.figures["long_lock_allowed"] = allowed
        if result.rollback is not None:
            self.figures["rolled_back"] = list(result.rollback.undone)
            step.detail += (
                f"; on_failure rolled back {', '.join(result.rollback.undone) or 'nothing'}"
            )
        if result.monitor is not None:
            self.figures["max_lock_wait_ms"] = result.monitor.max_blocked_ms
            self.figures["deadlocks"] = result.monitor.deadlocks
            # The series the apply report charts, thinned so a long run's summary stays small.
            self.figures["monitor"] = result.monitor.to_dict(max_points=MONITOR_POINTS)
        self._attach_checksums(result)
        self._record_way_back(result)
        self._record_sql(step, result)

    def _record_way_back(self, result: migrate.ApplyResult) -> None:
        """What this run could go back to: the target's policy and the verified backup it took."""
        self.figures["backup_before_apply"] = self.target.backup_before_apply
        self.figures["on_failure"] = self.target.on_failure
        if result.dry_run:
            return
        taken = [
            m.backup_id
            for m in backup.list_backups(self.settings, self.target).backups
            if m.run_id == self.run_id and m.verified
        ]
        self.figures["backup_id"] = taken[-1] if taken else ""

    def _record_sql(self, step: StepRecord, result: migrate.ApplyResult) -> None:
        """Archive the files this run applied or planned beside its report (the change record's SQL)."""
        if self.report_dir is None:
            return
        ran = {s.version for s in result.steps}
        copies = sql_archive.archive_sql(self.report_dir, result.migrations, ran)
        self.figures["sql_files"] = [c.to_figure() for c in copies]
        missed = [c for c in copies if not c.archived]
        for copy in missed:
            log.warning("%s was not archived with the run: %s", copy.name, copy.note)
        if missed:
            step.detail += f"; not archived: {', '.join(c.name for c in missed)} (see sql_files)"

    def _attach_checksums(self, result: migrate.ApplyResult) -> None:
        """Every migration file with the checksum apply read, and what this run did to it."""
        ran = {s.version: s.status for s in result.steps}
        self.migrations = [
            MigrationRow(m.version, m.name, checksum=m.checksum, this_run=ran.get(m.version, ""))
            for m in result.migrations
        ]


def start(
    runbook: str, *, target: str = "", config_path: str = "", run_id: str = "", operator: str = "",
    report_dir: str = "", change_id: str = "",
) -> Run:  # fmt: skip
    """Begin a run: load runbook.toml, resolve the target and give the run its id.

    Without ``config_path`` (or THORBIS_CONFIG) runbook.toml is found by walking up from the
    working folder: JupyterLab starts the kernel in notebooks/, the project's file is above it.
    Raises ConfigError for an unknown target, a broken or missing runbook.toml or a run id that
    cannot name a report folder (in the first cell, so a wrong parameter stops the notebook
    before anything touches a database). With ``change_id`` the run is attached to that
    change: ChangeNotFound for an unknown one, ChangeRefused when a migration file differs
    from its pin.
    """
    settings = config.load_settings(Path(config_path) if config_path else None)
    chosen = settings.target(target or None)
    return Run(
        runbook, settings, chosen,
        run_id=parameters.run_id(run_id) if run_id else new_run_id(),
        operator=operator or operator_name(),
        report_dir=Path(report_dir) if report_dir else None, change_id=change_id,
    )  # fmt: skip


def _check_rows(report: CheckReport) -> list[CheckRow]:
    return [
        CheckRow(report.title, c.name, c.status, c.observed, c.threshold, c.detail)
        for c in report.checks
    ]


@contextmanager
def _live_log() -> Iterator[None]:
    """Show the runner's log lines as they happen (a notebook cell shows stdout live)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    redaction.guard(log, handler)  # the cell output is archived
    previous = log.level
    log.addHandler(handler)
    log.setLevel(min(previous or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)


__all__ = ["ConfigError", "Notice", "Run", "StepRecord", "start"]
