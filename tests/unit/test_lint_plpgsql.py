"""The static SQL of DO blocks and function bodies is linted like top-level SQL, at its line."""

from __future__ import annotations

from pathlib import Path

from thorbis_runbook.lint import lint_findings

NAME = "20250301000001_body.sql"


def _findings(tmp_path: Path, sql: str) -> list[tuple[str, str, int]]:
    path = tmp_path / NAME
    path.write_text(sql, encoding="utf-8")
    for suffix in (".down.sql", ".verify.sql"):
        (tmp_path / NAME.replace(".sql", suffix)).write_text("SELECT 1;\n")
    return [(f.rule, f.status, f.line) for f in lint_findings([path])]


def test_ddl_in_a_do_block_is_found_at_its_line(tmp_path: Path) -> None:
    # One real history's DO block: a type change, an unbatched UPDATE, SET NOT NULL,
    # a primary key, a dropped column and a CHECK without NOT VALID.
    sql = (
        "-- comment\n"
        "DO $migrate$\n"
        "BEGIN\n"
        "  ALTER TABLE orders ALTER COLUMN total TYPE bigint;\n"
        "  UPDATE orders SET total = 0;\n"
        "  IF true THEN\n"
        "    ALTER TABLE orders ALTER COLUMN total SET NOT NULL;\n"
        "  END IF;\n"
        "  ALTER TABLE orders ADD PRIMARY KEY (id);\n"
        "  ALTER TABLE orders DROP COLUMN note;\n"
        "  ALTER TABLE orders ADD CONSTRAINT positive CHECK (total >= 0);\n"
        "END\n"
        "$migrate$;\n"
    )
    assert _findings(tmp_path, sql) == [
        ("alter-column-type", "fail", 4),
        ("update-delete-without-where", "fail", 5),
        ("set-not-null", "fail", 7),
        ("index-not-concurrent", "fail", 9),
        ("destructive-drop", "fail", 10),
        ("check-not-valid", "fail", 11),
    ]


def test_execute_of_a_constant_string_is_linted_and_format_is_not(tmp_path: Path) -> None:
    sql = (
        "DO $$\n"
        "BEGIN\n"
        "  EXECUTE 'CREATE INDEX orders_total_idx ON orders (total)';\n"
        "  EXECUTE format('CREATE INDEX %I ON orders (total)', 'other_idx');\n"
        "END $$;\n"
    )
    assert _findings(tmp_path, sql) == [("index-not-concurrent", "fail", 3)]


def test_procedure_and_sql_function_bodies_are_linted(tmp_path: Path) -> None:
    sql = (
        "CREATE PROCEDURE backfill() LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        "  UPDATE orders SET total = 0 WHERE total IS NULL;\n"
        "END $$;\n"
        "CREATE FUNCTION purge() RETURNS void LANGUAGE sql AS $$\n"
        "  DELETE FROM orders;\n"
        "$$;\n"
    )
    assert _findings(tmp_path, sql) == [
        ("unbatched-dml", "warn", 3),
        ("update-delete-without-where", "fail", 6),
    ]


def test_a_trigger_function_body_is_the_applications_work_not_the_migrations(
    tmp_path: Path,
) -> None:
    sql = (
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        "  UPDATE orders SET total = total WHERE id = NEW.order_id;\n"
        "  RETURN NEW;\n"
        "END $$;\n"
    )
    assert _findings(tmp_path, sql) == []


def test_tables_created_earlier_in_the_file_stay_new_inside_a_body(tmp_path: Path) -> None:
    sql = (
        "CREATE TABLE scratch (id int, v int);\n"
        "DO $$ BEGIN\n"
        "  CREATE INDEX scratch_v_idx ON scratch (v);\n"
        "  UPDATE scratch SET v = 1;\n"
        "END $$;\n"
    )
    assert _findings(tmp_path, sql) == []


def test_an_allow_comment_before_the_block_covers_the_statement_it_starts(
    tmp_path: Path,
) -> None:
    sql = (
        "-- runbook:allow alter-column-type orders has 12 rows, JIRA-9\n"
        "DO $$ BEGIN ALTER TABLE orders ALTER COLUMN total TYPE bigint; END $$;\n"
    )
    assert _findings(tmp_path, sql) == [("alter-column-type", "pass", 2)]


def test_a_body_that_does_not_parse_is_left_to_the_server(tmp_path: Path) -> None:
    sql = "DO $$ BEGIN this is not plpgsql; END $$;\n"
    assert _findings(tmp_path, sql) == []


def test_an_allow_comment_inside_a_body_covers_the_next_body_statement_only(
    tmp_path: Path,
) -> None:
    sql = (
        "DO $$\n"
        "BEGIN\n"
        "  -- runbook:allow alter-column-type orders has 12 rows, JIRA-9\n"
        "  ALTER TABLE orders ALTER COLUMN total TYPE bigint;\n"
        "  ALTER TABLE orders ALTER COLUMN qty TYPE bigint;\n"
        "END $$;\n"
    )
    assert _findings(tmp_path, sql) == [
        ("alter-column-type", "pass", 4),
        ("alter-column-type", "fail", 5),
    ]


def test_an_allow_comment_above_a_block_covers_the_whole_block(tmp_path: Path) -> None:
    sql = (
        "-- runbook:allow alter-column-type orders has 12 rows, JIRA-9\n"
        "DO $$\n"
        "BEGIN\n"
        "  ALTER TABLE orders ALTER COLUMN total TYPE bigint;\n"
        "  ALTER TABLE orders ALTER COLUMN qty TYPE bigint;\n"
        "END $$;\n"
    )
    assert _findings(tmp_path, sql) == [
        ("alter-column-type", "pass", 4),
        ("alter-column-type", "pass", 5),
    ]
