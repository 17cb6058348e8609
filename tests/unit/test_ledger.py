"""The ledger names any edited, removed or added file and any reordered or dropped line."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from thorbis_runbook import ledger, ledger_verify


def _archive_run(root: Path, run_id: str, text: str = "report") -> None:
    folder = root / "local" / run_id
    folder.mkdir(parents=True)
    (folder / "apply.html").write_text(f"<p>{text}</p>")
    (folder / "summary.json").write_text(f'{{"run_id": "{run_id}"}}')
    ledger.append(
        root, {"run_id": run_id, "target": "local", "files": ledger.run_files(root, folder)}
    )


def _failures(root: Path) -> list[tuple[str, str]]:
    return [(c.name, str(c.observed)) for c in ledger_verify.verify(root) if c.status == "fail"]


def test_an_untouched_archive_verifies(tmp_path: Path) -> None:
    for run in ("r1", "r2", "r3"):
        _archive_run(tmp_path, run)
    report = ledger_verify.verify(tmp_path)
    assert report.ok and _failures(tmp_path) == []
    assert [e["seq"] for e in ledger.entries(tmp_path)] == [1, 2, 3]


def test_an_edited_byte_is_named(tmp_path: Path) -> None:
    _archive_run(tmp_path, "r1")
    page = tmp_path / "local" / "r1" / "apply.html"
    page.write_bytes(page.read_bytes().replace(b"report", b"rep0rt"))
    assert _failures(tmp_path) == [("file local/r1/apply.html", "edited")]


def test_a_deleted_run_and_an_added_file_are_named(tmp_path: Path) -> None:
    _archive_run(tmp_path, "r1")
    _archive_run(tmp_path, "r2")
    for path in (tmp_path / "local" / "r1").iterdir():
        path.unlink()
    (tmp_path / "local" / "r2" / "extra.html").write_text("slipped in")
    assert sorted(_failures(tmp_path)) == [
        ("file local/r1/apply.html", "removed"), ("file local/r1/summary.json", "removed"),
        ("file local/r2/extra.html", "added"),
    ]  # fmt: skip


def test_swapped_and_dropped_lines_break_the_chain(tmp_path: Path) -> None:
    for run in ("r1", "r2", "r3"):
        _archive_run(tmp_path, run)
    path = tmp_path / ledger.LEDGER_FILE
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2], lines[1]]) + "\n")
    assert ("ledger line 2", "chain broken") in _failures(tmp_path)
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    assert ("ledger line 2", "chain broken") in _failures(tmp_path)


def _append_many(root: str, worker: int) -> None:
    for n in range(20):
        ledger.append(Path(root), {"run_id": f"w{worker}-{n}", "files": {}})


def test_concurrent_appends_all_land_intact(tmp_path: Path) -> None:
    processes = [
        multiprocessing.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    entries = ledger.entries(tmp_path)
    assert len(entries) == 80 and len({e["run_id"] for e in entries}) == 80
    assert ledger_verify.verify(tmp_path).ok
