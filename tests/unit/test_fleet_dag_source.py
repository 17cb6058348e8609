"""The DAG `fleet dag` writes, read without Airflow: it parses, compiles, and holds the fleet."""

from __future__ import annotations

import ast
from pathlib import Path

from thorbis_runbook.fleet_dag import DagSpec, dag_source
from thorbis_runbook.waves import Share, Wave, WaveSpec


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
