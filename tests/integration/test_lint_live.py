"""lint against a real target: what the live catalog says about NOT NULL, and the exit codes."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from tests.conftest import apply_migrations, make_settings, write_migrations
from thorbis_runbook.cli import main
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.precheck import lint_command

Conn = psycopg2.extensions.connection

# The expand/contract NOT NULL path, one file each: by the time the third is pending, the
# CHECK is validated on the target, so its SET NOT NULL scans nothing.
ADD_CHECK = (
    'ALTER TABLE public.orders ADD CONSTRAINT "Total_nn" CHECK ("Total" IS NOT NULL) NOT VALID;\n'
)
VALIDATE = 'ALTER TABLE public.orders VALIDATE CONSTRAINT "Total_nn";\n'
SET_NOT_NULL = (
    'ALTER TABLE public.orders ALTER COLUMN "Total" SET NOT NULL;\n'
    "ALTER TABLE public.orders ALTER COLUMN note SET NOT NULL;\n"
    'ALTER TABLE public.orders DROP CONSTRAINT "Total_nn";\n'
)


def _files(folder: Path, names: list[str], texts: list[str]) -> Path:
    files = {}
    for name, text in zip(names, texts, strict=True):
        files[name] = text
        files[name.replace(".sql", ".down.sql")] = "SELECT 1;\n"
        files[name.replace(".sql", ".verify.sql")] = "SELECT 1;\n"
    return write_migrations(folder, files)


def test_set_not_null_after_a_validated_check_on_the_target_is_quiet(
    tmp_path: Path, conn: Conn, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with conn.cursor() as cur:
        cur.execute('CREATE TABLE public.orders (id int PRIMARY KEY, "Total" int, note text)')
        cur.execute("INSERT INTO public.orders SELECT g, g, 'x' FROM generate_series(1, 50) g")
    names = [f"2025030100000{n}_step.sql" for n in (1, 2, 3)]
    folder = _files(tmp_path / "migrations", names, [ADD_CHECK, VALIDATE, SET_NOT_NULL])
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)
    settings = make_settings(tmp_path, folder)
    apply_migrations(pg_database, folder, to_version="20250301000002")

    report = lint_command(settings, endpoint=resolve(settings, "test"))
    findings = {c.name: c.status for c in report if c.status != "pass"}
    # "Total" (quoted, mixed case) is covered by its validated CHECK; note is not.
    assert findings == {f"set-not-null {names[2]}:2": "warn"}, findings


def test_cli_exit_codes_with_and_without_a_target(
    tmp_path: Path,
    conn: Conn,
    pg_database: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.orders (id int PRIMARY KEY, total int)")
        cur.execute("INSERT INTO public.orders SELECT g, g FROM generate_series(1, 20) g")
    folder = _files(
        tmp_path / "migrations",
        ["20250301000001_index.sql"],
        ["CREATE INDEX orders_total_idx ON public.orders (total);\n"],
    )
    monkeypatch.setenv("THORBIS_TEST_DSN", pg_database)
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "test"\n'
        '[targets.test]\ndsn_env = "THORBIS_TEST_DSN"\n'
    )
    # Without a target nothing says the table is small: a CI gate must stop it.
    assert main(["--config", str(config), "lint", "--format", "github"]) == 1
    assert "::error file=" in capsys.readouterr().out
    # With the target, 20 rows: a warning, exit 0.
    assert main(["--config", str(config), "lint", "--target", "test", "--format", "github"]) == 0
    out = capsys.readouterr().out
    assert "::warning file=" in out and "title=index-not-concurrent" in out
