"""runbook.toml as a user writes it: found from any folder below it, every key and value checked,
and every name that becomes a folder refused when it could leave that folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from thorbis_runbook import config, parameters, runbook
from thorbis_runbook.config import load_settings
from thorbis_runbook.errors import ConfigError
from thorbis_runbook.runs import new_run_id

PROJECT = """
[runbook]
migrations_dir = "db/migrations"
state_dir = ".state"
default_target = "test"

[targets.test]
dsn_env = "THORBIS_TEST_DSN"
"""


def _project(tmp_path: Path, text: str = PROJECT) -> Path:
    (tmp_path / "runbook.toml").write_text(text)
    nested = tmp_path / "notebooks" / "drafts"
    nested.mkdir(parents=True)
    return nested


def test_the_config_is_found_from_a_subfolder_and_its_paths_stay_relative_to_it(
    tmp_path: Path,
) -> None:
    nested = _project(tmp_path)
    assert config.find_config(nested) == tmp_path / "runbook.toml"
    settings = load_settings(env={}, cwd=nested)
    assert settings.config_path == tmp_path / "runbook.toml"
    assert settings.migrations_dir == tmp_path / "db" / "migrations"
    assert settings.state_dir == tmp_path / ".state"


def test_the_working_folder_is_where_the_walk_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI and runbook.start pass no path: JupyterLab's kernel starts in notebooks/."""
    monkeypatch.chdir(_project(tmp_path).parent)
    monkeypatch.delenv("THORBIS_CONFIG", raising=False)
    assert load_settings().root == tmp_path
    run = runbook.start("precheck")
    assert run.settings.root == tmp_path and run.target.name == "test"


def test_thorbis_config_still_wins_over_the_walk(tmp_path: Path) -> None:
    nested = _project(tmp_path)
    other = tmp_path / "elsewhere.toml"
    other.write_text('[runbook]\ndefault_target = "x"\n[targets.x]\n')
    settings = load_settings(env={"THORBIS_CONFIG": str(other)}, cwd=nested)
    assert settings.default_target == "x"


def test_no_config_anywhere_above_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, cwd=tmp_path)
    assert f"no runbook.toml in {tmp_path.resolve()} or any folder above it" in info.value.message
    assert "--config" in info.value.hint


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[runbook]\nmigration_dir = "m"\n', "[runbook] has unknown key(s): migration_dir"),
        ("[targetz.test]\n", "runbook.toml has unknown section(s): targetz"),
        ("[runbook]\n[targets.t]\n[valdate]\nworkers = 1\n", "unknown section(s): valdate"),
        ("[runbook]\nmigrations_dir = 7\n", "[runbook] migrations_dir = 7 is not a name"),
        ("[runbook]\nstate_dir = true\n", "[runbook] state_dir = True is not a name"),
        ('[runbook]\nmigrations_dir = ""\n', "[runbook] migrations_dir = '' is not a name"),
        ("[runbook]\ndefault_target = 1\n", "[runbook] default_target = 1 is not a name"),
        ("runbook = 3\n", "[runbook] must be a table"),
        ("targets = 3\n", "[targets] must be a table"),
        ("[targets.t]\ndatabase = 5\n", "targets.t.database = 5 is not a name"),
        ("[targets.t]\nbackup_dir = 7\n", "targets.t.backup_dir = 7 is not a name"),
        ("[targets.t]\npg_bin_dir = ['a']\n", "targets.t.pg_bin_dir = ['a'] is not a name"),
        ("[targets.t]\ndata_directory = false\n", "targets.t.data_directory = False"),
        ("[reports]\ndir = 7\n", "[reports] dir = 7 is not a name"),
        ("reports = 'r'\n", "[reports] must be a table"),
        ('[notebooks]\nfolder = "n"\n', "[notebooks] has unknown key(s): folder"),
    ],
)
def test_unknown_keys_and_values_of_the_wrong_kind_are_named(
    tmp_path: Path, text: str, fragment: str
) -> None:
    (tmp_path / "runbook.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "runbook.toml", env={})
    assert fragment in info.value.message


def test_every_section_the_code_reads_is_known(tmp_path: Path) -> None:
    package = Path(__file__).resolve().parents[2] / "thorbis_runbook"
    read = {
        match
        for path in package.rglob("*.py")
        for match in re.findall(r"sections\.get\(\"(\w+)\"", path.read_text())
    }
    assert read and read <= set(config.KNOWN_SECTIONS)
    shipped = (package.parent / "runbook.toml").read_text()
    (tmp_path / "runbook.toml").write_text(
        shipped + '\n[notebooks]\ndir = "notebooks"\n[reports]\ndir = "reports"\n'
    )
    settings = load_settings(tmp_path / "runbook.toml", env={})
    assert {"thresholds", "validate", "benchmark", "notebooks", "reports"} <= set(settings.sections)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil", "it contains '/'"),
        ("a/b", "it contains '/'"),
        ("..", "it starts with '.'"),
        (".hidden", "it starts with '.'"),
        ("a b", "it contains ' '"),
        ("x" * 101, "it is longer than 100 characters"),
    ],
)
def test_target_names_that_cannot_be_a_folder_are_refused(
    tmp_path: Path, name: str, problem: str
) -> None:
    (tmp_path / "runbook.toml").write_text(f'[targets."{name}"]\ndsn_env = "X"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "runbook.toml", env={})
    assert f"target name {name!r} cannot name a folder: {problem}" in info.value.message
    assert "[targets.NAME]" in info.value.hint


def test_good_names_pass_and_a_new_run_id_is_one() -> None:
    for name in ("local", "eu-west.prod_2", new_run_id()):
        assert config.check_path_name(name, what="name", hint="") == name


@pytest.mark.parametrize("bad", ["../../x", "/etc", "a\\b", "", "r\x00"])
def test_a_run_id_that_cannot_be_a_folder_is_refused_without_echoing_it(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parameters.run_id(bad)
    assert info.value.message.startswith("parameter run_id cannot name a folder")
    assert bad == "" or bad not in info.value.message
    assert "leave run_id empty" in info.value.hint


def test_runbook_start_refuses_a_run_id_that_would_leave_the_archive(tmp_path: Path) -> None:
    _project(tmp_path)
    with pytest.raises(ConfigError, match="parameter run_id cannot name a folder"):
        runbook.start("apply", config_path=str(tmp_path / "runbook.toml"), run_id="../../outside")
