"""Benchmark: the signed archive as it grows: appending a line, rendering the pages, verifying.

For each size N (default 100, 1,000 and 5,000 runs) the script builds an archive the way the
pipeline does: one folder per run under reports/local/<run_id>/ holding a summary.json, an
executed notebook and two HTML reports of a realistic size (``--run-kb``, default 600 KB per run,
what a precheck run of the Thorbis schema archives), one signed ledger line per run, and a
change every 10 runs (opened, approved) so the change pages are part of the work. Then it times:

- ``append``: one more signed ledger line (the median of ``--repeats`` appends at size N);
- ``render``: every derived page written again (index.html and every change page), as the
  pipeline does after each run;
- ``verify``: ``thorbis-runbook reports verify --archive DIR --public-key KEY`` as an auditor
  runs it (wall clock, Python start-up included);
- ``sha256sum``: the raw floor, ``sha256sum`` over every file of the archive (GNU coreutils,
  one process through xargs), which is the least any verification of every byte costs.

Medians, the ratio of verify to the sha256sum floor, and the growth per 1,000 runs are printed
and written to ``benchmarks/results/archive_growth-<timestamp>.json`` (git-ignored).

Run: ``.venv/bin/python benchmarks/archive_growth.py [--sizes 100,1000,5000] [--repeats 5]
[--run-kb 600]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from thorbis_runbook import archive, ledger, signing
from thorbis_runbook.pins import PinnedFile, PinnedSet

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
BIN = Path(sys.executable).parent
START = datetime(2026, 1, 1, tzinfo=UTC)


def _summary(run_id: str, index: int, change_id: str) -> dict[str, Any]:
    started = START + timedelta(minutes=index)
    return {
        "runbook": "precheck", "run_id": run_id, "target": "local", "status": "succeeded",
        "started": started.isoformat(), "finished": (started + timedelta(seconds=9)).isoformat(),
        "operator": "bench", "git_commit": "0" * 40, "change_id": change_id,
        "checks": [
            {"report": "precheck", "name": f"check {n}", "status": "pass", "observed": n,
             "threshold": 10, "detail": "synthetic"} for n in range(30)
        ],
        "figures": {"benchmark_median_ms": {"business list": 1.5, "customer search": 4.2}},
    }  # fmt: skip


def _write_run(root: Path, run_id: str, index: int, change_id: str, run_kb: int) -> Path:
    folder = root / "local" / run_id
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(_summary(run_id, index, change_id)))
    # Three report files share the size: the executed notebook and its two HTML views.
    block = secrets.token_hex(512).encode()
    for name, share in (
        ("precheck.ipynb", 0.2),
        ("precheck.html", 0.45),
        ("precheck.audit.html", 0.35),
    ):
        size = int(run_kb * 1024 * share)
        with (folder / name).open("wb") as out:
            for _ in range(size // len(block)):
                out.write(block)
            out.write(block[: size % len(block)])
    return folder


def _pin(root: Path, change_id: str) -> dict[str, str]:
    pin = PinnedSet(
        tuple(PinnedFile(f"2025013100000{n}", "forward", f"2025013100000{n}_m{n}.sql", "a" * 64, 100)
              for n in range(1, 6)),
        "0" * 40,
    )  # fmt: skip
    path = root / "changes" / change_id / "pin-1.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pin.canonical())
    return {f"changes/{change_id}/pin-1.json": ledger.sha256_file(path)}


def build(root: Path, size: int, signer: signing.Signer, run_kb: int) -> None:
    """An archive of ``size`` runs, a change every 10 runs, every line signed."""
    change_id = ""
    for index in range(size):
        if index % 10 == 0:
            change_id = f"CHG-20260101-{index:06x}"
            at = (START + timedelta(minutes=index)).isoformat()
            ledger.append(root, {
                "kind": "change", "change_id": change_id, "action": "opened", "by": "author",
                "at": at, "files": _pin(root, change_id), "ticket": f"OPS-{index}",
                "reason": "benchmark", "category": "normal", "planned_start": "",
                "planned_end": "", "pin": "p", "pin_number": 1, "git_commit": "0" * 40,
            }, signer=signer)  # fmt: skip
            ledger.append(root, {
                "kind": "change", "change_id": change_id, "action": "approved", "by": "approver",
                "at": at, "files": {}, "pin": "p", "comment": "ok", "refers_to": 0,
            }, signer=signer)  # fmt: skip
        run_id = f"{(START + timedelta(minutes=index)):%Y%m%dT%H%M%SZ}-{index:06x}"
        folder = _write_run(root, run_id, index, change_id, run_kb)
        summary = _summary(run_id, index, change_id)
        ledger.append(root, {
            "kind": "run", "run_id": run_id, "runbook": "precheck", "target": "local",
            "status": "succeeded", "operator": "bench", "started": summary["started"],
            "finished": summary["finished"], "change_id": change_id, "pin": "p",
            "files": ledger.run_files(root, folder),
        }, signer=signer)  # fmt: skip


def _timed(action: Any) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def _append_once(root: Path, signer: signing.Signer, n: int) -> None:
    ledger.append(root, {"kind": "change", "change_id": "CHG-20260101-ffffff", "action": "note",
                         "by": "bench", "at": START.isoformat(), "files": {}, "text": f"n{n}",
                         "refers_to": 1}, signer=signer)  # fmt: skip


def measure(
    size: int, repeats: int, run_kb: int, signer: signing.Signer, public: str
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"archive-{size}-"))
    root = work / "reports"
    try:
        began = time.perf_counter()
        build(root, size, signer, run_kb)
        archive.render_pages(root)
        built = time.perf_counter() - began
        files = [str(p) for p in root.rglob("*") if p.is_file()]
        total_bytes = sum(os.path.getsize(f) for f in files)
        verify_cmd = [str(BIN / "thorbis-runbook"), "reports", "verify", "--archive", str(root),
                      "--public-key", public, "--json"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run(verify_cmd, capture_output=True, env=env, check=False)  # warm-up
        timings: dict[str, list[float]] = {
            "verify": [],
            "sha256sum": [],
            "render": [],
            "append": [],
        }
        for repeat in range(repeats):
            began = time.perf_counter()
            done = subprocess.run(verify_cmd, capture_output=True, env=env, check=False)
            timings["verify"].append(time.perf_counter() - began)
            if done.returncode != 0:
                raise SystemExit(
                    f"verify failed on the benchmark archive:\n{(done.stdout + done.stderr)[-2000:]}"
                )
            began = time.perf_counter()
            subprocess.run(["xargs", "-0", "sha256sum"], input="\0".join(files).encode(),
                           capture_output=True, check=True)  # fmt: skip
            timings["sha256sum"].append(time.perf_counter() - began)
            timings["render"].append(_timed(lambda: archive.render_pages(root)))
            timings["append"].append(_timed(lambda n=repeat: _append_once(root, signer, n)))
        medians = {name: statistics.median(values) for name, values in timings.items()}
        return {
            "runs": size, "files": len(files), "bytes": total_bytes, "build_s": built,
            "median_s": medians, "samples_s": timings,
            "verify_over_sha256sum": medians["verify"] / medians["sha256sum"],
        }  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--run-kb", type=int, default=600)
    args = parser.parse_args()
    signer = signing.Signer(Ed25519PrivateKey.generate())
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        result = measure(size, args.repeats, args.run_kb, signer, signer.public_key.text)
        results.append(result)
        m = result["median_s"]
        print(
            f"{size:>6} runs, {result['bytes'] / 2**20:8.1f} MiB: verify {m['verify']:7.2f} s "
            f"(sha256sum {m['sha256sum']:6.2f} s, {result['verify_over_sha256sum']:.2f}x), "
            f"render {m['render']:6.2f} s, append {m['append'] * 1000:7.1f} ms",
            flush=True,
        )
    for before, after in itertools.pairwise(results):
        per_k = 1000 / (after["runs"] - before["runs"])
        growth = {
            k: (after["median_s"][k] - before["median_s"][k]) * per_k for k in after["median_s"]
        }
        print(f"growth per 1,000 runs between {before['runs']} and {after['runs']}: "
              + ", ".join(f"{k} {v:.3f} s" for k, v in growth.items()))  # fmt: skip
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"archive_growth-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(),
               "load": os.getloadavg()}  # fmt: skip
    out.write_text(
        json.dumps({"machine": machine, "run_kb": args.run_kb, "results": results}, indent=2)
    )
    print(f"written {out}")


if __name__ == "__main__":
    main()
