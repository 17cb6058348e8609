"""Run thorbis-runbook lint and squawk (pip squawk-cli, not a dependency) on the same files.

The corpus is the lint unit tests' firing and quiet examples (tests/unit/test_lint.py CASES),
one file each, plus the Thorbis migrations. Prints, per case, which rules each linter raised.

``--corpus DIR`` adds an outside corpus of labelled cases in eugene's example layout
(``DIR/<ID>/bad.sql`` and ``good.sql``, each a short history whose steps start with a
``-- N.sql`` line): each step becomes a migration file of its own, in order, and the whole
history is linted as one folder, the way our runner would apply it. It is not in this
repository; docs/lint-vs-squawk.md says where it came from.

Run: ``.venv/bin/pip install squawk-cli && .venv/bin/python benchmarks/lint_vs_squawk.py
[--corpus DIR] [--squawk PATH]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.unit.test_lint import CASES  # noqa: E402
from thorbis_runbook.lint import lint_findings  # noqa: E402

SQUAWK = [shutil.which("squawk", path=str(Path(sys.executable).parent)) or "squawk"]
_STEP = re.compile(r"^--\s*(\d+)\.sql\s*$", re.MULTILINE)


def squawk(paths: list[Path]) -> list[dict[str, str]]:
    return squawk_run(paths)[0]


def squawk_run(paths: list[Path]) -> tuple[list[dict[str, str]], int]:
    """squawk's findings on the files, and its exit code (what a CI gate on it sees)."""
    out = subprocess.run(
        [*SQUAWK, "--reporter", "json", *map(str, paths)], capture_output=True, text=True
    )
    return json.loads(out.stdout or "[]"), out.returncode


def _history(text: str, folder: Path) -> list[Path]:
    """Write each ``-- N.sql`` step of a case as a migration file (with down/verify stubs)."""
    folder.mkdir(parents=True)
    marks = list(_STEP.finditer(text))
    paths = []
    for number, mark in enumerate(marks, start=1):
        end = marks[number].start() if number < len(marks) else len(text)
        path = folder / f"2025030100{number:04d}_step_{mark[1]}.sql"
        path.write_text(text[mark.end() : end].strip() + "\n")
        for suffix in (".down.sql", ".verify.sql"):
            path.with_name(path.name[:-4] + suffix).write_text("SELECT 1;\n")
        paths.append(path)
    return paths


def outside_corpus(corpus: Path, scratch: Path) -> None:
    """Lint each labelled case of an outside corpus with both linters; print one row each."""
    print("\n| case | label | thorbis-runbook lint (fail / warn) | exit | squawk | exit |")
    print("|---|---|---|---|---|---|")
    totals: dict[str, list[int]] = {"bad": [0, 0, 0], "good": [0, 0, 0]}
    for case in sorted(p for p in corpus.iterdir() if p.is_dir()):
        for label in ("bad", "good"):
            source = case / f"{label}.sql"
            if not source.is_file():
                continue
            paths = _history(source.read_text(), scratch / case.name / label)
            ours = lint_findings(paths)
            fails = sorted({f.rule for f in ours if f.status == "fail"})
            warns = sorted({f.rule for f in ours if f.status == "warn"})
            theirs, code = squawk_run(paths)
            their_rules = sorted({i["rule_name"] for i in theirs} - _SQUAWK_EVERYWHERE)
            their_exit = int(code != 0)
            totals[label][0] += 1
            totals[label][1] += bool(fails)
            totals[label][2] += their_exit
            shown = f"{', '.join(fails) or '-'} / {', '.join(warns) or '-'}"
            row = (case.name, label, shown, str(int(bool(fails))), ", ".join(their_rules) or "-")
            print("| " + " | ".join(row) + f" | {their_exit} |")
    for label, (cases, ours_exit, theirs_exit) in totals.items():
        print(f"{label}: {cases} cases; lint exits 1 on {ours_exit}, squawk on {theirs_exit}")


# squawk rules that fire on nearly every file and say nothing about the case.
_SQUAWK_EVERYWHERE = {"prefer-robust-stmts", "require-statement-timeout", "require-lock-timeout"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="an outside corpus in eugene's layout")
    parser.add_argument("--squawk", help="the squawk executable (default: beside python)")
    args = parser.parse_args()
    if args.squawk:
        SQUAWK[0] = args.squawk
    folder = Path(tempfile.mkdtemp(prefix="lint-corpus-"))
    rows = []
    for number, (rule, bad, good) in enumerate(CASES, start=1):
        for kind, text in (("bad", bad), ("good", good)):
            path = folder / f"20250301{number:04d}{'01' if kind == 'bad' else '02'}_{kind}.sql"
            path.write_text(text + "\n")
            for suffix in (".down.sql", ".verify.sql"):
                path.with_name(path.name[:-4] + suffix).write_text("SELECT 1;\n")
            ours = sorted({f.rule for f in lint_findings([path])})
            theirs = sorted({i["rule_name"] for i in squawk([path])})
            rows.append((rule, kind, ", ".join(ours) or "-", ", ".join(theirs) or "-"))
    print("| case | example | thorbis-runbook lint | squawk |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    forward = sorted(p for p in (REPO / "migrations").glob("*.sql") if p.name.count(".") == 1)
    ours_thorbis = Counter(f"{f.rule} ({f.level})" for f in lint_findings(forward))
    theirs_thorbis = Counter(f"{i['rule_name']} ({i['level'].lower()})" for i in squawk(forward))
    print(f"\nThorbis migrations ({len(forward)} forward files)")
    print("thorbis-runbook lint:", dict(sorted(ours_thorbis.items())))
    print("squawk:", dict(sorted(theirs_thorbis.items())))
    if args.corpus:
        outside_corpus(args.corpus, folder / "outside")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
