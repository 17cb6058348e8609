"""Run thorbis-runbook lint and squawk (pip squawk-cli, not a dependency) on the same files.

The corpus is the lint unit tests' firing and quiet examples (tests/unit/test_lint.py CASES),
one file each, plus the Thorbis migrations. Prints, per case, which rules each linter raised.

Run: ``.venv/bin/pip install squawk-cli && .venv/bin/python benchmarks/lint_vs_squawk.py``.
"""

from __future__ import annotations

import json
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


def squawk(paths: list[Path]) -> list[dict[str, str]]:
    exe = shutil.which("squawk", path=str(Path(sys.executable).parent)) or "squawk"
    out = subprocess.run(
        [exe, "--reporter", "json", *map(str, paths)], capture_output=True, text=True
    )
    return json.loads(out.stdout or "[]")


def main() -> int:
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
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
