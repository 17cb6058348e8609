"""A corpus of malformed inputs, each run through the real command line against a real database.

Every case is the files and configuration it needs, the command, the exit code it must end
with, a pattern for its first `error:` line (or, for a verb that reports failed checks, its
first `fail` row), and afterwards: no traceback anywhere, nothing of a file the migrations
folder links to outside it, and a database still empty (no runbook schema, no table).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psycopg2
import pytest

REPO = Path(__file__).resolve().parents[2]
GOOD = {
    "migrations/20250101000000_create_items.sql": "CREATE TABLE items (id int PRIMARY KEY);\n",
    "migrations/20250101000000_create_items.down.sql": "DROP TABLE items;\n",
    "migrations/20250101000000_create_items.verify.sql": "SELECT 1;\n",
}
RUNBOOK = 'migrations_dir = "migrations"\ndefault_target = "test"\n'
TARGETS = """
[targets.test]
dsn_env = "THORBIS_TEST_DSN"
lock_wait = "1s"
[targets.prod]
dsn_env = "THORBIS_TEST_DSN"
production = true
[notebooks]
dir = "{notebooks}"
[reports]
dir = {reports}
"""
OUTSIDE_TEXT = "SELECT 'text-of-a-file-outside-the-folder';\n"
M = "migrations/20250102000000_"  # the folder and version of a second migration


class Folder:
    """A folder where a file would be."""


class Dangling:
    """A symlink to nothing."""


class OutsideLink:
    """A symlink to a file outside the migrations folder (its text must never be shown)."""


Content = str | bytes | Folder | Dangling | OutsideLink
# Where the pattern looks: the first `error:` line (stderr), the first failed check row
# (stdout, for lint and reports verify), or the first `WARNING:` line of a run that goes on.
Line = Literal["error", "fail", "warning"]


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    code: int
    pattern: str
    files: dict[str, Content] = field(default_factory=dict)
    runbook: str = RUNBOOK  # the body of [runbook]
    extra: str = ""  # more runbook.toml
    env: dict[str, str] = field(default_factory=dict)
    line: Line = "error"
    reports: str = '"reports"'  # [reports] dir, as TOML


CASES = [
    # -- runbook.toml ----------------------------------------------------------------------
    Case("toml-syntax", ("status",), 2, r"runbook\.toml is not valid TOML", extra="[targets.x\n"),
    Case("migrations-dir-number", ("apply",), 2, r"\[runbook\] migrations_dir = 7 is not a name",
         runbook="migrations_dir = 7\ndefault_target = 'test'\n"),
    Case("state-dir-bool", ("status",), 2, r"\[runbook\] state_dir = True is not a name",
         runbook=RUNBOOK + "state_dir = true\n"),
    Case("default-target-number", ("status",), 2, r"default_target = 1 is not a name",
         runbook="default_target = 1\n"),
    Case("runbook-unknown-key", ("apply",), 2, r"\[runbook\] has unknown key\(s\): migration_dir",
         runbook=RUNBOOK + "migration_dir = 'elsewhere'\n"),
    Case("unknown-section", ("apply",), 2, r"runbook\.toml has unknown section\(s\): treshholds",
         extra="[treshholds]\nlong_query_warn = '1s'\n"),
    Case("target-database-number", ("apply",), 2, r"targets\.odd\.database = 5 is not a name",
         extra="[targets.odd]\ndatabase = 5\n"),
    Case("target-backup-dir-number", ("apply",), 2, r"targets\.odd\.backup_dir = 7 is not a name",
         extra="[targets.odd]\nbackup_dir = 7\n"),
    Case("target-name-traversal", ("apply",), 2,
         r"target name '\.\./\.\./evil' cannot name a folder: it contains '/'",
         extra='[targets."../../evil"]\ndsn_env = "THORBIS_TEST_DSN"\n'),
    Case("target-unknown-setting", ("apply",), 2, r"unknown setting\(s\): lock_timout",
         extra="[targets.odd]\nlock_timout = '5s'\n"),
    Case("target-bad-duration", ("apply", "--target", "odd"), 2,
         r"targets\.odd\.lock_timeout = 'soon' is not a duration",
         extra="[targets.odd]\nlock_timeout = 'soon'\n"),
    Case("target-production-text", ("apply",), 2, r"production = 'yes' is not true or false",
         extra="[targets.odd]\nproduction = 'yes'\n"),
    Case("reports-dir-number", ("reports", "list"), 2, r"\[reports\] dir = 7 is not a name",
         reports="7"),
    # -- the command line ------------------------------------------------------------------
    Case("unknown-target", ("apply", "--target", "nope"), 2, r"unknown target 'nope'"),
    Case("unset-dsn-variable", ("apply",), 2, r"THORBIS_TEST_DSN, which is not set",
         env={"THORBIS_TEST_DSN": ""}),
    Case("lock-timeout-flag", ("apply", "--lock-timeout", "soon"), 2,
         r"--lock-timeout = 'soon' is not a duration"),
    Case("statement-timeout-negative", ("apply", "--statement-timeout=-1s"), 2,
         r"--statement-timeout = '-1s' is not a duration"),
    Case("production-unconfirmed", ("apply", "--target", "prod"), 2, r"marked production"),
    Case("to-unknown-version", ("apply", "--to", "20990101000000"), 2,
         r"--to 20990101000000 is not the version"),
    Case("rollback-bad-time", ("rollback", "--strategy", "point_in_time", "--to-time", "noonish"),
         2, r"--to-time 'noonish' is not an ISO 8601 time"),
    Case("baseline-traversal", ("validate", "--baseline", "../.."), 2,
         r"baseline '\.\./\.\.' is neither a saved benchmark file nor an archived run"),
    # -- migration files, as apply and status meet them ------------------------------------
    Case("name-off-convention", ("apply",), 2, r"'fix_bug\.sql' is off convention",
         files={"migrations/fix_bug.sql": "SELECT 1;"}),
    Case("version-not-a-time", ("apply",), 2, r"20251399000000, which is not a UTC timestamp",
         files={"migrations/20251399000000_x.sql": "SELECT 1;"}),
    Case("duplicate-version", ("apply",), 2, r"version 20250101000000 is used by both",
         files={"migrations/20250101000000_again.sql": "SELECT 1;"}),
    Case("does-not-parse", ("apply",), 2, r'does not parse: syntax error at or near "SELEC" \(line 2\)',
         files={M + "typo.sql": "SELECT 1;\nSELEC 2;"}),
    Case("transaction-control", ("apply",), 2, r"line 1 holds transaction control \(BEGIN\)",
         files={M + "tx.sql": "BEGIN;\nSELECT 1;\nCOMMIT;"}),
    Case("empty-file", ("apply",), 2, r"contains no SQL statement",
         files={M + "empty.sql": "-- to do\n"}),
    Case("not-utf8", ("apply",), 2, r"20250102000000_latin\.sql is not UTF-8 \(byte 0xe9 on line 1\)",
         files={M + "latin.sql": b"SELECT 'caf\xe9';"}),
    Case("nul-byte", ("apply",), 2, r"holds a NUL byte \(line 2\)",
         files={M + "nul.sql": "SELECT 1;\nSELECT 'a\x00b';\n"}),
    Case("utf16-file", ("apply",), 2, r"holds a NUL byte \(line 1\)",
         files={M + "wide.sql": "SELECT 1;".encode("utf-16-le")}),
    Case("copy-from-stdin", ("apply",), 2,
         r"line 1 streams data through the client \(COPY \.\.\. FROM STDIN\), but the runner sends SQL",
         files={M + "load.sql": "COPY items (id) FROM stdin;"}),
    Case("copy-from-stdin-with-data", ("apply",), 2,
         r"line 2 streams data through the client \(COPY \.\.\. FROM STDIN\)",
         files={M + "load.sql": "SELECT 1;\nCOPY items (id) FROM stdin;\n1\n2\n\\.\n"}),
    Case("folder-named-like-migration", ("apply",), 2,
         r"20250102000000_dir\.sql in the migrations folder is a folder, not a migration file",
         files={M + "dir.sql": Folder()}),
    Case("dangling-symlink", ("status",), 2, r"is a symlink to nothing \(dangling\)",
         files={M + "gone.sql": Dangling()}),
    Case("symlink-outside", ("apply",), 2, r"is a symlink to a file outside the migrations folder",
         files={M + "link.sql": OutsideLink()}),
    Case("missing-folder", ("apply",), 2, r"migrations folder .*gone does not exist",
         env={"THORBIS_MIGRATIONS_DIR": "gone"}),
    Case("root-folder", ("apply",), 2, r"migrations folder / is the file system root",
         env={"THORBIS_MIGRATIONS_DIR": "/"}),
    Case("verify-not-utf8", ("apply",), 2, r"20250101000000_create_items\.verify\.sql is not UTF-8",
         files={"migrations/20250101000000_create_items.verify.sql": b"SELECT '\xff';"}),
    # -- lint refuses what apply refuses ---------------------------------------------------
    Case("lint-not-utf8", ("lint",), 2, r"is not UTF-8", files={M + "latin.sql": b"SELECT '\xe9';"}),
    Case("lint-folder", ("lint",), 2, r"is a folder, not a migration file",
         files={M + "dir.sql": Folder()}),
    Case("lint-dangling-symlink", ("lint",), 2, r"is a symlink to nothing",
         files={M + "gone.sql": Dangling()}),
    Case("lint-symlink-outside", ("lint",), 2, r"symlink to a file outside the migrations folder",
         files={M + "link.sql": OutsideLink()}),
    Case("lint-missing-folder", ("lint",), 2, r"does not exist", env={"THORBIS_MIGRATIONS_DIR": "gone"}),
    Case("lint-root-folder", ("lint",), 2, r"is the file system root", env={"THORBIS_MIGRATIONS_DIR": "/"}),
    Case("lint-verify-not-utf8", ("lint",), 2, r"verify\.sql is not UTF-8",
         files={"migrations/20250101000000_create_items.verify.sql": b"SELECT '\xff';"}),
    Case("lint-empty-file", ("lint",), 1, r"^no-statement 20250102000000_empty\.sql:1 +fail",
         files={M + "empty.sql": ""}, line="fail"),
    Case("lint-duplicate-version", ("lint",), 1, r"^duplicate-version .* fail .*used by both",
         files={"migrations/20250101000000_again.sql": "SELECT 1;"}, line="fail"),
    Case("lint-orphan-down", ("lint",), 1, r"^orphan-sibling 20250102000000_gone\.down\.sql:1 +fail",
         files={M + "gone.down.sql": "DROP TABLE gone;"}, line="fail"),
    Case("lint-nul-byte", ("lint",), 1, r"^parse-error 20250102000000_nul\.sql:1 +fail .*NUL byte",
         files={M + "nul.sql": "SELECT '\x00';"}, line="fail"),
    Case("lint-copy-from-stdin", ("lint",), 1, r"^copy-from-client 20250102000000_load\.sql:1 +fail",
         files={M + "load.sql": "COPY items FROM stdin;"}, line="fail"),
    # -- new -------------------------------------------------------------------------------
    Case("new-after-the-last-second", ("new", "next_step"), 2,
         r"version is 99991231235959, the last second a version can name",
         files={"migrations/99991231235959_end.sql": "SELECT 1;"}),
    Case("new-bad-name", ("new", "Bad Name"), 2, r"migration name 'Bad Name' is not snake_case"),
    # -- run: parameters and run ids -------------------------------------------------------
    Case("run-bool-parameter", ("run", "apply", "-p", "dry_run=maybe"), 2,
         r"parameter dry_run must be true or false"),
    Case("run-int-parameter", ("run", "apply", "-p", "demo_businesses=many"), 2,
         r"parameter demo_businesses must be a whole number"),
    Case("run-unknown-parameter", ("run", "apply", "-p", "password=x"), 2,
         r"no runbook of apply has a parameter 'password'"),
    Case("run-id-traversal", ("run", "apply", "-p", "run_id=../../../escaped"), 2,
         r"parameter run_id cannot name a folder: it contains '/'"),
    Case("run-id-dot-dot", ("run", "apply", "-p", "run_id=.."), 2,
         r"parameter run_id cannot name a folder: it starts with '\.'"),
    Case("run-id-reused", ("run", "apply", "-p", "run_id=R1"), 2,
         r"run id R1 is already archived for target test", files={"reports/test/R1": Folder()}),
    Case("run-id-twice", ("run", "precheck", "apply", "-p", "run_id=R2"), 2,
         r"run id R2 was given to both precheck and apply"),
    # -- the archive -----------------------------------------------------------------------
    Case("verify-malformed-line", ("reports", "verify"), 1, r"^ledger line 1 +fail +not JSON",
         files={"reports/ledger.jsonl": "{not json\n"}, line="fail"),
    Case("verify-line-not-an-object", ("reports", "verify"), 1,
         r"^ledger line 1 +fail +not a JSON object", files={"reports/ledger.jsonl": "[1]\n"},
         line="fail"),
    Case("verify-file-outside", ("reports", "verify"), 1,
         r"^ledger line 1 +fail +file outside the archive .*'\.\./outside\.sql'",
         files={"reports/ledger.jsonl": '{"seq": 1, "prev": "' + "0" * 64 + '", '
                '"files": {"../outside.sql": "' + "0" * 64 + '"}}\n'}, line="fail"),
    Case("list-malformed-line", ("reports", "list"), 0,
         r"^WARNING: ledger\.jsonl line 1 skipped: not JSON", line="warning",
         files={"reports/ledger.jsonl": "{not json\n"}),
]  # fmt: skip


def _write(project: Path, case: Case) -> None:
    outside = project / "outside.sql"
    outside.write_text(OUTSIDE_TEXT)
    targets = TARGETS.format(notebooks=REPO / "notebooks", reports=case.reports)
    (project / "runbook.toml").write_text(f"[runbook]\n{case.runbook}{targets}{case.extra}")
    for name, content in {**GOOD, **case.files}.items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Folder):
            path.mkdir(parents=True)
        elif isinstance(content, Dangling):
            path.symlink_to(project / "nothing-here.sql")
        elif isinstance(content, OutsideLink):
            path.symlink_to(outside)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _run(project: Path, dsn: str, case: Case) -> subprocess.CompletedProcess[str]:
    """The CLI as a user starts it: from the project folder, with the code under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THORBIS_", "PG"))}
    env |= {"THORBIS_TEST_DSN": dsn, "THORBIS_OPERATOR": "corpus", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "thorbis_runbook.cli", *case.args],
        cwd=project, env={**env, **case.env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _first(result: subprocess.CompletedProcess[str], line: Line) -> str:
    if line == "fail":
        found = [row for row in result.stdout.splitlines() if re.search(r"\s fail\s", row)]
    elif line == "warning":
        found = [row for row in result.stderr.splitlines() if row.startswith("WARNING: ")]
    else:
        errors = [row for row in result.stderr.splitlines() if row.startswith("error: ")]
        found = [row.removeprefix("error: ") for row in errors]
    return found[0] if found else ""


def _database_is_untouched(dsn: str) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT to_regnamespace('runbook'), count(*) FROM pg_class AS c"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
            " AND c.relkind IN ('r', 'p', 'v', 'm', 'i', 'S')"
            " AND n.nspname NOT LIKE 'pg_temp%'"
        )
        assert cur.fetchone() == (None, 0), "the database was changed"
    conn.close()


def test_the_corpus_is_big_enough_and_ids_are_unique() -> None:
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_malformed_input_is_one_clear_sentence_and_changes_nothing(
    tmp_path: Path, pg_database: str, case: Case
) -> None:
    _write(tmp_path, case)
    result = _run(tmp_path, pg_database, case)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == case.code, output[-3000:]
    first = _first(result, case.line)
    assert re.search(case.pattern, first), f"first line: {first!r}\n{output[-3000:]}"
    if case.line == "error":
        assert re.search(r"^hint: \S", result.stderr, re.MULTILINE), "every error gives the fix"
    assert "text-of-a-file-outside-the-folder" not in output
    assert not (tmp_path.parent / "escaped").exists(), "a report was written outside reports/"
    _database_is_untouched(pg_database)
