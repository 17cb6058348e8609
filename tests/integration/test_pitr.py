"""Point-in-time recovery on a throwaway embedded server of its own (it restarts the server)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import MIGRATIONS, status_of
from thorbis_runbook import db, embedded, migrate, seed
from thorbis_runbook.config import Settings, settings_from_mapping
from thorbis_runbook.endpoint import resolve
from thorbis_runbook.migrate import ApplyRequest
from thorbis_runbook.recovery import pitr, rollback

EXTRA = "20250301000000_work_order_rating"


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Settings]:
    state = Path(tempfile.mkdtemp(prefix="runbook-pitr-"))
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, folder)
    (folder / f"{EXTRA}.sql").write_text(
        "ALTER TABLE business_hs.work_orders ADD COLUMN rating int;\n"
    )
    (folder / f"{EXTRA}.down.sql").write_text(
        "ALTER TABLE business_hs.work_orders DROP COLUMN rating;\n"
    )
    data = {
        "runbook": {
            "migrations_dir": str(folder),
            "state_dir": str(state),
            "default_target": "local",
        },
        "targets": {"local": {"embedded": True, "database": "thorbis"}},
    }
    try:
        yield settings_from_mapping(data, root=tmp_path, env={})
    finally:
        embedded.destroy(state)
        shutil.rmtree(state, ignore_errors=True)


def _run(dsn: str, statement: str) -> list[tuple[object, ...]]:
    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        cur.execute(statement)
        return cur.fetchall() if cur.description else []


def test_point_in_time_loses_exactly_the_writes_after_the_restore_point(
    own_server: Settings,
) -> None:
    settings = own_server
    target = settings.target()
    migrate.apply(resolve(settings), ApplyRequest(to_version="20250131000008")).raise_for_failure()
    dsn = resolve(settings, target).dsn
    with db.connection(dsn, target_name="local") as conn:
        seed.seed(conn, businesses=2, work_orders_per_business=5, customers_per_business=3)
    setup = pitr.enable(resolve(settings, target))
    assert setup.restarted and (setup.base_backup / "PG_VERSION").is_file()
    _run(dsn, "UPDATE business_hs.work_orders SET priority = 'low' WHERE description <> ''")
    kept = _run(dsn, "SELECT count(*) FROM business_hs.work_orders WHERE priority = 'low'")[0][0]
    time.sleep(0.05)
    run = migrate.apply(resolve(settings), ApplyRequest())
    assert run.ok and len(run.steps) == 1
    _run(dsn, "UPDATE business_hs.work_orders SET priority = 'urgent', rating = 5 "
              "WHERE id IN (SELECT id FROM business_hs.work_orders ORDER BY id LIMIT 3)")  # fmt: skip
    _run(dsn, "DELETE FROM business_core.invoices WHERE id IN "
              "(SELECT id FROM business_core.invoices ORDER BY id LIMIT 2)")  # fmt: skip

    result = rollback.rollback(
        resolve(settings), rollback.RollbackRequest("point_in_time", run_id=run.run_id)
    )

    assert result.ok, result.checks.to_json()
    lost = {(r.table, r.operation): r.rows for r in result.data_loss}
    assert lost == {
        ("business_hs.work_orders", "UPDATE"): 3,
        ("business_core.invoices", "DELETE"): 2,
    }
    assert all(r.first_at >= result.restore_point for r in result.data_loss)
    assert (
        _run(dsn, "SELECT count(*) FROM business_hs.work_orders WHERE priority = 'low'")[0][0]
        == kept
    )
    assert (
        _run(dsn, "SELECT count(*) FROM business_hs.work_orders WHERE priority = 'urgent'")[0][0]
        == 0
    )
    columns = _run(
        dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = 'work_orders'"
    )
    assert ("rating",) not in columns
    assert status_of(settings).plan.pending[0].version == "20250301000000"
    assert (settings.state_dir / "pgdata.before-pitr" / "PG_VERSION").is_file()
    assert {"data_loss_report", "prepare", "recover", "total"} <= set(result.timings)
