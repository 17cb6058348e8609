"""The DAG `fleet dag` writes, read without Airflow: it parses, compiles, and holds the fleet."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from thorbis_runbook import cli
from thorbis_runbook.fleet_dag import DagSpec, _found, dag_source
from thorbis_runbook.waves import Share, Wave, WaveSpec

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _spec() -> DagSpec:
    waves = (
        Wave(WaveSpec("canary", Share(count=1)), ("t1",)),
        Wave(WaveSpec("rest", None, parallel=3, failure_budget=Share(count=1)), ("t2", "t'3")),
    )
    return DagSpec("tenants", Path("/srv/project/runbook.toml"), ("precheck", "apply"), waves)


def test_the_source_compiles_and_names_the_fleet_its_waves_and_tasks() -> None:
    source = dag_source(_spec())
    tree = ast.parse(source)
    compile(tree, "tenants.py", "exec")
    assigned = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    assert assigned["CONFIG"] == "/srv/project/runbook.toml"
    assert assigned["RUNBOOKS"] == ["precheck", "apply"]
    assert assigned["MEMBERS"] == ["t1", "t2", "t'3"]  # quoted safely, as a literal
    assert assigned["WAVES"] == [
        {"name": "canary", "members": ["t1"], "parallel": 1},
        {"name": "rest", "members": ["t2", "t'3"], "parallel": 3},
    ]
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert functions == {"start", "prepare", "archive", "gate", "finish"}
    assert "thorbis_fleet_tenants" in source and "expand_kwargs" in source
    assert "max_active_tis_per_dag" in source
    # The package is imported inside tasks only: the DAG parses on a scheduler without it.
    top_level = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert all(not (n.module or "").startswith("thorbis_runbook") for n in top_level)
    assert dag_source(_spec()) == source  # deterministic


def test_fleet_dag_without_airflow_refuses_unless_the_dag_is_for_another_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if _found("apache-airflow", 3):
        pytest.skip("Airflow is installed here: the refusal cannot be seen")
    (tmp_path / "migrations").mkdir()
    (tmp_path / "runbook.toml").write_text(
        '[runbook]\nmigrations_dir = "migrations"\nstate_dir = "state"\n'
        f'[notebooks]\ndir = "{NOTEBOOKS}"\n'
        '[targets.t1]\ndsn_env = "T1_DSN"\n[fleets.pair]\nmembers = ["t1"]\nrunbooks = ["apply"]\n'
    )
    config = str(tmp_path / "runbook.toml")

    refused = cli.main(["--config", config, "fleet", "dag", "pair"])

    out, err = capsys.readouterr()
    assert refused == 2 and out == ""
    assert "error: Airflow 3" in err and "pip install 'thorbis-runbook[airflow]'" in err
    assert "hint:" in err and "--for-another-machine" in err
    assert cli.main(["--config", config, "fleet", "dag", "pair", "--for-another-machine"]) == 0
    written = capsys.readouterr().out
    compile(written, "pair.py", "exec")
    assert "MEMBERS = ['t1']" in written
