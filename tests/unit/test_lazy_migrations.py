"""Lazy parsing: discovery checksums every file, parses none; a file is parsed once, when needed.

Parses are counted by wrapping the real splitter (every parse of a migration goes through it),
so these tests exercise pglast itself, not a stand-in.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import write_migrations
from thorbis_runbook import migrations as migrations_module
from thorbis_runbook.errors import MigrationFileError
from thorbis_runbook.history import HistoryRow
from thorbis_runbook.migrations import Migration, discover, may_define_committing_procedure
from thorbis_runbook.plan import build_plan
from thorbis_runbook.statements import Statement

NOW = datetime(2025, 2, 1, tzinfo=UTC)
COMMITTING_PROCEDURE = """CREATE PROCEDURE ops.batch() LANGUAGE plpgsql AS $$
BEGIN
    UPDATE app.t SET x = x + 1;
    COMMIT;
END $$;
"""


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the parses of each text that migrations hand to the real statement splitter."""
    counted: Counter[str] = Counter()
    real = migrations_module.split_statements

    def counting(text: str, **options: object) -> list[Statement]:
        counted[text] += 1
        return real(text, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(migrations_module, "split_statements", counting)
    return counted


def _applied(migrations: Iterable[Migration]) -> list[HistoryRow]:
    return [
        HistoryRow(
            m.version, m.name, m.checksum, "applied", True, NOW, "ops", "r", 1, 1, None, None
        )
        for m in migrations
    ]


def test_discovery_parses_nothing_and_an_applied_file_is_never_parsed(
    tmp_path: Path, parses: Counter[str]
) -> None:
    folder = write_migrations(tmp_path / "m", {
        "20250101000000_old.sql": "CREATE TABEL typo (id int);",  # a broken applied file
        "20250102000000_ok.sql": "CREATE TABLE ok (id int);",
    })  # fmt: skip
    found = discover(folder)
    old, _ = found.migrations
    plan = build_plan(found, _applied(found))
    assert plan.pending == () and [r.state for r in plan.rows] == ["applied", "applied"]
    assert parses == Counter(), "neither discovery nor planning parses an applied file"
    with pytest.raises(MigrationFileError, match=r"20250101000000_old\.sql does not parse"):
        _ = old.statements


def test_each_file_is_parsed_once_however_often_it_is_asked(
    tmp_path: Path, parses: Counter[str]
) -> None:
    folder = write_migrations(tmp_path / "m", {
        "20250101000000_a.sql": "CREATE TABLE a (id int);",
        "20250102000000_b.sql": "CREATE INDEX CONCURRENTLY ix ON a (id);",
        "20250102000000_b.verify.sql": "SELECT 1;",
    })  # fmt: skip
    found = discover(folder)
    plan = build_plan(found, [])
    a, b = plan.pending
    for _ in range(3):
        plan.check_files()
        assert a.transactional and not b.transactional and len(b.statements) == 1
    assert b.no_transaction_reason == "CREATE INDEX CONCURRENTLY"
    assert parses == Counter({a.sql: 1, b.sql: 1, "SELECT 1;": 1})  # the verify script too
    assert b.statements[0].node == {}, "a migration keeps no parse tree"
    assert b.statements[0].index_name == "ix"


def test_a_call_of_a_committing_procedure_from_an_applied_unparsed_file(
    tmp_path: Path, parses: Counter[str]
) -> None:
    folder = write_migrations(tmp_path / "m", {
        "20250101000000_procedure.sql": COMMITTING_PROCEDURE,
        "20250102000000_mentions.sql": "-- a procedure, no transaction words\nSELECT 1;",
        "20250103000000_plain.sql": "CREATE TABLE plain (id int);",
        "20250104000000_call.sql": "CALL ops.batch();",
        "20250105000000_other.sql": "CALL ops.other();",
    })  # fmt: skip
    found = discover(folder)
    definer, mentions, plain, call, other = found.migrations
    plan = build_plan(found, _applied([definer, mentions, plain]))
    assert plan.pending == (call, other)
    assert call.no_transaction_reason == "CALL of a procedure that commits"
    assert other.transactional
    # The defining file was parsed (once) to find the procedure; the others never were.
    assert parses == Counter({definer.sql: 1, call.sql: 1, other.sql: 1})


def test_a_procedure_defined_after_the_call_does_not_count(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "20250101000000_call.sql": "CALL ops.batch();",
        "20250102000000_procedure.sql": COMMITTING_PROCEDURE,
    })  # fmt: skip
    call, _ = discover(folder).migrations
    assert call.transactional


@pytest.mark.parametrize(
    ("text", "candidate"),
    [
        (COMMITTING_PROCEDURE, True),
        ("create or replace procedure p() language plpgsql as $$ begin rollback; end $$", True),
        ("CREATE PROCEDURE p() LANGUAGE plpgsql AS E'BEGIN \\103OMMIT; END'", True),
        ("CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$", False),
        ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$", False),
        ("-- commit to nothing\nSELECT 1", False),
    ],
)
def test_the_procedure_prefilter_is_cheap_and_sound(text: str, candidate: bool) -> None:
    assert may_define_committing_procedure(text.encode()) is candidate


def test_a_bad_pending_file_is_caught_up_front_and_a_bad_applied_one_is_not(
    tmp_path: Path,
) -> None:
    folder = write_migrations(tmp_path / "m", {
        "20250101000000_ok.sql": "SELECT 1;",
        "20250102000000_tx.sql": "BEGIN;\nSELECT 2;\nCOMMIT;",
    })  # fmt: skip
    found = discover(folder)
    ok, tx = found.migrations
    with pytest.raises(MigrationFileError, match="holds transaction control"):
        build_plan(found, _applied([ok]))
    with pytest.raises(MigrationFileError, match="holds transaction control"):
        build_plan(found, [])
    assert build_plan(found, _applied([ok]), to_version=ok.version).pending == ()
    assert build_plan(found, _applied([ok, tx])).pending == ()


def test_a_file_edited_after_discovery_is_not_run_under_the_old_checksum(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"20250101000000_a.sql": "SELECT 1;"})
    (migration,) = discover(folder).migrations
    migration.path.write_text("SELECT 2;", encoding="utf-8")
    with pytest.raises(MigrationFileError, match="changed on disk after it was read"):
        _ = migration.sql


def test_importing_the_cli_does_not_import_pglast() -> None:
    code = "import sys, thorbis_runbook.cli; print('pglast' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", "pglast is imported on the first parse, not at start-up"
