"""Changes without a database: the policy keys, the records a change writes, what a target lacks."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import write_migrations
from thorbis_runbook import changes, ledger, promotion, signing
from thorbis_runbook.archive import verify_archive
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.errors import ChangeRefused, ConfigError

FILES = {
    "20250101000000_create_items.sql": "CREATE TABLE items (id int);",
    "20250101000000_create_items.down.sql": "DROP TABLE items;",
}


def _settings(tmp_path: Path, **production: object) -> Settings:
    write_migrations(tmp_path / "migrations", FILES)
    data = {
        "runbook": {"migrations_dir": "migrations"},
        "targets": {
            "staging": {"dsn_env": "S"},
            "production": {"dsn_env": "P", "production": True, "promote_from": "staging",
                           **production},
        },
    }  # fmt: skip
    return settings_from_mapping(data, root=tmp_path, env={})


def _open(settings: Settings, **given: Any) -> changes.Change:
    values = {"ticket": "OPS-142", "reason": "index items", "author": "alice", **given}
    return changes.open_change(settings, **values)


def _run(
    settings: Settings, change: changes.Change, runbook: str, *, target: str = "staging",
    started: str = "2026-01-01T10:00:00+00:00", finished: str = "2026-01-01T10:01:00+00:00",
    **extra: Any,
) -> None:  # fmt: skip
    """A run line as the pipeline writes it for a run attached to the change."""
    entry = {
        "run_id": f"r{len(ledger.entries(ledger.reports_root(settings)))}", "runbook": runbook,
        "target": target, "status": "succeeded", "operator": "alice", "started": started,
        "finished": finished, "files": {}, "change_id": change.change_id,
        "pin": change.pin_sha256, **extra,
    }  # fmt: skip
    ledger.append(ledger.reports_root(settings), entry)


def _missing(settings: Settings, change_id: str, *, operator: str = "bob", **kw: Any) -> list[str]:
    change = changes.load_change(ledger.reports_root(settings), change_id)
    found = promotion.missing_for(
        change, settings.target("production"), operator=operator,
        runbook=kw.pop("runbook", "apply"), settings=settings, **kw,
    )  # fmt: skip
    return [m.what for m in found]


# -- the policy keys ----------------------------------------------------------------------------
def test_a_production_target_defaults_to_one_approval_with_separated_duties(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    production, staging = settings.target("production"), settings.target("staging")
    assert (production.approvals_required, production.separation_of_duties) == (1, True)
    assert production.promote_from == "staging" and production.demands_change
    assert (staging.approvals_required, staging.separation_of_duties, staging.promote_from) == (
        0, False, None,
    )  # fmt: skip
    assert not staging.demands_change


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (
            {"promote_from": "qa"},
            "promote_from = 'qa' is not a target of runbook.toml (it defines: staging)",
        ),
        ({"promote_from": "production"}, "promote_from names the target itself"),
        ({"promote_from": 3}, "promote_from = 3 is not a target name"),
        ({"approvals_required": -1}, "approvals_required = -1"),
        ({"approvals_required": True}, "approvals_required = True"),
        ({"separation_of_duties": "yes"}, "separation_of_duties = 'yes' is not true or false"),
    ],
)
def test_bad_policy_keys_are_named(
    tmp_path: Path, values: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        _settings(tmp_path, **values)
    assert fragment in refused.value.message


# -- ids --------------------------------------------------------------------------------------
def test_change_ids_are_checked_and_a_pasted_secret_is_never_echoed() -> None:
    assert changes.check_change_id("CHG-20261202-1a2b3c") == "CHG-20261202-1a2b3c"
    assert changes.CHANGE_ID.fullmatch(changes.new_change_id())
    for bad in ("CHG-20261202-1A2B3C", "CHG-20261202-1a2b3c\n", "../CHG-20261202-1a2b3c", "", 7):
        with pytest.raises(ConfigError, match=r"malformed|not text"):
            changes.check_change_id(bad)
    with pytest.raises(ConfigError) as refused:
        changes.check_change_id("s3cret-Passw0rd!")
    assert "s3cret" not in str(refused.value)


# -- writing ----------------------------------------------------------------------------------
def test_opening_pins_the_folder_and_records_one_verifiable_line(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    change = _open(settings, planned_start="2026-12-02T22:00+01:00", planned_end="2026-12-02T23:30")
    root = ledger.reports_root(settings)
    (line,) = ledger.entries(root)
    pin_file = f"changes/{change.change_id}/pin-1.json"
    assert line["kind"] == "change" and line["action"] == "opened" and line["by"] == "alice"
    assert line["files"] == {pin_file: change.pin_sha256} and line["pin"] == change.pin_sha256
    assert (line["planned_start"], line["planned_end"]) == (
        "2026-12-02T21:00:00+00:00", "2026-12-02T23:30:00+00:00",
    ), "the window is kept in UTC; a time without a zone is UTC"  # fmt: skip
    assert json.loads((root / pin_file).read_text())["files"][0]["role"] == "down"
    assert {f.name for f in change.pin.files} == set(FILES)
    assert verify_archive(root, public_key=None).ok


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ({"ticket": "  "}, "the ticket is empty"),
        ({"reason": "two\nlines"}, "the reason is not one line of text"),
        ({"reason": "see postgresql://app:hunter2@db/app"}, "the reason looks like a credential"),
        ({"ticket": "x" * 201}, "the ticket is longer than 200 characters"),
        ({"category": "urgent"}, "category 'urgent' is not a change category"),
        ({"author": ""}, "the name is empty"),
        ({"planned_start": "tomorrow"}, "the planned start 'tomorrow' is not an ISO 8601 time"),
        (
            {"planned_start": "2026-12-02T22:00", "planned_end": "2026-12-02T21:00"},
            "the planned end 2026-12-02T21:00:00+00:00 is not after the planned start",
        ),
    ],
)
def test_bad_input_opens_nothing(tmp_path: Path, given: dict[str, Any], fragment: str) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(ConfigError) as refused:
        _open(settings, **given)
    assert fragment in refused.value.message and refused.value.hint
    assert not ledger.reports_root(settings).exists(), "nothing written"


def test_an_empty_migrations_folder_cannot_be_changed(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for path in (tmp_path / "migrations").iterdir():
        path.unlink()
    with pytest.raises(ConfigError, match="holds no migration to change"):
        _open(settings)


def test_update_repins_voids_approvals_and_refuses_when_nothing_differs(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    change = _open(settings)
    with pytest.raises(
        ConfigError, match="is unchanged: the migration files are exactly those of pin 1"
    ):
        changes.update_change(settings, change.change_id, reason="again", by="alice")
    approved = changes.approve_change(settings, change.change_id, approver="carol")
    assert [a.valid for a in approved.approvals] == [True]
    write_migrations(tmp_path / "migrations", {"20250102000000_more.sql": "SELECT 1;"})
    updated = changes.update_change(settings, change.change_id, reason="more", by="alice")
    assert updated.pin_number == 2 and updated.pin_sha256 != change.pin_sha256
    assert [a.valid for a in updated.approvals] == [False]
    assert changes.approve_change(settings, change.change_id, approver="carol").valid_approvals
    assert verify_archive(ledger.reports_root(settings), public_key=None).ok, (
        "pin-2.json is recorded by its line"
    )


def test_without_separation_of_duties_the_author_may_approve(tmp_path: Path) -> None:
    settings = _settings(tmp_path, separation_of_duties=False)
    change = _open(settings)
    approved = changes.approve_change(settings, change.change_id, approver="alice", comment="ok")
    assert approved.valid_approvals[0].approver == "alice"
    _run(settings, change, "precheck")
    _run(settings, change, "apply")
    _run(settings, change, "validate", started="2026-01-01T10:02:00+00:00")
    assert _missing(settings, change.change_id, operator="alice") == []


def test_a_note_refers_to_a_line_of_its_own_change(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    change = _open(settings)
    other = _open(settings, ticket="OPS-143")
    noted = changes.note_change(settings, change.change_id, by="carol", text="CAB on Friday")
    assert (noted.notes[0].refers_to, noted.notes[0].text) == (change.opened_seq, "CAB on Friday")
    with pytest.raises(
        ConfigError, match=f"ledger line {other.opened_seq} is not a line of change"
    ):
        changes.note_change(
            settings, change.change_id, by="carol", text="x", refers_to=other.opened_seq
        )


# -- what a target lacks ---------------------------------------------------------------------
def test_promotion_needs_a_validate_after_a_whole_live_apply_on_the_current_pin(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, approvals_required=0)
    change = _open(settings)
    _run(settings, change, "precheck")
    _run(settings, change, "validate", started="2026-01-01T09:00:00+00:00")
    _run(settings, change, "apply", partial="dry run")
    (lacking,) = _missing(settings, change.change_id)
    assert "has no succeeded apply and validate on staging" in lacking
    assert "(a dry run, or an apply up to a version, does not count)" in lacking
    _run(settings, change, "apply", status="failed")
    _run(settings, change, "apply", target="production")
    _run(settings, change, "apply")
    (lacking,) = _missing(settings, change.change_id)
    assert "has no succeeded validate after that apply on staging" in lacking, (
        "a validate before the apply is no evidence"
    )
    _run(settings, change, "validate", started="2026-01-01T10:01:00+00:00")
    assert _missing(settings, change.change_id) == []


def test_a_rollback_on_staging_voids_the_evidence_before_it_a_rehearsal_does_not(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, approvals_required=0)
    change = _open(settings)
    _run(settings, change, "precheck")
    _run(settings, change, "apply")
    _run(settings, change, "validate", started="2026-01-01T10:02:00+00:00")
    _run(settings, change, "rollback", rehearsal=True)
    assert _missing(settings, change.change_id) == [], "a rehearsal rolls back a scratch copy"
    _run(settings, change, "rollback")
    (lacking,) = _missing(settings, change.change_id)
    assert "has no succeeded precheck, apply and validate on staging" in lacking, (
        "staging was rolled back: what passed there before no longer stands"
    )


def test_in_a_signed_archive_forged_approvals_and_evidence_count_for_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    monkeypatch.setenv("THORBIS_SIGNING_KEY", base64.b64encode(raw).decode())
    public = signing.Signer(key).public_key.text
    settings = _settings(tmp_path, approvals_required=1)
    settings = settings_from_mapping(
        {"runbook": {"migrations_dir": "migrations"}, "reports": {"public_key": public},
         "targets": {"staging": {"dsn_env": "S"},
                     "production": {"dsn_env": "P", "production": True, "promote_from": "staging"}}},
        root=tmp_path, env={},
    )  # fmt: skip
    change = _open(settings)
    for runbook in ("precheck", "apply"):
        _run(settings, change, runbook)  # appended unsigned, as a hand-written line would be
    _run(settings, change, "validate", started="2026-01-01T10:02:00+00:00")
    forged = {"kind": "change", "change_id": change.change_id, "action": "approved", "by": "carol",
              "at": "2026-01-01T11:00:00+00:00", "files": {}, "pin": change.pin_sha256,
              "comment": "", "refers_to": change.opened_seq}  # fmt: skip
    ledger.append(ledger.reports_root(settings), forged)
    promotion_gap, approval_gap = _missing(settings, change.change_id)
    assert "has no succeeded precheck, apply and validate on staging" in promotion_gap
    assert "has no approval for production" in approval_gap
    changes.approve_change(settings, change.change_id, approver="carol")  # signed
    assert _missing(settings, change.change_id) == [promotion_gap]


def test_approvals_by_the_operator_or_author_do_not_count_under_separation(tmp_path: Path) -> None:
    settings = _settings(tmp_path, promote_from=None, approvals_required=2)
    change = _open(settings)
    changes.approve_change(settings, change.change_id, approver="bob")
    (lacking,) = _missing(settings, change.change_id, operator="bob")
    assert lacking.endswith(
        "has no approval for production (2 required, 0 given by someone other than the "
        "operator bob and the author alice)"
    )
    changes.approve_change(settings, change.change_id, approver="carol")
    (lacking,) = _missing(settings, change.change_id, operator="bob")
    assert "has too few approvals for production (2 required, 1 given" in lacking
    assert _missing(settings, change.change_id, operator="dave") == []


def test_rollback_precheck_and_dry_runs_are_never_held_up_by_paperwork(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    change = _open(settings)
    for runbook in ("rollback", "precheck", "validate"):
        assert _missing(settings, change.change_id, runbook=runbook) == []
    assert _missing(settings, change.change_id, dry_run=True) == []
    production = settings.target("production")
    promotion.require_allowed(
        None, production, operator="bob", runbook="rollback", settings=settings
    )
    with pytest.raises(ChangeRefused, match="changes only under a change"):
        promotion.require_allowed(
            None, production, operator="bob", runbook="apply", settings=settings
        )
    (tmp_path / "migrations" / "20250101000000_create_items.down.sql").write_text("SELECT 1;")
    (differs,) = _missing(settings, change.change_id, runbook="rollback")
    assert "20250101000000_create_items.down.sql differs from the pinned set" in differs


def test_an_emergency_change_is_warned_about_not_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    change = _open(settings, category="emergency")
    production = settings.target("production")
    # The CLI stops our logger propagating to the root, where caplog listens: listen on it.
    logger = logging.getLogger("thorbis_runbook.promotion")
    logger.addHandler(caplog.handler)
    try:
        promotion.require_allowed(
            change, production, operator="bob", runbook="apply", settings=settings
        )
    finally:
        logger.removeHandler(caplog.handler)
    assert f"emergency change {change.change_id} is overdue: approve it afterwards" in caplog.text
    (state,) = [s for s in promotion.target_states(change, settings) if s.target == "production"]
    assert state.state == "ready" and not state.missing[0].blocking
    assert promotion.change_state(change, [state]) == "emergency; open"


def test_a_target_the_change_was_applied_to_stays_applied_when_the_folder_moves_on(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, approvals_required=0)
    change = _open(settings)
    _run(settings, change, "apply")
    (tmp_path / "migrations" / "20250201000000_later.sql").write_text("SELECT 1;")
    loaded = changes.load_change(ledger.reports_root(settings), change.change_id)
    states = {s.target: s for s in promotion.target_states(loaded, settings)}
    assert states["staging"].state == "applied", "what ran there stays the record"
    assert "is not in the pinned set" in states["staging"].missing[0].what
    assert states["production"].state == "blocked"
