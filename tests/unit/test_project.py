"""`init`: a project any team can start from, from the package's own copies, never overwriting.

No database: init writes files only, and a `run` without notebooks is refused before it
connects anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from thorbis_runbook import cli, config, project

REPO = Path(__file__).resolve().parents[2]
NEXT = (
    "thorbis-runbook db start",
    "thorbis-runbook run precheck --target local",
    "thorbis-runbook run precheck apply validate --target local",
)


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its content (folders as empty markers)."""
    return {
        path.relative_to(folder).as_posix(): (b"<dir>" if path.is_dir() else path.read_bytes())
        for path in sorted(folder.rglob("*"))
    }


def _init(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["init", *args])
    out, err = capsys.readouterr()
    return code, out, err


# -- the one source ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", project.NOTEBOOKS)
def test_the_repositorys_notebooks_are_the_packaged_ones_byte_for_byte(name: str) -> None:
    stored = (REPO / "notebooks" / f"{name}.ipynb").read_bytes()
    assert stored == project.packaged_notebook(name), (
        f"notebooks/{name}.ipynb and thorbis_runbook/notebooks/{name}.ipynb differ: the packaged "
        f"one is what init installs; copy the edited one over the other "
        f"(cp notebooks/{name}.ipynb thorbis_runbook/notebooks/)"
    )


def test_the_repository_and_the_package_hold_the_same_four_notebooks() -> None:
    stored = {p.name for p in (REPO / "notebooks").glob("*.ipynb")}
    packaged = {p.name for p in (REPO / "thorbis_runbook" / "notebooks").glob("*.ipynb")}
    assert stored == packaged == {f"{name}.ipynb" for name in project.NOTEBOOKS}


@pytest.mark.parametrize(
    ("stored", "packaged"),
    [("reports/.gitignore", "reports.gitignore"), ("reports/README.md", "reports.README.md")],
)
def test_the_repositorys_reports_folder_is_what_init_writes(stored: str, packaged: str) -> None:
    assert (REPO / stored).read_bytes() == project.template_file(packaged)


def test_the_config_template_parses_with_three_targets_and_no_secret(tmp_path: Path) -> None:
    text = project.config_template()
    settings = config.settings_from_mapping(tomllib.loads(text), root=tmp_path, env={})
    assert set(settings.targets) == {"local", "staging", "production"}
    assert settings.default_target == "local"
    assert settings.targets["local"].embedded
    assert settings.targets["production"].production
    assert settings.targets["staging"].dsn_env and settings.targets["production"].dsn_env
    assert settings.migrations_dir == tmp_path / "migrations"
    assert not re.search(r"://[^\s/@:]+:[^\s/@]+@", text), "a DSN with a password"
    assert "password" not in json.dumps(tomllib.loads(text)).lower(), "a setting with a password"


@pytest.mark.parametrize("text", ["plain", 'a "quoted" \\ path', "tab\tnew\nline\x7f", "ünï 😀"])
def test_toml_string_round_trips(text: str) -> None:
    assert tomllib.loads(f"x = {project.toml_string(text)}")["x"] == text


# -- init -------------------------------------------------------------------------------------
def test_init_in_an_empty_folder_writes_a_project_the_other_verbs_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _init(capsys)
    assert code == 0, err
    assert set(_tree(tmp_path)) == {
        "runbook.toml", "migrations", "notebooks", "reports", "reports/.gitignore",
        "reports/README.md", ".runbook", ".runbook/.gitignore",
        *(f"notebooks/{name}.ipynb" for name in project.NOTEBOOKS),
    }  # fmt: skip
    for name in project.NOTEBOOKS:
        assert (tmp_path / "notebooks" / f"{name}.ipynb").read_bytes() == (
            REPO / "notebooks" / f"{name}.ipynb"
        ).read_bytes()
    assert "created runbook.toml" in out and "created migrations/" in out
    assert out.rstrip().endswith("\n".join(f"  {command}" for command in NEXT))
    assert "  cd " not in out  # already in the project
    settings = config.load_settings(cwd=tmp_path, env={})
    assert settings.migrations_dir == tmp_path / "migrations"
    assert settings.state_dir == tmp_path / ".runbook"


def test_init_again_overwrites_nothing_and_says_what_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(capsys, str(tmp_path))[0] == 0
    (tmp_path / "runbook.toml").write_text("# ours now\n")
    (tmp_path / "notebooks" / "apply.ipynb").unlink()
    before = _tree(tmp_path)
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0
    after = _tree(tmp_path)
    assert after.pop("notebooks/apply.ipynb") == project.packaged_notebook("apply")
    assert after == before
    assert "created notebooks/apply.ipynb" in out
    assert "exists  runbook.toml (left as it was)" in out
    assert "exists  notebooks/precheck.ipynb (left as it was)" in out
    assert f"  cd {tmp_path}" in out


def test_init_with_nothing_left_to_write_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _init(capsys, str(tmp_path))
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0
    assert "nothing to write" in out and "created" not in out


def test_init_adopts_an_existing_history_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    history = tmp_path / "supabase" / "migrations"
    history.mkdir(parents=True)
    (history / "20240101000000_init.sql").write_text("CREATE TABLE t (id int);")
    monkeypatch.chdir(tmp_path)
    code, out, err = _init(capsys, "--migrations", "supabase/migrations")
    assert code == 0, err
    assert not (tmp_path / "migrations").exists()
    assert f"migrations: {history} (adopted in place)" in out
    text = (tmp_path / "runbook.toml").read_text()
    assert 'migrations_dir = "supabase/migrations"' in text
    assert config.load_settings(cwd=tmp_path, env={}).migrations_dir == history
    assert [p.name for p in history.iterdir()] == ["20240101000000_init.sql"]


def test_init_of_a_subproject_names_a_history_above_it_relatively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    history = tmp_path / "supabase" / "migrations"
    history.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert _init(capsys, "ops/runbook", "--migrations", "supabase/migrations")[0] == 0
    settings = config.load_settings(cwd=tmp_path / "ops" / "runbook", env={})
    assert settings.migrations_dir == history
    assert (
        'migrations_dir = "../../supabase/migrations"'
        in (tmp_path / "ops" / "runbook" / "runbook.toml").read_text()
    )


def test_adopting_into_a_project_whose_runbook_toml_names_another_folder_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "runbook.toml").write_text('[runbook]\nmigrations_dir = "migrations"\n')
    code, out, _ = _init(capsys, str(tmp_path), "--migrations", str(tmp_path / "db"))
    assert code == 0
    assert (tmp_path / "runbook.toml").read_text() == '[runbook]\nmigrations_dir = "migrations"\n'
    assert "note: runbook.toml was left as it was and its migrations_dir names 'migrations'" in out
    assert 'set migrations_dir = "db" in [runbook]' in out


# -- bad input: error + hint, exit 2, nothing written --------------------------------------------
def _refused(
    capsys: pytest.CaptureFixture[str], folder: Path, *args: str
) -> tuple[str, dict[str, bytes]]:
    before = _tree(folder)
    code, out, err = _init(capsys, *args)
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: ")
    assert "Traceback" not in err
    assert _tree(folder) == before, "bad input wrote something"
    return err, before


def test_init_refuses_migrations_naming_a_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err, _ = _refused(capsys, tmp_path, str(tmp_path), "--migrations", str(tmp_path / "nope"))
    assert f"--migrations names {tmp_path / 'nope'}, which does not exist" in err


def test_init_refuses_migrations_naming_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "0001.sql").write_text("SELECT 1;")
    err, _ = _refused(capsys, tmp_path, str(tmp_path), "--migrations", str(tmp_path / "0001.sql"))
    assert "which is a file, not a folder" in err


def test_init_refuses_a_project_folder_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "project").write_text("")
    err, _ = _refused(capsys, tmp_path, str(tmp_path / "project"))
    assert "is a file, not a folder" in err


def test_init_refuses_a_file_where_it_writes_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notebooks").write_text("not a folder")
    err, _ = _refused(capsys, tmp_path, str(tmp_path))
    assert f"{tmp_path / 'notebooks'} is a file" in err


def test_init_refuses_a_folder_it_cannot_write() -> None:
    """Root ignores permission bits: as root, init runs without CAP_DAC_OVERRIDE (setpriv), so
    the folder's r-x bits bind it like any user."""
    folder = Path(tempfile.mkdtemp(prefix="runbook-init-"))
    command = [sys.executable, "-m", "thorbis_runbook.cli", "init", str(folder)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without util-linux's setpriv to drop CAP_DAC_OVERRIDE")
        drop = "-dac_override"
        command = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}", *command]
    try:
        folder.chmod(0o555)
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=60, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith(
            f"error: cannot write into {folder}: Permission denied\nhint: "
        )
        assert "Traceback" not in result.stderr
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


# -- run without the notebooks --------------------------------------------------------------
def test_run_in_a_project_without_notebooks_says_to_run_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "runbook.toml").write_text("[targets.local]\nembedded = true\n")
    code = cli.main(["--config", str(tmp_path / "runbook.toml"), "run", "precheck"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"error: the project has no precheck runbook: {tmp_path / 'notebooks' / 'precheck.ipynb'}"
        " does not exist\n"
        f"hint: run thorbis-runbook init in {tmp_path} to add the four runbook notebooks"
        " (it never overwrites a file)\n"
    )
    assert not (tmp_path / ".runbook").exists(), "nothing may start before the refusal"
