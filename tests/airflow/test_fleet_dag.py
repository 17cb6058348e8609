"""The DAG `fleet dag` writes, run by Airflow 3 (`airflow dags test`) against three databases of
the session's server: it leaves the archive `fleet run` leaves, and triggering it again resumes.

These need the airflow extra (CI's .venv-airflow step installs it); without it they skip.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_fleet_run import Project, _query
from thorbis_runbook import embedded

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("airflow") is None
    or importlib.util.find_spec("airflow.providers.papermill") is None,
    reason="Airflow 3 is not installed: pip install -e '.[airflow]' (CI's .venv-airflow step)",
)
MEMBERS = ("m1", "m2", "m3")
DAG_ID = "thorbis_fleet_trio"


@pytest.fixture
def project(tmp_path: Path, pg_server: embedded.EmbeddedStatus) -> Iterator[Project]:
    with ExitStack() as stack:
        yield Project(tmp_path / "project", pg_server, stack)


def _airflow(project: Project, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **project.env, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }  # fmt: skip
    return subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), *args], cwd=home, env=env,
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def _runs(project: Project) -> list[dict[str, Any]]:
    return [e for e in project.ledger() if e.get("kind", "run") == "run"]


def test_the_dag_rolls_a_change_out_and_leaves_the_fleet_run_archive(
    project: Project, tmp_path: Path
) -> None:
    project.databases(*MEMBERS)
    targets = "".join(
        f'[targets.{m}]\ndsn_env = "{m.upper()}_DSN"\nbackup_before_apply = "none"\n'
        for m in MEMBERS
    )
    project.config(
        targets + '[fleets.trio]\nmembers = "m*"\nrunbooks = ["precheck", "apply"]\n'
        '[[fleets.trio.waves]]\nname = "canary"\nsize = 1\n'
        '[[fleets.trio.waves]]\nname = "rest"\nparallel = 2\n'
    )
    project.env.update({f"{m.upper()}_DSN": dsn for m, dsn in project.dsns.items()})
    change = project.open_change()
    written = project.cli("fleet", "dag", "trio")
    assert written.returncode == 0, written.stderr
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "trio.py").write_text(written.stdout)
    for step in (("db", "migrate"), ("dags", "reserialize")):
        done = _airflow(project, home, *step)
        assert done.returncode == 0, done.stdout + done.stderr

    first = _airflow(project, home, "dags", "test", DAG_ID, "-c", json.dumps({"change_id": change}))

    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    runs = _runs(project)
    assert sorted((r["target"], r["runbook"], r["status"]) for r in runs) == [
        (m, runbook, "succeeded") for m in MEMBERS for runbook in ("apply", "precheck")
    ]
    fleet_runs = {r["fleet_run"] for r in runs}
    assert len(fleet_runs) == 1 and all(r["change_id"] == change for r in runs)
    for run in runs:
        folder = project.root / "reports" / run["target"] / run["run_id"]
        summary = json.loads((folder / "summary.json").read_text())
        assert (summary["status"], summary["fleet_run"]) == ("succeeded", *fleet_runs)
        assert (folder / f"{run['runbook']}.html").is_file()
        notebook = (folder / f"{run['runbook']}.ipynb").read_text()
        assert "source_hidden" not in notebook  # report mode undone: the archive reads the same
    members = [e for e in project.records("member")]
    assert sorted((r["member"], r["wave"], r["status"]) for r in members) == [
        ("m1", "canary", "succeeded"),
        ("m2", "rest", "succeeded"),
        ("m3", "rest", "succeeded"),
    ]
    assert [r["outcome"] for r in project.records("finished")] == ["succeeded"]
    status = project.cli("fleet", "status", "trio", "--change", change, "--json")
    assert {m["state"] for m in json.loads(status.stdout)["members"]} == {"done"}
    verify = project.cli("reports", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    again = _airflow(project, home, "dags", "test", DAG_ID, "-c", json.dumps({"change_id": change}))

    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert len(_runs(project)) == len(runs)  # every member was done: nothing ran twice
    assert [r["outcome"] for r in project.records("finished")] == ["succeeded", "succeeded"]
    for member in MEMBERS:
        applied = _query(
            project.dsns[member],
            "SELECT version, count(*) FROM runbook.migration_history "
            "WHERE status = 'applied' GROUP BY version",
        )
        assert applied and all(count == 1 for _, count in applied), member
