"""Changes against real targets: two databases of the session's server stand in for staging and
production (production = true, promote_from = "staging", one approval, separation of duties).

The real CLI runs in-process (cli.main); the runbooks run with papermill. Staging's evidence
(precheck, apply, validate under the change) is made once per module and the project copied
for each test that starts from it; production is a fresh database in every test, and every
refusal is checked to leave it without a runbook schema and the archive without a new file.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import papermill
import psycopg2
import pytest

from tests.conftest import database, write_migrations
from thorbis_runbook import cli

REPO = Path(__file__).resolve().parents[2]
FILES = {
    "20250101000000_create_work_orders.sql": "CREATE TABLE work_orders (id int PRIMARY KEY, status text);",
    "20250101000000_create_work_orders.down.sql": "DROP TABLE work_orders;",
    "20250101000000_create_work_orders.verify.sql": "SELECT 'work_orders'::regclass;",
    "20250102000000_index_status.sql": "CREATE INDEX work_orders_status_ix ON work_orders (status);",
    "20250102000000_index_status.down.sql": "DROP INDEX work_orders_status_ix;",
}
INDEX_FILE = "20250102000000_index_status.sql"
CONFIG = f"""[runbook]
migrations_dir = "migrations"
default_target = "staging"

[targets.staging]
dsn_env = "THORBIS_STAGING_DSN"
lock_wait = "2s"
backup_before_apply = "none"

[targets.production]
dsn_env = "THORBIS_PRODUCTION_DSN"
production = true
promote_from = "staging"
approvals_required = 1
separation_of_duties = true
lock_wait = "2s"
backup_before_apply = "schema"

[notebooks]
dir = "{REPO / "notebooks"}"
"""
PRODUCTION = ("--target", "production", "--confirm-production")


@dataclass
class Project:
    """A project folder, its change, and the CLI run in-process as a named operator."""

    root: Path
    change_id: str
    production_dsn: str
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def cli(self, *args: str, operator: str = "alice") -> tuple[int, str, str]:
        self.monkeypatch.setenv("THORBIS_OPERATOR", operator)
        self.capsys.readouterr()
        code = cli.main(["--config", str(self.root / "runbook.toml"), *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def archive(self) -> dict[str, bytes]:
        """Every archived file but the derived pages, with its content."""
        return {
            str(p.relative_to(self.reports)): p.read_bytes()
            for p in sorted(self.reports.rglob("*"))
            if p.is_file() and p.name != "index.html" and not p.name.endswith(".lock")
        }

    def production_untouched(self) -> bool:
        connection = psycopg2.connect(self.production_dsn)
        try:
            with connection.cursor() as cur:
                cur.execute("SELECT to_regnamespace('runbook'), to_regclass('public.work_orders')")
                return cur.fetchone() == (None, None)
        finally:
            connection.close()

    def show(self) -> dict[str, object]:
        code, out, err = self.cli("change", "show", self.change_id, "--json")
        assert code == 0, err
        return dict(json.loads(out))

    def refused(
        self, *args: str, operator: str = "bob", production_empty: bool = True
    ) -> tuple[str, str]:
        """Run a command that must be refused; return its error and hint lines.

        Nothing may be archived or recorded, and production (with ``production_empty``) must
        still have no runbook schema and no migrated table.
        """
        before = self.archive()
        code, out, err = self.cli(*args, operator=operator)
        assert code == 2, out + err
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        error = next(line for line in lines if line.startswith("error: "))
        hint = next(line for line in lines if line.startswith("hint: "))
        assert self.archive() == before, "a refused command archived or recorded something"
        assert self.production_untouched() is production_empty
        return error, hint


def _state(project: Project, target: str) -> dict[str, object]:
    targets = project.show()["targets"]
    assert isinstance(targets, list)
    return dict(next(t for t in targets if t["target"] == target))


def _open(root: Path, env: pytest.MonkeyPatch, *extra: str) -> str:
    env.setenv("THORBIS_OPERATOR", "alice")
    args = ["change", "open", "--ticket", "OPS-142", "--reason", "index work orders by status"]
    assert cli.main(["--config", str(root / "runbook.toml"), *args, *extra]) == 0
    folders = sorted((root / "reports" / "changes").iterdir())
    return folders[-1].name


@pytest.fixture(scope="module")
def staged(pg_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:  # type: ignore[no-untyped-def]
    """A project whose change passed staging (precheck, apply, validate by alice), once."""
    root = tmp_path_factory.mktemp("staged")
    write_migrations(root / "migrations", FILES)
    (root / "runbook.toml").write_text(CONFIG)
    with database(pg_server, prefix="staging") as staging, pytest.MonkeyPatch.context() as env:
        env.setenv("THORBIS_STAGING_DSN", staging)
        change_id = _open(root, env)
        run = ["run", "precheck", "apply", "validate", "--target", "staging", "--change", change_id]
        assert cli.main(["--config", str(root / "runbook.toml"), *run]) == 0
        yield root, change_id, staging


def _project(
    source: Path, change_id: str, staging: str, tmp_path: Path, pg_server, capsys, monkeypatch
) -> Iterator[Project]:  # type: ignore[no-untyped-def]
    root = tmp_path / "project"
    shutil.copytree(source, root)
    monkeypatch.setenv("THORBIS_STAGING_DSN", staging)
    with database(pg_server, prefix="production") as production:
        monkeypatch.setenv("THORBIS_PRODUCTION_DSN", production)
        yield Project(root, change_id, production, capsys, monkeypatch)


@pytest.fixture
def after_staging(staged, tmp_path: Path, pg_server, capsys, monkeypatch) -> Iterator[Project]:  # type: ignore[no-untyped-def]
    """A copy of the staged project, with a fresh production database."""
    root, change_id, staging = staged
    yield from _project(root, change_id, staging, tmp_path, pg_server, capsys, monkeypatch)


@pytest.fixture
def opened(tmp_path: Path, pg_server, capsys, monkeypatch) -> Iterator[Project]:  # type: ignore[no-untyped-def]
    """A project with a change just opened by alice: no runs, no approvals."""
    source = tmp_path / "source"
    write_migrations(source / "migrations", FILES)
    (source / "runbook.toml").write_text(CONFIG)
    change_id = _open(source, monkeypatch)
    with database(pg_server, prefix="staging") as staging:
        yield from _project(source, change_id, staging, tmp_path, pg_server, capsys, monkeypatch)


# -- the happy path ---------------------------------------------------------------------------
def test_open_stage_approve_and_promote_to_production(after_staging: Project) -> None:
    project, change_id = after_staging, after_staging.change_id
    staging = [line for line in _ledger(project) if line.get("target") == "staging"]
    assert [(r["runbook"], r["status"], r["change_id"]) for r in staging] == [
        ("precheck", "succeeded", change_id), ("apply", "succeeded", change_id),
        ("validate", "succeeded", change_id),
    ]  # fmt: skip
    assert _state(project, "production")["state"] == "blocked"
    code, out, err = project.cli(
        "change", "approve", change_id, "--as", "carol", "--comment", "CAB 12", operator="carol"
    )
    assert code == 0, err
    assert "carol approved pin 1" in out
    assert _state(project, "production") == {
        "target": "production",
        "state": "ready",
        "missing": [],
    }
    code, out, err = project.cli(
        "run", "precheck", "apply", "validate", *PRODUCTION, "--change", change_id, operator="bob"
    )
    assert code == 0, out + err
    production = [line for line in _ledger(project) if line.get("target") == "production"]
    pin = project.show()["pin"]
    assert [(r["runbook"], r["status"], r["pin"]) for r in production] == [
        ("precheck", "succeeded", pin), ("apply", "succeeded", pin), ("validate", "succeeded", pin)
    ]  # fmt: skip
    apply_run = project.reports / "production" / str(production[1]["run_id"])
    summary = json.loads((apply_run / "summary.json").read_text())
    assert (summary["change_id"], summary["pin"], summary["operator"]) == (change_id, pin, "bob")
    assert [m["this_run"] for m in summary["migrations"]] == ["applied", "applied"]
    shown = project.show()
    assert shown["state"] == "applied to staging, production"
    assert _state(project, "production")["state"] == "applied"
    assert project.cli("reports", "verify")[0] == 0


# -- refusals ---------------------------------------------------------------------------------
def test_production_without_approval_is_refused_before_the_precheck_runs(
    after_staging: Project,
) -> None:
    project, change_id = after_staging, after_staging.change_id
    error, hint = project.refused(
        "run", "precheck", "apply", "validate", *PRODUCTION, "--change", change_id
    )
    assert error == (
        f"error: change {change_id} has no approval for production (1 required, 0 given by "
        "someone other than the operator bob and the author alice)"
    )
    assert (
        hint
        == f"hint: thorbis-runbook change approve {change_id} --as NAME (someone other than bob and alice)"
    )
    error, _ = project.refused("apply", *PRODUCTION, "--change", change_id)
    assert "has no approval for production" in error


def test_an_approval_by_the_operator_does_not_count(after_staging: Project) -> None:
    project, change_id = after_staging, after_staging.change_id
    assert project.cli("change", "approve", change_id, "--as", "bob", operator="bob")[0] == 0
    error, hint = project.refused("run", "apply", *PRODUCTION, "--change", change_id)
    assert (
        "has no approval for production (1 required, 0 given by someone other than the operator bob"
        in error
    )
    assert f"change approve {change_id} --as NAME" in hint


def test_the_author_may_not_approve_and_nobody_approves_twice(opened: Project) -> None:
    project, change_id = opened, opened.change_id
    error, hint = project.refused("change", "approve", change_id, "--as", "Alice ")
    assert error == (
        f"error: Alice opened change {change_id} and may not approve it (target production "
        "has separation_of_duties)"
    )
    assert f"thorbis-runbook change approve {change_id} --as NAME" in hint
    assert project.cli("change", "approve", change_id, "--as", "carol")[0] == 0
    error, _ = project.refused("change", "approve", change_id, "--as", "CAROL")
    assert error == f"error: CAROL already approved pin 1 of change {change_id}"


def test_production_without_staging_evidence_is_refused(opened: Project) -> None:
    project, change_id = opened, opened.change_id
    assert project.cli("change", "approve", change_id, "--as", "carol")[0] == 0
    error, hint = project.refused(
        "run", "precheck", "apply", "validate", *PRODUCTION, "--change", change_id
    )
    assert error == (
        f"error: change {change_id} has no succeeded precheck, apply and validate on staging "
        "with its current pinned set (pin 1), which target production requires first"
    )
    assert (
        hint
        == f"hint: thorbis-runbook run precheck apply validate --target staging --change {change_id}"
    )


def test_staging_evidence_of_an_earlier_pin_does_not_count(after_staging: Project) -> None:
    project, change_id = after_staging, after_staging.change_id
    assert project.cli("change", "approve", change_id, "--as", "carol")[0] == 0
    write_migrations(
        project.root / "migrations",
        {"20250103000000_add_priority.sql": "ALTER TABLE work_orders ADD COLUMN priority int;"},
    )
    code, out, err = project.cli("change", "update", change_id, "--reason", "add priority")
    assert code == 0, err
    assert "20250103000000_add_priority.sql is not in the pinned set" in out
    error, _ = project.refused("run", "apply", *PRODUCTION, "--change", change_id)
    assert "has no approval for production" not in error, "promotion is named first"
    assert "with its current pinned set (pin 2)" in error
    assert "its runs there were of an earlier pin, voided by change update" in error
    shown = project.show()
    assert [a["valid"] for a in shown["approvals"]] == [False], "the re-pin voided carol's approval"


def test_a_file_edited_after_opening_is_refused_by_runs_and_approvals(
    after_staging: Project,
) -> None:
    project, change_id = after_staging, after_staging.change_id
    assert project.cli("change", "approve", change_id, "--as", "carol")[0] == 0
    (project.root / "migrations" / INDEX_FILE).write_text(
        "CREATE INDEX work_orders_status_ix ON work_orders (status, id);"
    )
    error, hint = project.refused("run", "apply", *PRODUCTION, "--change", change_id)
    assert re.fullmatch(
        rf"error: change {change_id}: migration {INDEX_FILE} differs from the pinned set "
        r"\(sha256 [0-9a-f]{12} pinned, [0-9a-f]{12} now\)",
        error,
    ), error
    assert f"thorbis-runbook change update {change_id} --reason TEXT" in hint
    error, _ = project.refused("run", "precheck", "--target", "staging", "--change", change_id)
    assert INDEX_FILE in error, "every runbook of a change checks the pin, precheck too"
    error, _ = project.refused("apply", "--target", "staging", "--change", change_id)
    assert INDEX_FILE in error
    error, hint = project.refused("change", "approve", change_id, "--as", "dave")
    assert error.startswith(f"error: change {change_id} cannot be approved: {INDEX_FILE} differs")
    assert f"change update {change_id}" in hint


def test_a_file_added_after_opening_is_refused(opened: Project) -> None:
    project, change_id = opened, opened.change_id
    write_migrations(project.root / "migrations", {"20250103000000_extra.sql": "SELECT 1;"})
    error, _ = project.refused("run", "precheck", "--target", "staging", "--change", change_id)
    assert error == (
        f"error: change {change_id}: migration 20250103000000_extra.sql is not in the pinned "
        "set (added after the change was pinned)"
    )
    error, _ = project.refused("run", "apply", *PRODUCTION, "--change", change_id)
    assert "20250103000000_extra.sql is not in the pinned set" in error


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("CHG-1", "change id 'CHG-1' is malformed: change ids look like CHG-20261202-1a2b3c"),
        ("../../etc", "the change id given is malformed (9 characters)"),
        ("CHG-20250101-abcdef", "there is no change CHG-20250101-abcdef in the archive"),
    ],
)
def test_malformed_and_unknown_change_ids_are_refused(
    opened: Project, given: str, message: str
) -> None:
    for command in (
        ("run", "precheck", "--target", "staging", "--change", given),
        ("apply", *PRODUCTION, "--change", given),
        ("change", "approve", given, "--as", "carol"),
        ("change", "show", given),
    ):
        error, hint = opened.refused(*command)
        assert message in error, command
        assert "thorbis-runbook change" in hint


def test_production_demands_a_change_but_a_dry_run_does_not(opened: Project) -> None:
    project = opened
    error, hint = project.refused("run", "apply", *PRODUCTION)
    assert error == (
        "error: target production changes only under a change (it requires 1 approval(s) and "
        "promotion from staging), and none was given"
    )
    assert "thorbis-runbook change open --ticket TICKET --reason TEXT" in hint
    error, _ = project.refused("apply", *PRODUCTION)
    assert "changes only under a change" in error
    code, out, err = project.cli("apply", "--target", "production", "--dry-run")
    assert code == 0, err
    assert "CREATE INDEX work_orders_status_ix" in out
    assert project.production_untouched()


def test_an_emergency_change_skips_approval_and_staging_and_is_overdue_until_approved(
    opened: Project,
) -> None:
    project = opened
    code, change_id, err = project.cli(
        "change", "open", "--ticket", "INC-7", "--reason", "hotfix", "--category", "emergency"
    )
    change_id = change_id.strip()
    assert code == 0 and re.fullmatch(r"CHG-\d{8}-[0-9a-f]{6}", change_id), err
    project.change_id = change_id
    code, out, err = project.cli("run", "apply", *PRODUCTION, "--change", change_id, operator="bob")
    assert code == 0, out + err
    assert f"emergency change {change_id} is overdue: approve it afterwards" in err
    assert not project.production_untouched()
    shown = project.show()
    assert shown["emergency"] is True
    assert shown["state"] == "emergency; overdue: approve afterwards; applied to production"
    assert _state(project, "production")["state"] == "overdue"
    error, _ = project.refused(
        "change", "approve", change_id, "--as", "bob", operator="bob", production_empty=False
    )
    assert error == (
        f"error: bob ran apply for change {change_id} on target production and may not approve "
        "it (separation_of_duties)"
    )
    assert project.cli("change", "approve", change_id, "--as", "carol")[0] == 0
    assert project.show()["state"] == "emergency; applied to production"
    assert _state(project, "production") == {
        "target": "production",
        "state": "applied",
        "missing": [],
    }
    (apply_line,) = [line for line in _ledger(project) if line.get("runbook") == "apply"]
    report = project.reports / "production" / str(apply_line["run_id"]) / "apply.audit.html"
    assert "EMERGENCY change: approvals and promotion are skipped" in report.read_text()


def test_rollback_is_never_held_up_by_approvals_or_promotion(opened: Project) -> None:
    """The way back needs no paperwork: a change never approved nor staged rolls production back."""
    project = opened
    code, hotfix, err = project.cli(
        "change", "open", "--ticket", "INC-8", "--reason", "hotfix", "--category", "emergency"
    )
    assert code == 0, err
    assert project.cli("run", "apply", *PRODUCTION, "--change", hotfix.strip())[0] == 0
    code, back_out, err = project.cli(
        "change", "open", "--ticket", "INC-8", "--reason", "back the hotfix out"
    )
    assert code == 0, err
    code, out, err = project.cli(
        "run", "rollback", *PRODUCTION, "--change", back_out.strip(), operator="dave"
    )
    assert code == 0, out + err
    assert project.production_untouched() is False, "the runbook schema stays, with the history"
    (line,) = [line for line in _ledger(project) if line.get("runbook") == "rollback"]
    assert (line["status"], line["change_id"], line["operator"]) == (
        "succeeded", back_out.strip(), "dave",
    )  # fmt: skip
    connection = psycopg2.connect(project.production_dsn)
    with connection.cursor() as cur:
        cur.execute("SELECT to_regclass('public.work_orders')")
        assert cur.fetchone() == (None,)
    connection.close()


def test_a_notebook_run_directly_is_gated_inside_its_apply_step(
    after_staging: Project, tmp_path: Path
) -> None:
    """papermill (or Airflow) running the apply runbook without the CLI meets the same rules."""
    project, change_id = after_staging, after_staging.change_id
    output = tmp_path / "apply.out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError, match="ChangeRefused"):
        papermill.execute_notebook(
            str(REPO / "notebooks" / "apply.ipynb"), str(output), kernel_name="python3",
            parameters={"target": "production", "change_id": change_id, "operator": "bob",
                        "confirm_production": True,
                        "config_path": str(project.root / "runbook.toml")},
            progress_bar=False,
        )  # fmt: skip
    assert f"change {change_id} has no approval for production" in output.read_text()
    assert project.production_untouched()


def test_a_note_refers_to_a_line_of_its_change(opened: Project) -> None:
    project, change_id = opened, opened.change_id
    code, out, err = project.cli("change", "note", change_id, "--text", "CAB moved to Friday")
    assert code == 0, err
    assert "refers to 1" in out
    error, _ = project.refused("change", "note", change_id, "--text", "x", "--refers-to", "99")
    assert "ledger line 99 is not a line of change" in error
    notes = project.show()["notes"]
    assert isinstance(notes, list) and notes[0]["text"] == "CAB moved to Friday"
    code, out, _ = project.cli("change", "list")
    assert change_id in out and "OPS-142" in out


def _ledger(project: Project) -> list[dict[str, object]]:
    lines = (project.reports / "ledger.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
