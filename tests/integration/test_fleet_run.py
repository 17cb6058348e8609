"""Fleets on the session's server, one database per member: waves in order, bounded parallelism,
a failure budget that stops the fleet, an unreachable member, a rollback, resume after a fix
and after SIGKILL, catalog members in notebook kernels, and the refusals before anything runs."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import pytest

from tests.conftest import database, run_sql, write_migrations
from thorbis_runbook import cli, embedded
from thorbis_runbook.fleet_page import fleet_pages

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = {
    "20250101000000_create_items.sql": "CREATE TABLE items (id int PRIMARY KEY);",
    "20250101000000_create_items.down.sql": "DROP TABLE items;",
    "20250102000000_create_notes.sql": "CREATE TABLE notes (id int PRIMARY KEY, body text);",
    "20250102000000_create_notes.down.sql": "DROP TABLE notes;",
}
UNREACHABLE = "postgresql://fleet@127.0.0.1:1/nowhere?connect_timeout=2"
TEMPLATE = '[targets.tenant]\ndsn_env = "TENANT_TEMPLATE_DSN"\nlock_wait = "2s"\nbackup_before_apply = "schema"\n'


class Project:
    """A project folder with a migrations folder, databases on the session's server and a CLI."""

    def __init__(self, root: Path, server: embedded.EmbeddedStatus, stack: ExitStack) -> None:
        self.root, self.server, self.stack = root, server, stack
        self.env = {**os.environ, "THORBIS_OPERATOR": "fleet-test", "PYTHONPATH": str(REPO)}
        self.dsns: dict[str, str] = {}
        write_migrations(root / "migrations", MIGRATIONS)

    def databases(self, *names: str) -> None:
        for name in names:
            self.dsns[name] = self.stack.enter_context(database(self.server, prefix=f"f{name}"))

    def config(self, body: str) -> None:
        (self.root / "runbook.toml").write_text(
            '[runbook]\nmigrations_dir = "migrations"\nstate_dir = "state"\n'
            f'[notebooks]\ndir = "{REPO / "notebooks"}"\n' + body
        )

    def cli(self, *args: str, **popen: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "thorbis_runbook.cli", *args], cwd=self.root, env=self.env,
            capture_output=True, text=True, timeout=600, **popen,
        )  # fmt: skip

    def open_change(self) -> str:
        opened = self.cli("change", "open", "--ticket", "OPS-7", "--reason", "fleet rollout")
        assert opened.returncode == 0, opened.stderr
        return opened.stdout.strip()

    def ledger(self) -> list[dict[str, Any]]:
        path = self.root / "reports" / "ledger.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def records(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.ledger() if e.get("kind") == "fleet" and e.get("event") == event]

    def applies(self, member: str) -> list[dict[str, Any]]:
        return [
            e for e in self.ledger()
            if e.get("kind", "run") == "run" and e.get("target") == member
            and e.get("runbook") == "apply"
        ]  # fmt: skip


@pytest.fixture
def project(tmp_path: Path, pg_server: embedded.EmbeddedStatus) -> Iterator[Project]:
    with ExitStack() as stack:
        yield Project(tmp_path, pg_server, stack)


def _query(dsn: str, text: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(text)
            return list(cur.fetchall())
    finally:
        conn.close()


def _tables(dsn: str) -> set[str]:
    rows = _query(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row[0] for row in rows}


def _apply_rows(dsn: str) -> list[tuple[Any, ...]]:
    return _query(
        dsn, "SELECT status FROM runbook.runs WHERE command = 'apply' ORDER BY started_at"
    )


def _span(record: dict[str, Any]) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(record["started"]), datetime.fromisoformat(record["finished"])


def _most_at_once(records: Sequence[dict[str, Any]]) -> int:
    """The largest number of members whose runs overlapped in time."""
    edges = sorted(
        [(start, 1) for start, _ in map(_span, records)]
        + [(end, -1) for _, end in map(_span, records)]
    )
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


CATALOG_FLEET = """
[targets.catalog]
dsn_env = "CATALOG_DSN"
[fleets.tenants]
catalog = { target = "catalog", sql = "SELECT name, dsn_env FROM tenants ORDER BY position;" }
template = "tenant"
runbooks = ["apply"]
[[fleets.tenants.waves]]
name = "canary"
size = 1
[[fleets.tenants.waves]]
name = "wide"
size = 3
parallel = 2
failure_budget = 1
[[fleets.tenants.waves]]
name = "narrow"
size = 2
parallel = 2
on_failure = "rollback"
[[fleets.tenants.waves]]
name = "rest"
"""


def test_waves_budget_rollback_and_resume_across_a_catalog_fleet(project: Project) -> None:
    project.databases("catalog", "a", "c", "d", "e", "f", "g", "b")
    run_sql(project.dsns["catalog"], (
        "CREATE TABLE tenants (position int, name text, dsn_env text); INSERT INTO tenants VALUES "
        + ", ".join(f"({n}, '{m}', 'FLEET_{m.upper()}_DSN')" for n, m in enumerate("abcdefg"))
    ))  # fmt: skip
    project.config(TEMPLATE + CATALOG_FLEET)
    project.env.update({f"FLEET_{m.upper()}_DSN": project.dsns[m] for m in "acdefg"})
    project.env.update(CATALOG_DSN=project.dsns["catalog"], FLEET_B_DSN=UNREACHABLE)
    run_sql(project.dsns["e"], "CREATE TABLE notes (id int)")  # its second migration fails
    change = project.open_change()

    first = project.cli("fleet", "run", "tenants", "--change", change)

    assert first.returncode == 1, first.stdout + first.stderr
    assert "budget exceeded" in first.stdout
    resume = f"resume: thorbis-runbook fleet run tenants --change {change} --runbooks apply"
    assert resume in first.stdout
    members = {r["member"]: r for r in project.records("member")}
    outcome = {name: (r["status"], r["rolled_back"]) for name, r in members.items()}
    assert outcome == {
        "tenants.a": ("succeeded", False), "tenants.b": ("failed", False),
        "tenants.c": ("succeeded", False), "tenants.d": ("succeeded", False),
        "tenants.e": ("failed", True), "tenants.f": ("succeeded", False),
    }  # fmt: skip
    assert "cannot connect" in members["tenants.b"]["error"]
    assert "notes" in members["tenants.e"]["error"]
    assert project.applies("tenants.g") == []  # the wave after the budget never started
    # Waves in order: each starts after every member of the one before has finished.
    by_wave = [[members[f"tenants.{m}"] for m in wave] for wave in ("a", "bcd", "ef")]
    for before, after in itertools.pairwise(by_wave):
        assert max(_span(r)[1] for r in before) <= min(_span(r)[0] for r in after)
    assert _most_at_once(list(members.values())) <= 2
    # The rollback undid e's first migration; its own table stayed.
    assert _tables(project.dsns["e"]) == {"notes"}
    assert _tables(project.dsns["a"]) == {"items", "notes"}
    budget = project.records("budget exceeded")
    assert [(r["wave"], r["failed"], r["allowed"]) for r in budget] == [("narrow", 1, 0)]
    page = fleet_pages(project.root / "reports", project.ledger())[f"fleets/tenants/{change}.html"]
    assert "cannot connect" in page and resume.removeprefix("resume: ") in page
    links = re.findall(r"href='\.\./\.\./([^']+\.audit\.html)'", page)
    assert len(set(links)) == 7 and all(
        (project.root / "reports" / link).is_file() for link in links
    )

    status = project.cli("fleet", "status", "tenants", "--change", change, "--json")
    states = {m["member"]: m["state"] for m in json.loads(status.stdout)["members"]}
    assert states == {
        "tenants.a": "done", "tenants.b": "failed", "tenants.c": "done", "tenants.d": "done",
        "tenants.e": "rolled back", "tenants.f": "done", "tenants.g": "pending",
    }  # fmt: skip
    assert status.returncode == 1

    run_sql(project.dsns["e"], "DROP TABLE notes")
    project.env["FLEET_B_DSN"] = project.dsns["b"]
    second = project.cli("fleet", "run", "tenants", "--change", change)

    assert second.returncode == 0, second.stdout + second.stderr
    assert "succeeded: 4 done before, 3 succeeded" in second.stdout
    for member in "abcdefg":
        succeeded = [r for r in project.applies(f"tenants.{member}") if r["status"] == "succeeded"]
        assert len(succeeded) == 1, member  # nothing was applied twice
        assert _tables(project.dsns[member]) == {"items", "notes"}
    for member in "acdf":
        assert _apply_rows(project.dsns[member]) == [("succeeded",)]
    verify = project.cli("reports", "verify")
    assert verify.returncode == 0, verify.stdout


def _marked(mark: str) -> list[int]:
    """Processes (pool processes, kernels) carrying the test's environment marker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0]
        except OSError:
            continue
        if mark.encode() in environ and state != "Z":
            found.append(int(pid))
    return found


def test_a_sigkilled_fleet_run_loses_nothing_and_resumes(project: Project) -> None:
    project.databases("m1", "m2", "m3")
    targets = "".join(
        f'[targets.{m}]\ndsn_env = "{m.upper()}_DSN"\nbackup_before_apply = "none"\n'
        for m in ("m1", "m2", "m3")
    )
    project.config(targets + '[fleets.shards]\nmembers = "m*"\nrunbooks = ["apply"]\n')
    project.env.update({f"{m.upper()}_DSN": dsn for m, dsn in project.dsns.items()})
    mark = f"THORBIS_FLEET_TEST_{os.getpid()}_{time.monotonic_ns()}"
    project.env[mark] = "1"
    change = project.open_change()
    command = [sys.executable, "-m", "thorbis_runbook.cli", "fleet", "run", "shards",
               "--change", change]  # fmt: skip
    runner = subprocess.Popen(
        command, cwd=project.root, env=project.env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not project.records("member") and time.monotonic() < deadline:
            assert runner.poll() is None, "the fleet run ended before it could be killed"
            time.sleep(0.2)
        os.kill(runner.pid, signal.SIGKILL)
    finally:
        runner.wait()
    # A pool process that was running a member finishes it, records it, and exits.
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _marked(mark) == []
    assert not [r for r in project.records("finished")]

    again = project.cli("fleet", "run", "shards", "--change", change)

    assert again.returncode == 0, again.stdout + again.stderr
    for member in ("m1", "m2", "m3"):
        assert [r["status"] for r in project.applies(member)] == ["succeeded"], member
        assert _apply_rows(project.dsns[member]) == [("succeeded",)]
    status = project.cli("fleet", "status", "shards", "--change", change)
    assert "3 done" in status.stdout


# -- refusals before anything runs (no papermill) --------------------------------------------
@pytest.fixture
def catalog(project: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    project.databases("catalog", "x")
    monkeypatch.setenv("CATALOG_DSN", project.dsns["catalog"])
    monkeypatch.setenv("THORBIS_OPERATOR", "fleet-test")
    monkeypatch.chdir(project.root)
    return project


def _fleet_config(project: Project, sql: str, extra: str = "") -> None:
    project.config(
        TEMPLATE + '[targets.catalog]\ndsn_env = "CATALOG_DSN"\n[fleets.tenants]\n'
        f'catalog = {{ target = "catalog", sql = "{sql}" }}\ntemplate = "tenant"\n{extra}'
    )


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ("SELECT name, dsn_env FROM nowhere", "failed on target catalog: relation \"nowhere\""),
        ("SELECT 'a' AS name, 'postgresql://u:Leaked-pw1@h/db' AS dsn_env",
         "its dsn_env looks like a DSN or a password"),
        ("SELECT 'a' AS name, 'ACME_DSN' AS dsn_env, 'x' AS password", "has the columns"),
        ("SELECT 'a' AS name, 'X' AS dsn_env UNION ALL SELECT 'a', 'Y'", "returns member tenants.a twice"),
        ("SELECT 'a/b' AS name, 'X' AS dsn_env", "cannot name a folder"),
        ("SELECT 'a' AS name, 's' AS service, 'd' AS database", "has the columns"),
    ],
)  # fmt: skip
def test_a_bad_catalog_is_refused_in_one_sentence(  # type: ignore[no-untyped-def]
    catalog: Project, rows: str, fragment: str, capsys
) -> None:
    _fleet_config(catalog, rows)
    assert cli.main(["fleet", "list", "tenants"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "hint: " in err
    assert "Leaked-pw1" not in err and "Traceback" not in err


def test_service_members_connect_through_pg_service_conf(  # type: ignore[no-untyped-def]
    catalog: Project, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    server = catalog.server
    name = urlsplit(catalog.dsns["x"]).path.lstrip("/")
    service_file = catalog.root / "pg_service.conf"
    service_file.write_text(f"[tenant_x]\nhost={server.socket_dir}\nuser=postgres\ndbname={name}\n")
    monkeypatch.setenv("PGSERVICEFILE", str(service_file))
    _fleet_config(catalog, "SELECT 'x' AS name, 'tenant_x' AS service")
    assert cli.main(["fleet", "list", "tenants", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["members"][0]["connection"] == "service tenant_x"
    assert cli.main(["status", "--target", "tenants.x", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["target"] == "tenants.x"


@pytest.mark.parametrize(
    ("extra", "env", "fragment"),
    [
        ('failure_budget = "150%"\n', {}, "more than the whole wave"),
        ("failure_budget = -1\n", {}, "negative failure budget"),
        ("", {"X_DSN": ""}, "environment variable X_DSN, which is not set"),
    ],
)
def test_a_fleet_run_is_refused_before_any_member_is_touched(  # type: ignore[no-untyped-def]
    catalog: Project, monkeypatch: pytest.MonkeyPatch, capsys, extra: str,
    env: dict[str, str], fragment: str,
) -> None:  # fmt: skip
    _fleet_config(catalog, "SELECT 'x' AS name, 'X_DSN' AS dsn_env", extra)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    change = catalog.open_change()
    before = catalog.ledger()
    assert cli.main(["fleet", "run", "tenants", "--change", change]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "hint: " in err
    assert catalog.ledger() == before  # nothing recorded, nothing run


def test_a_production_member_needs_the_confirmation_and_an_unknown_fleet_is_named(  # type: ignore[no-untyped-def]
    catalog: Project, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    catalog.config(
        '[targets.x]\ndsn_env = "X_DSN"\nproduction = true\napprovals_required = 0\n'
        '[fleets.prod]\nmembers = ["x"]\nruntime = 1\n'
    )
    assert cli.main(["fleet", "list", "prod"]) == 2
    assert "unknown key(s): runtime" in capsys.readouterr().err
    catalog.config(
        '[targets.x]\ndsn_env = "X_DSN"\nproduction = true\napprovals_required = 0\n'
        '[fleets.prod]\nmembers = ["x"]\n'
    )
    monkeypatch.setenv("X_DSN", catalog.dsns["x"])
    change = catalog.open_change()
    assert cli.main(["fleet", "run", "prod", "--change", change, "--runbooks", "apply"]) == 2
    assert "is marked production and the fleet run would apply" in capsys.readouterr().err
    assert cli.main(["fleet", "status", "nope", "--change", change]) == 2
    assert "unknown fleet 'nope' (runbook.toml defines: prod)" in capsys.readouterr().err
    assert cli.main(["fleet", "run", "prod", "--change", "CHG-1"]) == 2
    assert "malformed" in capsys.readouterr().err
