"""The stored notebooks: valid, output-free, thin, and with a papermill-readable parameters cell."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
# What a thin notebook never holds: SQL, the driver, loops, exception handling, plotting code.
FORBIDDEN = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP)\s|psycopg2|sqlalchemy|^\s*(for|while|try|except)\b|plt\.|matplotlib",
    re.MULTILINE,
)


def test_there_are_notebooks() -> None:
    assert {p.stem for p in NOTEBOOKS} >= {"apply"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_valid_and_stored_without_outputs(path: Path) -> None:
    notebook = nbformat.read(str(path), as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name}: outputs stored"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_thin_and_ends_with_finish(path: Path) -> None:
    notebook = nbformat.read(str(path), as_version=4)
    assert notebook.cells[0].cell_type == "markdown", "cell 1 explains the runbook to the DBA"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    parameters = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, "exactly one cell tagged parameters"
    for cell in code:
        if cell is parameters[0]:
            continue
        assert len(cell.source.splitlines()) <= 6, (
            f"{path.name}: a cell of more than ~5 lines:\n{cell.source}"
        )
        assert not FORBIDDEN.search(cell.source), (
            f"{path.name}: logic belongs in the package:\n{cell.source}"
        )
        assert "hide-input" in cell.metadata.get("tags", []), (
            "code is hidden from the auditor view by tag"
        )
    assert code[-1].source.strip() == "rb.finish()"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_parameter_has_a_type_and_help_for_papermill(path: Path) -> None:
    declared = papermill.inspect_notebook(str(path))
    notebook = nbformat.read(str(path), as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    names = [line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line]
    assert list(declared) == names, "papermill reads every parameter line"
    for name, parameter in declared.items():
        assert parameter["inferred_type_name"] not in ("None", ""), f"{name} has no type comment"
        assert parameter["help"], f"{name} has no help text"
    assert not {"dsn", "password", "database_url"} & set(declared), "a DSN is never a parameter"
