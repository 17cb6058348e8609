"""Planning: files joined with history rows, states, blockers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import write_migrations
from thorbis_runbook.errors import PlanBlocked
from thorbis_runbook.history import HistoryRow
from thorbis_runbook.migrations import discover
from thorbis_runbook.plan import build_plan

NOW = datetime(2025, 2, 1, tzinfo=UTC)


def _row(version: str, name: str, checksum: str, status: str = "applied") -> HistoryRow:
    return HistoryRow(version, name, checksum, status, True, NOW, "ops", "run-1", 5, 1, None, None)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_migrations(tmp_path / "m", {
        "20250101000000_a.sql": "SELECT 1;",
        "20250102000000_b.sql": "SELECT 2;",
        "20250103000000_c.sql": "SELECT 3;",
    })  # fmt: skip


def test_states_of_every_kind(folder: Path) -> None:
    migrations = discover(folder)
    a, b, _ = migrations.migrations
    history = [
        _row(a.version, a.name, a.checksum),
        _row(b.version, b.name, "0" * 64),
        _row("20241231000000", "gone", "f" * 64),
    ]
    plan = build_plan(migrations, history)
    states = {row.version: row.state for row in plan.rows}
    assert states == {
        "20241231000000": "missing file", a.version: "applied", b.version: "drifted",
        "20250103000000": "pending",
    }  # fmt: skip
    assert [m.version for m in plan.pending] == ["20250103000000"]
    assert plan.drifted == ("20250102000000_b.sql",) and plan.missing == (
        "20241231000000_gone.sql",
    )
    assert plan.current_version == "20250102000000"
    with pytest.raises(PlanBlocked, match="changed after they were applied"):
        plan.check_blockers()
    with pytest.raises(PlanBlocked, match="have no file any more"):
        plan.check_blockers(allow_drift=True)
    plan.check_blockers(allow_drift=True, allow_missing=True)


def test_failed_and_rolled_back_versions_are_pending_again(folder: Path) -> None:
    migrations = discover(folder)
    a, b, c = migrations.migrations
    plan = build_plan(migrations, [
        _row(a.version, a.name, "changed-but-failed", "failed"),
        _row(b.version, b.name, b.checksum, "rolled_back"),
    ])  # fmt: skip
    assert [m.version for m in plan.pending] == [a.version, b.version, c.version]
    assert plan.drifted == ()
    assert [row.state for row in plan.rows] == ["failed", "pending", "pending"]


def test_out_of_order_is_detected_and_to_version_limits(folder: Path) -> None:
    migrations = discover(folder)
    a, b, _ = migrations.migrations
    plan = build_plan(migrations, [_row(b.version, b.name, b.checksum)])
    assert plan.out_of_order == ("20250101000000_a.sql",)
    with pytest.raises(PlanBlocked, match="older than the newest applied"):
        plan.check_blockers()
    limited = build_plan(migrations, [], to_version=b.version)
    assert [m.version for m in limited.pending] == [a.version, b.version]
