"""The pinned set of a change: what it covers, how it differs, and apply's own comparison."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import make_settings, write_migrations
from thorbis_runbook import migrate
from thorbis_runbook.endpoint import Endpoint
from thorbis_runbook.errors import ChangeRefused, ConfigError, MigrationFileError
from thorbis_runbook.pins import PinnedSet, pin_folder

FILES = {
    "20250101000000_create_items.sql": "CREATE TABLE items (id int);",
    "20250101000000_create_items.down.sql": "DROP TABLE items;",
    "20250101000000_create_items.verify.sql": "SELECT 'items'::regclass;",
    "20250102000000_index_items.sql": "CREATE INDEX items_id_ix ON items (id);",
}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_pin_covers_every_file_with_its_role_and_hash(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "migrations", FILES)
    pin = pin_folder(folder, git_commit="abc123")
    assert [(f.name, f.version, f.role) for f in pin.files] == [
        ("20250101000000_create_items.down.sql", "20250101000000", "down"),
        ("20250101000000_create_items.sql", "20250101000000", "forward"),
        ("20250101000000_create_items.verify.sql", "20250101000000", "verify"),
        ("20250102000000_index_items.sql", "20250102000000", "forward"),
    ]
    assert pin.by_name()["20250102000000_index_items.sql"].sha256 == _sha(FILES[
        "20250102000000_index_items.sql"
    ])  # fmt: skip
    assert set(pin.checksums()) == {
        "20250101000000_create_items.sql",
        "20250102000000_index_items.sql",
    }, "apply compares forward files; the facade compares the rest"
    assert pin.sha256 == hashlib.sha256(pin.canonical().encode("ascii")).hexdigest()
    again = PinnedSet.from_dict(json.loads(pin.canonical()))
    assert again == pin and again.git_commit == "abc123"


def test_differences_name_each_edited_added_and_removed_file(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "migrations", FILES)
    pin = pin_folder(folder)
    assert pin.differences(pin_folder(folder)) == []
    (folder / "20250102000000_index_items.sql").write_text(
        "CREATE INDEX items_id_ix ON items (id, id);"
    )
    (folder / "20250101000000_create_items.verify.sql").unlink()
    write_migrations(folder, {"20250103000000_more.sql": "SELECT 1;"})
    found = pin.differences(pin_folder(folder))
    assert found[0] == (
        "20250101000000_create_items.verify.sql was pinned but is gone from the migrations folder"
    )
    assert found[1].startswith(
        "20250102000000_index_items.sql differs from the pinned set (sha256 "
    )
    assert found[2] == (
        "20250103000000_more.sql is not in the pinned set (added after the change was pinned)"
    )


def test_a_pin_file_that_is_not_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pin-1.json"
    path.write_text('{"files": [{"name": 3}]}')
    with pytest.raises(ConfigError, match="not readable"):
        PinnedSet.read(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        PinnedSet.read(tmp_path / "pin-2.json")


def test_a_file_named_off_convention_cannot_be_pinned(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "migrations", {"add_items.sql": "SELECT 1;"})
    with pytest.raises(MigrationFileError):
        pin_folder(folder)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("edit", "differs from the pinned set"),
        ("add", "20250103000000_more.sql is not in the pinned set"),
        ("remove", "20250102000000_index_items.sql was pinned but is gone"),
    ],
)
def test_apply_refuses_files_that_differ_from_the_pin_before_it_connects(
    tmp_path: Path, change: str, problem: str
) -> None:
    folder = write_migrations(tmp_path / "migrations", FILES)
    pinned = pin_folder(folder).checksums()
    index = folder / "20250102000000_index_items.sql"
    if change == "edit":
        index.write_text("CREATE INDEX items_id_ix ON items (id) WHERE id > 0;")
    elif change == "add":
        write_migrations(folder, {"20250103000000_more.sql": "SELECT 1;"})
    else:
        index.unlink()
    settings = make_settings(tmp_path, folder)
    # No server answers here: a connection attempt would fail with another error.
    endpoint = Endpoint(settings, settings.target(), "postgresql://nobody@127.0.0.1:1/none")
    request = migrate.ApplyRequest(pinned=pinned, change_id="CHG-20261202-1a2b3c")
    with pytest.raises(ChangeRefused, match=problem) as refused:
        migrate.apply(endpoint, request)
    assert refused.value.message.startswith("change CHG-20261202-1a2b3c: migration ")
    assert "thorbis-runbook change update CHG-20261202-1a2b3c" in refused.value.hint
    assert refused.value.exit_code == 2
