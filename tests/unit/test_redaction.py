"""The process's known secrets and the scrubbing of every string that reaches an output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from thorbis_runbook import ledger, redaction, report
from thorbis_runbook.config import settings_from_mapping
from thorbis_runbook.errors import ConnectionFailed
from thorbis_runbook.summary import ErrorSummary, RunSummary

SECRET = "Sl@sh:c0lon/Pw-77zz&<q>"


@pytest.fixture(autouse=True)
def empty_registry() -> Iterator[None]:
    redaction.forget()
    yield
    redaction.forget()


def _settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    data = {
        "runbook": {"default_target": "url"},
        "targets": {
            "url": {"dsn_env": "T_URL"},
            "kv": {"dsn_env": "T_KV"},
            "libpq": {"notify": {"webhook_url_env": "T_HOOK", "smtp_password_env": "T_SMTP"}},
            "local": {"embedded": True},
        },
    }
    return settings_from_mapping(data, root=tmp_path, env={})


def test_gather_learns_every_target_password_pgpass_pgpassword_and_notify_secrets(
    tmp_path: Path,
) -> None:
    (tmp_path / ".pgpass").write_text(
        "# comment\n"
        "db.example:5432:thorbis:app:Pgpass-for-url\n"
        "other.example:*:*:*:Pgpass-elsewhere\n"
        "localhost:*:*:someone:Pgpass\\:for\\:libpq\n"
    )
    env = {
        "T_URL": "postgresql://app@db.example/thorbis",
        "T_KV": f"host=db.example user=app password='{SECRET}'",
        "PGPASSWORD": "From-Pgpassword",
        "PGUSER": "someone",
        "T_HOOK": "https://hooks.example/T0/B0/Webhook-token",
        "T_SMTP": "Smtp-secret",
        "HOME": str(tmp_path),
    }
    known = redaction.gather(_settings(tmp_path), env)
    for secret in (
        "Pgpass-for-url", "Pgpass:for:libpq", SECRET, "From-Pgpassword",
        "https://hooks.example/T0/B0/Webhook-token", "Smtp-secret",
    ):  # fmt: skip
        assert secret in known, secret
    assert "Pgpass-elsewhere" not in known, "a line for another server is not this process's"


def test_scrub_replaces_known_secrets_in_every_form_and_dsn_shaped_passwords() -> None:
    redaction.remember([SECRET])
    text = (
        f"raw {SECRET} json {json.dumps(SECRET)} html {report.html.escape(SECRET)} "
        "uri postgresql://u:Unknown@Pw@h/db kv password='Un known' PGPASSWORD=Unknown2"
    )
    scrubbed = redaction.scrub(text)
    assert "c0lon" not in scrubbed and "Unknown" not in scrubbed and "Un known" not in scrubbed
    assert "postgresql://u:***@h/db" in scrubbed
    assert redaction.scrub_value({"a": [SECRET, (1, SECRET)], SECRET: None}) == {
        "a": ["***", (1, "***")],
        "***": None,
    }


def test_looks_secret_and_blank_secret() -> None:
    redaction.remember(["Known-pw-1"])
    assert redaction.looks_secret("operator", "postgresql://u:pw@h/db")
    assert redaction.looks_secret("operator", "host=h password=x")
    assert redaction.looks_secret("operator", "my Known-pw-1")
    assert redaction.looks_secret("api_key", "x")
    assert not redaction.looks_secret("operator", "alice")
    assert redaction.blank_secret("Known-pw-1") == "***"
    assert redaction.blank_secret("alice") == "alice"


def test_the_log_filter_scrubs_children_arguments_and_tracebacks() -> None:
    redaction.remember([SECRET])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    parent = logging.getLogger("thorbis_runbook_test_filter")
    parent.addHandler(handler)
    parent.propagate = False
    redaction.guard(parent, handler)
    redaction.guard(parent, handler)
    assert len(handler.filters) == 1, "guarding twice adds one filter"
    try:
        child = logging.getLogger("thorbis_runbook_test_filter.child")
        child.warning("connecting with %s", SECRET)
        try:
            raise ValueError(f"bad {SECRET}")
        except ValueError:
            child.exception("failed")
        parent.error("postgresql://u:Other-pw@h/db")
    finally:
        parent.removeHandler(handler)
    written = stream.getvalue()
    assert "connecting with ***" in written and "failed" in written
    assert "c0lon" not in written and "Other-pw" not in written


def test_scrub_error_rewrites_message_hint_and_args() -> None:
    redaction.remember([SECRET])
    error = redaction.scrub_error(ConnectionFailed(f"cannot connect: {SECRET}", f"hint {SECRET}"))
    assert "c0lon" not in error.message + error.hint + str(error) + repr(error.args)


def _notebook() -> nbformat.NotebookNode:
    injected = new_code_cell(
        f'operator = "postgresql://u:{SECRET}@h/db"\nrun_id = "x"',
        metadata={"tags": ["injected-parameters"]},
    )
    failing = new_code_cell(
        "rb.status()",
        outputs=[
            new_output("stream", name="stdout", text=f"INFO connecting {SECRET}\n"),
            new_output(
                "display_data", data={"text/html": f"<b>{SECRET}</b>", "text/plain": SECRET}
            ),
            new_output("error", ename="ConnectionFailed", evalue=SECRET, traceback=[f"x {SECRET}"]),
        ],
    )
    notebook = new_notebook(cells=[injected, failing])
    notebook.metadata["papermill"] = {"parameters": {"operator": SECRET, "run_id": "x"}}
    return notebook


def test_the_executed_notebook_is_scrubbed_everywhere_not_only_its_parameters() -> None:
    redaction.remember([SECRET])
    notebook = _notebook()
    report.scrub_notebook(notebook)
    text = nbformat.writes(notebook)
    assert "c0lon" not in text
    assert notebook.metadata.papermill.parameters == {"operator": "***", "run_id": "x"}
    assert notebook.cells[1].outputs[0].text == "INFO connecting ***\n"


def _summary() -> RunSummary:
    return RunSummary(
        runbook="apply", run_id="r1", target="test", status="failed", started="now",
        operator=SECRET, parameters={"operator": SECRET, "lock_timeout": f"x{SECRET}"},
        error=ErrorSummary(f"cannot connect {SECRET}", f"hint {SECRET}", (SECRET,)),
        figures={"note": SECRET}, notifications=({"detail": SECRET},),
    )  # fmt: skip


def test_summary_json_the_banner_and_the_ledger_never_hold_a_known_secret(tmp_path: Path) -> None:
    redaction.remember([SECRET])
    summary = _summary()
    path = summary.write(tmp_path)
    assert "c0lon" not in path.read_text()
    assert RunSummary.read(tmp_path) == summary.scrubbed()
    assert "c0lon" not in report.summary_banner(summary)
    ledger.append(tmp_path, {"run_id": "r1", "operator": SECRET, "files": {}})
    assert "c0lon" not in (tmp_path / ledger.LEDGER_FILE).read_text()
