"""lint's output formats and exit codes, as a CI gate reads them (no database: no target)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thorbis_runbook.checks import Check, CheckReport
from thorbis_runbook.cli import main
from thorbis_runbook.lint_output import render

NAME = "20250301000001_orders.sql"
BLOCKING = (
    "CREATE INDEX orders_total_idx ON public.orders (total);\n"
    "ALTER TABLE public.orders RENAME COLUMN total TO amount;\n"
)


def _project(tmp_path: Path, sql: str) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / NAME).write_text(sql, encoding="utf-8")
    for suffix in (".down.sql", ".verify.sql"):
        (folder / NAME.replace(".sql", suffix)).write_text("SELECT 1;\n")
    config = tmp_path / "runbook.toml"
    config.write_text(
        f'[runbook]\nmigrations_dir = "{folder}"\ndefault_target = "ci"\n'
        '[targets.ci]\ndsn_env = "THORBIS_CI_DSN"\n'
    )
    return config


def _lint(config: Path, *args: str) -> int:
    return main(["--config", str(config), "lint", *args])


def test_github_annotations_name_file_line_and_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _project(tmp_path, BLOCKING)
    monkeypatch.chdir(tmp_path)  # a CI job runs at the repository's root
    assert _lint(config, "--format", "github") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        f"::error file=migrations/{NAME},line=1,title=index-not-concurrent::CREATE INDEX "
    )
    assert lines[1].startswith(f"::warning file=migrations/{NAME},line=2,title=rename-column::")
    assert "--expand-contract rename" in lines[1]
    assert lines[2] == "lint: fail (1 warn, 1 fail)"


def test_gitlab_code_quality_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _project(tmp_path, BLOCKING)
    monkeypatch.chdir(tmp_path)
    assert _lint(config, "--format", "gitlab") == 1
    issues = json.loads(capsys.readouterr().out)
    assert [(i["check_name"], i["severity"], i["location"]) for i in issues] == [
        ("index-not-concurrent", "critical", {"path": f"migrations/{NAME}", "lines": {"begin": 1}}),
        ("rename-column", "minor", {"path": f"migrations/{NAME}", "lines": {"begin": 2}}),
    ]
    assert len({i["fingerprint"] for i in issues}) == 2


def test_json_and_its_alias_agree_and_an_allowed_finding_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _project(
        tmp_path,
        "-- runbook:allow index-not-concurrent orders is a 30-row lookup table (DBA-4)\n"
        "CREATE INDEX orders_total_idx ON public.orders (total);\n",
    )
    assert _lint(config, "--format", "json") == 0
    long_form = json.loads(capsys.readouterr().out)
    assert _lint(config, "--json") == 0
    assert json.loads(capsys.readouterr().out) == long_form
    assert long_form["status"] == "pass"
    assert "DBA-4" in long_form["checks"][0]["detail"]


def test_a_clean_file_exits_0_in_every_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _project(
        tmp_path, "CREATE INDEX CONCURRENTLY orders_total_idx ON public.orders (total);\n"
    )
    for fmt in ("text", "json", "github", "gitlab"):
        assert _lint(config, "--format", fmt) == 0, fmt
    out = capsys.readouterr().out
    assert "::error" not in out and "::warning" not in out


def test_an_unknown_format_is_refused_by_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _project(tmp_path, "SELECT 1;\n")
    with pytest.raises(SystemExit) as exit_:
        _lint(config, "--format", "sarif")
    assert exit_.value.code == 2
    assert "invalid choice: 'sarif'" in capsys.readouterr().err


def test_github_escapes_what_would_end_a_workflow_command() -> None:
    report = CheckReport.of(
        "lint",
        [Check("parse-error a,b:c.sql:3", "fail", None, None, "50% done\nthen: this")],
    )
    line = render(report, "github", path_of=lambda name: f"db/{name}").splitlines()[0]
    assert line == "::error file=db/a%2Cb%3Ac.sql,line=3,title=parse-error::50%25 done%0Athen: this"


def test_a_row_without_a_location_is_reported_against_the_folder() -> None:
    report = CheckReport.of("lint", [Check("trace only", "warn", None, None, "took SHARE")])
    issues = json.loads(render(report, "gitlab", path_of=lambda name: name or "migrations"))
    assert issues[0]["location"] == {"path": "migrations", "lines": {"begin": 1}}


def test_json_with_another_format_is_refused_with_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _project(tmp_path, BLOCKING)
    assert _lint(config, "--json", "--format", "gitlab") == 2
    err = capsys.readouterr().err
    assert "error: --json and --format gitlab ask for two output formats" in err
    assert "hint: give one" in err and "Traceback" not in err
