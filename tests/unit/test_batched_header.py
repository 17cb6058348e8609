"""The `-- runbook:batched` header and its placeholders, read with PostgreSQL's own scanner."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from thorbis_runbook.backfill import BatchRefused
from thorbis_runbook.errors import MigrationFileError
from thorbis_runbook.migrations import load_migration
from thorbis_runbook.statements import (
    BatchedFileError,
    ObjectName,
    batched_spec,
    bound_batched,
    parseable_batched,
    placeholder_spans,
)

TEXT = (
    '-- runbook:batched table="Sales App".orders key="OrderId" batch_size=500 batch_time=1s '
    "max_batch_size=9000\n"
    "UPDATE \"Sales App\".orders SET note = 'at 50% :batch_start' -- not :batch_end here\n"
    ' WHERE "OrderId" > :batch_start AND "OrderId" <= :batch_end AND ok::text <> \'é\';\n'
)


def test_the_header_reads_quoted_names_and_sizes() -> None:
    spec = batched_spec(TEXT)
    assert spec is not None
    assert spec.table == ObjectName("Sales App", "orders") and spec.key == "OrderId"
    assert (spec.batch_size, spec.batch_time_ms, spec.max_batch_size) == (500, 1000, 9000)
    assert batched_spec("UPDATE t SET a = 1;") is None
    assert spec.rest_pct == 100, "by default the walk rests as long as each batch took"


@pytest.mark.parametrize(("rest", "expected"), [("0", 0), ("50%", 50), ("250%", 250)])
def test_rest_is_a_share_of_the_batch_time(rest: str, expected: int) -> None:
    spec = batched_spec(f"-- runbook:batched table=t key=id rest={rest}\nUPDATE t SET a = 1;")
    assert spec is not None and spec.rest_pct == expected


@pytest.mark.parametrize("rest", ["2000%", "-5%", "fast", "1.5"])
def test_a_rest_that_is_no_share_is_refused(rest: str) -> None:
    with pytest.raises(BatchedFileError, match=f"rest={re.escape(rest)}, which is not a share"):
        batched_spec(f"-- runbook:batched table=t key=id rest={rest}\nUPDATE t SET a = 1;")


def test_placeholders_in_strings_and_comments_are_left_alone() -> None:
    names = [name for _start, _end, name in placeholder_spans(TEXT)]
    assert names == ["batch_start", "batch_end"], "only the two in the WHERE clause"
    parseable = parseable_batched(TEXT)
    assert len(parseable) == len(TEXT) and parseable.count("\n") == TEXT.count("\n")
    assert '"OrderId" > $1 ' in parseable and "'at 50% :batch_start'" in parseable
    bound = bound_batched(TEXT)
    assert "'at 50%% :batch_start'" in bound, "every % doubled for the driver"
    assert '> %(batch_start)s AND "OrderId" <= %(batch_end)s AND' in bound


def test_text_in_other_scripts_before_a_placeholder_moves_nothing() -> None:
    text = (
        "-- runbook:batched table=app.menu key=id\n"
        "UPDATE app.menu SET label = 'Übersicht café 東京' "
        "WHERE id > :batch_start AND id <= :batch_end;\n"
    )
    assert [name for *_, name in placeholder_spans(text)] == ["batch_start", "batch_end"]
    assert "WHERE id > $1           AND id <= $2        ;" in parseable_batched(text)
    assert "'Übersicht café 東京' WHERE id > %(batch_start)s" in bound_batched(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-- runbook:batched table=t key=id\n-- runbook:batched table=t key=id\n", "2 -- runbook"),
        ("-- runbook:batched table=t key=id batch_size=-3\n", "batch_size=-3"),
        ("-- runbook:batched table=t key=id batch_time=fast\n", "batch_time=fast"),
        ("-- runbook:batched table=t key=id batch_size=10 max_batch_size=5\n", "smaller"),
        ("-- runbook:batched table=t key=id key=id2\n", "repeats key="),
        ("-- runbook:batched table=t key=id loose\n", "'loose'"),
        ("-- runbook:batched table=t;drop key=id\n", "not a table name"),
    ],
)
def test_a_bad_header_is_one_sentence_with_its_fix(text: str, expected: str) -> None:
    with pytest.raises(BatchedFileError) as refused:
        batched_spec(text + "UPDATE t SET a = 1 WHERE id > :batch_start AND id <= :batch_end;")
    assert expected in refused.value.message and refused.value.hint


def test_a_file_parameter_of_its_own_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "20250101000000_fill.sql"
    path.write_text(
        "-- runbook:batched table=t key=id\n"
        "UPDATE t SET a = $1 WHERE id > :batch_start AND id <= :batch_end;\n",
        encoding="utf-8",
    )
    with pytest.raises(MigrationFileError) as refused:
        load_migration(path)
    assert "line 2 holds the parameter $1" in refused.value.message


def test_a_batched_file_also_marked_no_transaction_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "20250101000000_fill.sql"
    path.write_text(
        "-- runbook:batched table=t key=id\n-- runbook:no-transaction\n"
        "UPDATE t SET a = 1 WHERE id > :batch_start AND id <= :batch_end;\n",
        encoding="utf-8",
    )
    with pytest.raises(MigrationFileError, match="also says -- runbook:no-transaction"):
        load_migration(path)


def test_a_good_batched_file_loads_and_its_refusal_pickles(tmp_path: Path) -> None:
    path = tmp_path / "20250101000000_fill.sql"
    path.write_text(TEXT, encoding="utf-8")
    migration = load_migration(path)
    assert migration.batched is not None and not migration.transactional
    assert migration.statements[0].kind == "UpdateStmt" and migration.statements[0].line == 2
    refused = BatchRefused("key x is nullable", "use key=id", version="1", line=1)
    again = pickle.loads(pickle.dumps(refused))
    assert isinstance(again, BatchRefused) and again.exit_code == 2 and again.hint == "use key=id"
