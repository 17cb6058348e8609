"""environment.yml, the conda users' runtime, stays in step with pyproject.toml's dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# pyproject's name for a package -> conda-forge's, where they differ.
CONDA_NAMES = {"psycopg2-binary": "psycopg2"}
# What environment.yml may hold beyond pyproject's dependencies: the interpreter, pip for the
# packages conda-forge lacks, and PostgreSQL's client tools.
EXTRAS = {"python", "pip", "postgresql"}
_SPEC = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:>=\s*([^,\s;]+))?\s*$")


def _bounds(specs: list[str]) -> dict[str, str | None]:
    """{normalized name: lower bound or None} from "name>=1.2" specs; anything else fails."""
    found: dict[str, str | None] = {}
    for spec in specs:
        match = _SPEC.match(spec)
        assert match, f"{spec!r} is not name or name>=version"
        found[match[1].lower().replace("_", "-")] = match[2]
    return found


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]  # type: ignore[no-any-return]


def _environment() -> dict[str, object]:
    return yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _conda_and_pip() -> tuple[dict[str, str | None], dict[str, str | None]]:
    conda: list[str] = []
    pip: list[str] = []
    for entry in _environment()["dependencies"]:  # type: ignore[attr-defined]
        if isinstance(entry, dict):
            assert set(entry) == {"pip"}, entry
            pip += entry["pip"]
        else:
            conda.append(entry)
    return _bounds(conda), _bounds(pip)


def test_the_channels_are_conda_forge_only() -> None:
    assert _environment()["channels"] == ["conda-forge", "nodefaults"]


def test_every_runtime_dependency_appears_with_the_same_lower_bound_and_nothing_else() -> None:
    wanted = {
        CONDA_NAMES.get(name, name): bound
        for name, bound in _bounds(_pyproject()["dependencies"]).items()  # type: ignore[arg-type]
    }
    conda, pip = _conda_and_pip()
    assert not set(conda) & set(pip), "a package listed twice"
    given = {**conda, **pip}
    extras = {name: given.pop(name) for name in EXTRAS & set(given)}
    assert given == wanted
    assert set(extras) == EXTRAS, "python, pip and postgresql (the client tools) belong here"
    assert extras["python"] == _pyproject()["requires-python"].removeprefix(">=")  # type: ignore[attr-defined]
