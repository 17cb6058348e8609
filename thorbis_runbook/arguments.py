"""The command line's grammar: every verb, its arguments and their help (no behaviour here).

cli.py maps each verb to its handler; keeping the grammar apart keeps both readable.
"""

from __future__ import annotations

import argparse
from typing import Any

from .lint_output import FORMATS as LINT_FORMATS


def parser() -> argparse.ArgumentParser:
    """The whole command line: global options, then one sub-command per verb."""
    parser = argparse.ArgumentParser(
        prog="thorbis-runbook", description="PostgreSQL migration runbook kit"
    )
    parser.add_argument(
        "--config", help="path to runbook.toml (default: ./runbook.toml or THORBIS_CONFIG)"
    )
    parser.add_argument("--traceback", action="store_true", help="show the traceback of an error")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    init_cmd = sub.add_parser(
        "init",
        help="start a project: runbook.toml, the four runbooks, reports/ and migrations/ "
        "(never overwrites a file)",
    )
    init_cmd.add_argument(
        "folder", nargs="?", default=".", help="the project folder (default: the current one)"
    )
    init_cmd.add_argument(
        "--migrations",
        metavar="PATH",
        help="adopt an existing migrations folder in place (e.g. supabase/migrations) instead "
        "of creating migrations/",
    )

    db_cmd = sub.add_parser(
        "db",
        help="the local PostgreSQL (bundled, or [runbook] server_bin_dir): start, stop, status, url",
    )
    db_cmd.add_argument("action", choices=("start", "stop", "status", "url"))
    db_url = db_cmd.add_mutually_exclusive_group()
    db_url.add_argument(
        "--target",
        help="with url: this embedded target's database (default: default_target, as every verb)",
    )
    db_url.add_argument(
        "--server", action="store_true", help="with url: the server's maintenance database"
    )

    status_cmd = sub.add_parser("status", help="every migration's state on a target")
    common(status_cmd)

    apply_cmd = sub.add_parser("apply", help="apply pending migrations")
    common(apply_cmd)
    apply_cmd.add_argument("--to", metavar="VERSION", help="stop after this version")
    apply_cmd.add_argument(
        "--dry-run", action="store_true", help="print the exact SQL, change nothing"
    )
    apply_cmd.add_argument(
        "--confirm-production", action="store_true", help="required for production targets"
    )
    apply_cmd.add_argument(
        "--allow-drift", action="store_true", help="apply although applied files changed"
    )
    apply_cmd.add_argument(
        "--allow-out-of-order",
        action="store_true",
        help="apply files older than the newest applied",
    )
    apply_cmd.add_argument(
        "--allow-missing", action="store_true", help="apply although applied files are gone"
    )
    apply_cmd.add_argument(
        "--lock-timeout", help='override the target\'s lock_timeout for this run, e.g. "2s"'
    )
    apply_cmd.add_argument(
        "--statement-timeout", help='override the target\'s statement_timeout, e.g. "15min"'
    )
    apply_cmd.add_argument(
        "--backup", choices=("full", "schema", "none"),
        help="what to save before applying (default: the target's backup_before_apply, full)",
    )  # fmt: skip
    change_flag(apply_cmd)

    new_cmd = sub.add_parser(
        "new", help="create a migration (and its down and verify files) from the template"
    )
    new_cmd.add_argument("name", help="snake_case description, e.g. add_invoice_due_date")
    expand_contract_options(new_cmd)

    baseline_cmd = sub.add_parser(
        "baseline", help="record migrations as applied without running them"
    )
    common(baseline_cmd)
    baseline_cmd.add_argument(
        "--to", metavar="VERSION", required=True, help="last version the schema holds"
    )
    baseline_cmd.add_argument(
        "--confirm-production", action="store_true", help="required for production targets"
    )

    seed_cmd = sub.add_parser("seed", help="load realistic demo data through COPY")
    common(seed_cmd)
    seed_cmd.add_argument(
        "--businesses", type=int, default=100, help="how many businesses (default 100)"
    )
    seed_cmd.add_argument("--work-orders-per-business", type=int, default=1000, help="default 1000")
    seed_cmd.add_argument(
        "--if-empty", action="store_true", help="skip quietly when data is already there"
    )
    run_cmd = sub.add_parser(
        "run", help="execute runbook notebooks with papermill and archive the reports"
    )
    run_cmd.add_argument(
        "runbooks", nargs="+", choices=("precheck", "apply", "validate", "rollback")
    )
    run_cmd.add_argument("--target", help="target from runbook.toml (default: default_target)")
    run_cmd.add_argument(
        "-p",
        "--parameter",
        action="append",
        metavar="NAME=VALUE",
        help="notebook parameter for every runbook that has it (apply.NAME=VALUE for one)",
    )
    run_cmd.add_argument(
        "--confirm-production", action="store_true",
        help="required to change a production target (confirm_production=true for each runbook)",
    )  # fmt: skip
    change_flag(run_cmd)
    change_verb(sub)
    fleet_verb(sub)

    reports(sub)

    lint_cmd = sub.add_parser(
        "lint", help="review migrations for lock, data-loss and RLS risks (exit 1 on a fail)"
    )
    common(lint_cmd)
    lint_cmd.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="files to lint (default: the target's pending migrations with --target, "
        "else every migration in the folder)",
    )
    lint_cmd.add_argument(
        "--trace", action="store_true",
        help="with --target: apply the pending migrations to a scratch copy of the target and "
        "report the locks, rewrites and new objects each statement really causes",
    )  # fmt: skip
    lint_cmd.add_argument(
        "--trace-source", choices=("schema", "template"), default="schema",
        help="the copy --trace runs on: the schema alone (pg_dump --schema-only, the default), "
        "or CREATE DATABASE ... TEMPLATE (with the data; no other session may be connected)",
    )  # fmt: skip
    lint_cmd.add_argument(
        "--format", choices=LINT_FORMATS, default="text",
        help="text (default), json (same as --json), github (workflow annotations) or gitlab "
        "(Code Quality JSON); exit 1 on any fail in every format",
    )  # fmt: skip

    precheck_cmd = sub.add_parser("precheck", help="is the target healthy enough to migrate now?")
    common(precheck_cmd)
    precheck_cmd.add_argument(
        "--backup",
        action="store_true",
        help="take a verified backup first, so the backup check passes",
    )

    troubleshoot_cmd = sub.add_parser(
        "troubleshoot", help="what is stuck on the target, and the SQL to clear it (never run)"
    )
    common(troubleshoot_cmd)

    validate_cmd = sub.add_parser(
        "validate", help="after a migration: verify, integrity, RLS isolation, metrics, speed"
    )
    common(validate_cmd)
    validate_cmd.add_argument(
        "--baseline",
        metavar="RUN_ID|PATH",
        default="",
        help="compare the benchmark queries with an archived run's benchmark (a run id), a saved "
        "file (benchmark --save PATH), or by default the newest archived benchmark of the target",
    )
    validate_cmd.add_argument(
        "--no-baseline", action="store_true", help="skip the benchmark comparison"
    )

    benchmark_cmd = sub.add_parser(
        "benchmark", help="time the [[benchmark.queries]] of runbook.toml"
    )
    common(benchmark_cmd)
    benchmark_cmd.add_argument(
        "--runs", type=int, help="timed runs per query (default: [benchmark] runs)"
    )
    benchmark_cmd.add_argument("--save", metavar="PATH", help="write the result as JSON to PATH")

    backup_cmd = sub.add_parser("backup", help="pg_dump -Fd backup with a manifest, verified")
    common(backup_cmd)
    backup_cmd.add_argument(
        "--deep", action="store_true", help="also restore into a scratch database and compare"
    )
    backups_cmd = sub.add_parser("backups", help="list a target's backups and their verification")
    common(backups_cmd)

    rollback_cmd = sub.add_parser("rollback", help="undo a run: down scripts, restore, or PITR")
    common(rollback_cmd)
    rollback_cmd.add_argument(
        "--strategy", required=True, choices=("schema_only", "full_restore", "point_in_time")
    )
    rollback_cmd.add_argument(
        "--run", metavar="RUN_ID",
        help="the run to undo (default: the latest apply run that still has a migration applied)",
    )  # fmt: skip
    rollback_cmd.add_argument("--to", metavar="VERSION", help="schema_only: undo all above it")
    rollback_cmd.add_argument("--to-time", metavar="ISO", help="point_in_time: recover to it")
    rollback_cmd.add_argument(
        "--confirm-production", action="store_true", help="required for production targets"
    )

    rehearse_cmd = sub.add_parser(
        "rehearse", help="apply, roll back, apply again on a scratch copy of the target"
    )
    common(rehearse_cmd)
    rehearse_cmd.add_argument(
        "--source", choices=("auto", "template", "backup"), default="auto",
        help="copy with CREATE DATABASE ... TEMPLATE, or restore the latest backup",
    )  # fmt: skip

    pitr_cmd = sub.add_parser("pitr", help="point-in-time recovery set-up (WAL archive)")
    pitr_cmd.add_argument("action", choices=("enable",))
    common(pitr_cmd)
    backfill_verb(sub)
    return parser


def expand_contract_options(cmd: argparse.ArgumentParser) -> None:
    """`new NAME --expand-contract ...`: a column change as expand, backfill and contract files."""
    group = cmd.add_argument_group(
        "expand/contract", "a column change the application can outlive (see README)"
    )
    group.add_argument(
        "--expand-contract", metavar="KIND", choices=("rename", "type", "not-null"),
        help="write a column rename, type change or NOT NULL as expand/contract migrations",
    )  # fmt: skip
    group.add_argument("--table", metavar="SCHEMA.TABLE", help="the table whose column changes")
    group.add_argument("--column", metavar="COLUMN", help="the column as it is now")
    group.add_argument("--to", metavar="NEW", help="the new column's name (rename; type: C_new)")
    group.add_argument(
        "--type", metavar="TYPE", help="the new type (type); the column's type (rename, no target)"
    )
    group.add_argument(
        "--fill", metavar="EXPR", help="not-null: the SQL value rows holding NULL get"
    )
    group.add_argument(
        "--key", metavar="COLUMN",
        help="the unique NOT NULL column the backfill walks (default: the primary key, or id)",
    )  # fmt: skip
    group.add_argument(
        "--phase", choices=("expand", "contract", "all"), default="expand",
        help="expand (default: new beside old, backfill, indexes), contract (drop the old, once "
        "nothing uses it), or all (both at once, for a rehearsal)",
    )  # fmt: skip
    group.add_argument(
        "--target",
        help="read the table and column from this target (only when given): they must exist, "
        "and indexes, constraints, grants and the default are copied",
    )


def backfill_verb(sub: Any) -> None:
    """`backfill pause|resume|status`: the operator's hold on batched data migrations."""
    cmd = sub.add_parser(
        "backfill", help="batched data migrations: pause, resume, status (how far each walk got)"
    )
    cmd.add_argument(
        "action", choices=("pause", "resume", "status"),
        help="pause: wait before the next batch; resume: go on; status: the pause and each walk",
    )  # fmt: skip
    cmd.add_argument("--reason", default="", help="why (pause): shown to whoever looks")
    common(cmd)


def change_flag(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--change", metavar="ID", default="",
        help="the change this run belongs to: checked against its pinned files, approvals and "
        "promotion evidence before anything runs",
    )  # fmt: skip


def change_verb(sub: Any) -> None:
    """`change open|update|approve|note|show|list`: the records of a change."""
    change_cmd = sub.add_parser(
        "change", help="changes: open (pin the migrations), update, approve, note, show, list"
    )
    actions = change_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    opened = actions.add_parser(
        "open", help="open a change pinning every migration file; prints its id alone"
    )
    opened.add_argument("--ticket", required=True, help="the ticket it answers, e.g. OPS-142")
    opened.add_argument("--reason", required=True, help="why, in one line")
    opened.add_argument(
        "--category", choices=("standard", "normal", "emergency"), default="normal",
        help="emergency skips approvals and promotion, and is overdue until approved afterwards",
    )  # fmt: skip
    opened.add_argument("--planned-start", default="", metavar="ISO", help="window start (UTC)")
    opened.add_argument("--planned-end", default="", metavar="ISO", help="window end (UTC)")
    as_name(opened, "the author (default: THORBIS_OPERATOR or the OS user)")
    update = actions.add_parser(
        "update", help="re-pin the change to the files as they are now (voids its approvals)"
    )
    update.add_argument("change_id", metavar="ID")
    update.add_argument("--reason", required=True, help="why it was re-pinned, in one line")
    as_name(update, "who re-pins (default: THORBIS_OPERATOR or the OS user)")
    approve = actions.add_parser("approve", help="approve the change's current pinned set")
    approve.add_argument("change_id", metavar="ID")
    as_name(approve, "the approver (required)", required=True)
    approve.add_argument("--comment", default="", help="one line for the record")
    note = actions.add_parser("note", help="add a note (an amendment refers to an earlier line)")
    note.add_argument("change_id", metavar="ID")
    note.add_argument("--text", required=True, help="the note, in one line")
    note.add_argument(
        "--refers-to", type=int, metavar="SEQ",
        help="the ledger line it amends (default: the change's opened line)",
    )  # fmt: skip
    as_name(note, "who writes it (default: THORBIS_OPERATOR or the OS user)")
    show = actions.add_parser(
        "show", help="state, runs, approvals, and what each target still lacks"
    )
    show.add_argument("change_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    listed = actions.add_parser("list", help="every change of the archive, newest first")
    listed.add_argument("--json", action="store_true", help="machine-readable output")


def fleet_verb(sub: Any) -> None:
    """`fleet list|run|status|dag NAME`: one change across the members of a [fleets.NAME]."""
    fleet_cmd = sub.add_parser(
        "fleet", help="fleets: list the members, run a change across them in waves, status"
    )
    actions = fleet_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    listed = actions.add_parser("list", help="the fleet's members, resolved, and their waves")
    listed.add_argument("name", metavar="NAME", help="a [fleets.NAME] of runbook.toml")
    listed.add_argument("--json", action="store_true", help="machine-readable output")
    run = actions.add_parser(
        "run", help="run the change's runbooks on every member not done yet, wave by wave"
    )
    run.add_argument("name", metavar="NAME", help="a [fleets.NAME] of runbook.toml")
    run.add_argument("--change", metavar="ID", required=True, help="the change to roll out")
    member_runs(
        run, runbooks="the fleet's runbooks, else precheck,apply,validate",
        production="required when a member is a production target",
    )  # fmt: skip
    run.add_argument(
        "--dry-run", action="store_true",
        help="show the waves and which members would run; run and record nothing",
    )  # fmt: skip
    status = actions.add_parser(
        "status", help="per member: done, failed or pending on the change, and how to resume"
    )
    status.add_argument("name", metavar="NAME", help="a [fleets.NAME] of runbook.toml")
    status.add_argument("--change", metavar="ID", required=True, help="the change rolled out")
    status.add_argument(
        "--runbooks", metavar="LIST", default="",
        help="the runbooks that make a member done (default: those of the latest fleet run)",
    )  # fmt: skip
    status.add_argument("--json", action="store_true", help="machine-readable output")
    dag = actions.add_parser(
        "dag", help="print the fleet's rollout as an Airflow 3 DAG (PapermillOperator, waves)"
    )
    dag.add_argument("name", metavar="NAME", help="a [fleets.NAME] of runbook.toml")
    member_runs(
        dag, runbooks="the fleet's runbooks",
        production="required when a member is a production target (checked when the DAG runs)",
    )  # fmt: skip
    dag.add_argument(
        "--for-another-machine", action="store_true",
        help="write the DAG although Airflow is not installed here",
    )  # fmt: skip


def member_runs(cmd: argparse.ArgumentParser, *, runbooks: str, production: str) -> None:
    """What `fleet run` and `fleet dag` run on each member: the runbooks, -p, the confirmation."""
    cmd.add_argument(
        "--runbooks", metavar="LIST", default="",
        help=f"comma-separated, in order (default: {runbooks})",
    )  # fmt: skip
    cmd.add_argument(
        "-p", "--parameter", action="append", metavar="NAME=VALUE",
        help="notebook parameter for every member's runbooks that have it (apply.NAME=VALUE)",
    )  # fmt: skip
    cmd.add_argument("--confirm-production", action="store_true", help=production)


def as_name(cmd: argparse.ArgumentParser, help_text: str, *, required: bool = False) -> None:
    cmd.add_argument("--as", dest="as_name", metavar="NAME", required=required, help=help_text)


def reports(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``reports verify | list | keygen | render``: the archive, its signatures and pages."""
    reports_cmd = sub.add_parser(
        "reports", help="the report archive: verify it, list runs, make a signing key, render pages"
    )
    action = reports_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = action.add_parser(
        "verify",
        help="check the ledger's chain, signatures and head, every file under reports/ and the "
        "pages; with --against, the runs the target database recorded (exit 1 on a failure)",
    )
    verify.add_argument(
        "--against", metavar="TARGET",
        help="also compare with the ledger lines recorded in this target's runbook.runs",
    )  # fmt: skip
    verify.add_argument(
        "--archive", metavar="DIR",
        help="the archive folder (default: [reports] dir); with --public-key no runbook.toml "
        "is read, so an auditor needs only the folder and the key",
    )  # fmt: skip
    verify.add_argument(
        "--public-key", metavar="KEY|FILE",
        help="check signatures with this key (ed25519:... or a file holding it) instead of "
        "the one pinned in runbook.toml",
    )  # fmt: skip
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    listing = action.add_parser("list", help="every archived run, newest first")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    keygen = action.add_parser(
        "keygen",
        help="write a new Ed25519 signing key (mode 0600, never over a file) and print the "
        "public_key line to pin in runbook.toml",
    )
    keygen.add_argument("--out", metavar="PATH", required=True, help="the private key's file")
    action.add_parser("render", help="write index.html and every change page again from the ledger")


def common(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--target", help="target from runbook.toml (default: default_target, or THORBIS_TARGET)"
    )
    cmd.add_argument("--json", action="store_true", help="machine-readable output")
