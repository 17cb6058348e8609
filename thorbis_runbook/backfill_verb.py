"""The `backfill` verb: pause, resume and show the batched data migrations of a target.

A pause is a row in the target's runbook schema that a running batched migration reads between
two batches, so it works from any machine, whoever started the run, and survives the runner.
"""

from __future__ import annotations

import argparse

from . import backfill
from .config import Settings
from .endpoint import resolve
from .output import print_json, print_table, say
from .runs import operator_name


def backfill_verb(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch `backfill pause|resume|status`; returns the exit code."""
    endpoint = resolve(settings, args.target)
    with endpoint.connection(f"thorbis-runbook backfill {args.action}") as conn:
        if args.action == "pause":
            backfill.pause(
                conn, target=endpoint.target, operator=operator_name(), reason=args.reason
            )
            say(
                f"batched migrations on {endpoint.name} pause before their next batch; "
                f"thorbis-runbook backfill resume --target {endpoint.name} lets them go on"
            )
            return 0
        if args.action == "resume":
            was = backfill.resume(conn)
            say(
                f"resumed: batched migrations on {endpoint.name} go on (paused by {was})"
                if was
                else f"nothing to resume: batched migrations on {endpoint.name} were not paused"
            )
            return 0
        report = backfill.batch_status(conn, target=endpoint.target)
    if args.json:
        print_json({
            "target": report.target, "paused": report.paused, "paused_by": report.paused_by,
            "paused_at": report.paused_at, "reason": report.reason,
            "walks": [dict(zip(backfill.STATUS_COLUMNS, w, strict=True)) for w in report.walks],
        })  # fmt: skip
        return 0
    if report.walks:
        print_table(backfill.STATUS_COLUMNS, report.walks)
        print()
    print(report.describe())
    return 0
