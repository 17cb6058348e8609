"""Statement splitting and transaction classification by PostgreSQL's own parser."""

from __future__ import annotations

import pytest

from thorbis_runbook.statements import (
    SqlSyntaxError,
    TransactionControlError,
    committing_procedures,
    split_statements,
)

TRICKY = """-- leading comment; with a semicolon
CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
    RETURN 'a;b';  -- semicolons inside a dollar-quoted body
END
$body$;
DO $do$ BEGIN RAISE NOTICE 'x;y'; END $do$;
CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;
/* nested /* comment ; */ still comment ; */
SELECT E'it\\'s; escaped', 'plain;', "odd;name" FROM (SELECT 1 AS "odd;name") AS t;
SELECT 'ünïcode;' AS last_without_semicolon
"""


def test_split_handles_quoting_bodies_comments_and_a_last_statement_without_semicolon() -> None:
    statements = split_statements(TRICKY)
    assert [s.kind for s in statements] == [
        "CreateFunctionStmt", "DoStmt", "CreateFunctionStmt", "SelectStmt", "SelectStmt",
    ]  # fmt: skip
    assert statements[0].line == 2
    assert statements[1].text == "DO $do$ BEGIN RAISE NOTICE 'x;y'; END $do$"
    assert statements[2].text.endswith("SELECT 2; END")
    assert statements[3].line == 10 and "E'it\\'s; escaped'" in statements[3].text
    assert statements[4].text == "SELECT 'ünïcode;' AS last_without_semicolon"
    assert all(s.no_transaction_reason is None for s in statements)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("CREATE INDEX CONCURRENTLY i ON t (x)", "CREATE INDEX CONCURRENTLY"),
        (
            "create unique index concurrently if not exists i on s.t (x)",
            "CREATE INDEX CONCURRENTLY",
        ),
        ("DROP INDEX CONCURRENTLY IF EXISTS i", "DROP INDEX CONCURRENTLY"),
        ("REINDEX INDEX CONCURRENTLY i", "REINDEX CONCURRENTLY"),
        ("REINDEX (CONCURRENTLY) TABLE t", "REINDEX CONCURRENTLY"),
        ("VACUUM (ANALYZE) t", "VACUUM"),
        ("ALTER TABLE p DETACH PARTITION c CONCURRENTLY", "DETACH PARTITION CONCURRENTLY"),
        ("ALTER SYSTEM SET work_mem = '8MB'", "ALTER SYSTEM"),
        ("CREATE DATABASE other", "CREATE/DROP DATABASE"),
        (
            "DO $$ BEGIN FOR i IN 1..3 LOOP IF i = 2 THEN COMMIT; END IF; END LOOP; END $$",
            "DO block that commits",
        ),
    ],
)
def test_statements_that_cannot_run_in_a_transaction_are_detected(sql: str, reason: str) -> None:
    assert split_statements(sql)[0].no_transaction_reason == reason


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX i ON t (x)",
        "ANALYZE t",
        "REINDEX INDEX i",
        "DO $$ BEGIN RAISE NOTICE 'commit'; END $$",
        "ALTER TYPE mood ADD VALUE 'meh'",
        "SAVEPOINT s1",
    ],
)
def test_ordinary_statements_stay_transactional(sql: str) -> None:
    assert split_statements(sql)[0].no_transaction_reason is None


def test_a_call_of_a_procedure_that_commits_runs_outside_a_transaction() -> None:
    definition = "CREATE PROCEDURE ops.batch() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$"
    procedures = committing_procedures(split_statements(definition))
    assert procedures == {"ops.batch"}
    assert split_statements("CALL ops.batch()", committing_procedures=procedures)[
        0
    ].no_transaction_reason
    assert (
        split_statements("CALL ops.other()", committing_procedures=procedures)[
            0
        ].no_transaction_reason
        is None
    )


@pytest.mark.parametrize(
    "sql", ["BEGIN", "START TRANSACTION", "COMMIT", "END", "ROLLBACK", "PREPARE TRANSACTION 'x'"]
)
def test_transaction_control_is_rejected(sql: str) -> None:
    with pytest.raises(TransactionControlError) as info:
        split_statements(f"SELECT 1;\n{sql};")
    assert info.value.statement.line == 2


def test_syntax_errors_carry_the_character_offset() -> None:
    text = "SELECT 'é';\nSELEC 2;"
    with pytest.raises(SqlSyntaxError) as info:
        split_statements(text)
    assert text[info.value.offset :].startswith("SELEC")


def test_concurrent_index_names_are_recorded_for_cleanup() -> None:
    statement = split_statements("CREATE INDEX CONCURRENTLY ix_t ON app.t (x)")[0]
    assert statement.index_name == "app.ix_t"
