"""The `fleet` verb: list a fleet's members, run a change across them, show where they stand, and
write the rollout as an Airflow DAG.

`fleet run` prints one line per finished member on stderr (a progress bar on a terminal),
then the summary table on stdout and the command that resumes it; exit 0 when every member is
done, 1 when one failed or a budget stopped the fleet, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import fleet_dag, fleet_run, fleets, pipeline
from .config import Settings
from .display import text_table
from .errors import ConfigError
from .fleet_member import MemberResult
from .fleet_status import counts, first_line, resume_command, run_error
from .ledger import reports_root
from .output import print_json, say
from .waves import Wave, plan

MEMBER_COLUMNS = ("member", "wave", "connection", "source")
RESULT_COLUMNS = ("member", "wave", "outcome", "seconds", "run ids", "error")
STATUS_COLUMNS = ("member", "wave", "state", "last run", "finished", "error")


def fleet(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch `fleet ACTION`; returns the exit code (errors are raised, as every verb's)."""
    return _ACTIONS[args.action](args, settings)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    chosen = fleets.load_fleet(settings, args.name)
    members = fleets.resolve_members(settings, chosen)
    waves = plan(chosen.waves, [m.name for m in members], fleet=chosen.name)
    wave_of = _wave_of(waves)
    if args.json:
        print_json({
            "fleet": chosen.name, "source": chosen.source, "runbooks": list(chosen.runbooks),
            "waves": [dict(w.spec.to_dict(), members=list(w.members)) for w in waves],
            "members": [
                {"member": m.name, "wave": wave_of[m.name], "connection": m.connection,
                 "source": m.source, "value": m.value}
                for m in members
            ],
        })  # fmt: skip
        return 0
    rows = [(m.name, wave_of[m.name], m.connection, m.source) for m in members]
    print(text_table(MEMBER_COLUMNS, rows))
    shape = ", ".join(f"{w.name} {len(w.members)} (parallel {w.spec.parallel})" for w in waves)
    print(f"\nfleet {chosen.name}: {len(members)} member(s) from {chosen.source}; waves: {shape}")
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    prepared = fleet_run.prepare(
        settings, args.name, change_id=args.change, runbooks=args.runbooks,
        pairs=args.parameter or [], confirm_production=args.confirm_production,
    )  # fmt: skip
    if args.dry_run:
        _print_plan(prepared)
        return 0
    todo = sum(len(prepared.to_run(wave)) for wave in prepared.waves)
    say(
        f"fleet run {prepared.fleet_run}: change {prepared.change_id} on fleet "
        f"{prepared.fleet.name}, {todo} of {len(prepared.members)} member(s) to run "
        f"({', '.join(prepared.runbooks)})"
    )
    with _Progress(total=todo, enabled=sys.stderr.isatty()) as bar:
        result = fleet_run.run_fleet(settings, prepared, progress=bar.update)
    print(text_table(RESULT_COLUMNS, result.rows()))
    tally = ", ".join(f"{n} {state}" for state, n in result.counts().items())
    print(f"\nfleet run {prepared.fleet_run} {result.outcome}: {tally}")
    if result.reason:
        print(result.reason)
    if not result.ok:
        print(f"resume: {prepared.resume_command}")
    _print_page(settings, prepared.fleet.name, prepared.change_id)
    return {fleet_run.SUCCEEDED: 0, fleet_run.INTERRUPTED: 130}.get(result.outcome, 1)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    chosen, members, waves, runbooks, states = fleet_run.fleet_state(
        settings, args.name, change_id=args.change, runbooks=args.runbooks
    )
    root = reports_root(settings)
    wave_of = _wave_of(waves)
    rows = []
    for member in members:
        state = states[member.name]
        last = state.runs[-1] if state.runs else {}
        error = state.error
        if not error and state.state == "failed" and last:
            error = run_error(root, last)
        last_run = f"{last.get('runbook')} {last.get('run_id')}" if last else ""
        rows.append((member.name, wave_of[member.name], state.state, last_run,
                     last.get("finished", ""), first_line(error)))  # fmt: skip
    resume = resume_command(chosen.name, args.change, runbooks)
    tally = counts(states.values())
    if args.json:
        print_json({
            "fleet": chosen.name, "change_id": args.change, "runbooks": list(runbooks),
            "counts": tally, "resume": resume,
            "members": [dict(zip(STATUS_COLUMNS, row, strict=True)) for row in rows],
        })  # fmt: skip
    else:
        print(text_table(STATUS_COLUMNS, rows))
        summary = ", ".join(f"{n} {state}" for state, n in tally.items())
        print(f"\nfleet {chosen.name}, change {args.change} ({', '.join(runbooks)}): {summary}")
        if tally.get("done", 0) < len(members):
            print(f"resume: {resume}")
        _print_page(settings, chosen.name, args.change)
    return 1 if tally.get("failed") or tally.get("rolled back") else 0


def _dag(args: argparse.Namespace, settings: Settings) -> int:
    """Print the fleet's rollout as an Airflow 3 DAG; checked as far as it can be without a
    change (the change is the DAG's parameter, checked when it is triggered)."""
    fleet_dag.require_airflow(elsewhere=args.for_another_machine)
    chosen = fleets.load_fleet(settings, args.name)
    if settings.config_path is None:
        raise ConfigError(
            "fleet dag needs the project's runbook.toml, which the DAG's tasks read",
            "run it in the project folder, or give --config PATH",
        )
    rolling_back = [w.name for w in chosen.waves if w.on_failure == "rollback"]
    if rolling_back:
        raise ConfigError(
            f'fleet {chosen.name}: wave {rolling_back[0]} has on_failure = "rollback", which '
            "the Airflow DAG does not do yet",
            'use thorbis-runbook fleet run for this fleet, or set on_failure = "stop"',
        )
    runbooks = (
        fleets.parse_runbooks(args.runbooks, where="--runbooks") if args.runbooks
        else chosen.runbooks
    )  # fmt: skip
    pairs = tuple(args.parameter or [])
    # With the airflow extra installed, papermill's plugins load Airflow, whose logging writes
    # to the stdout it finds: while they load, stdout is stderr, so stdout is the DAG alone.
    with contextlib.redirect_stdout(sys.stderr):
        pipeline.distribute_parameters(settings, runbooks, pairs)  # a bad -p is refused now
        members = fleets.resolve_members(settings, chosen)  # catalog members, for the workers
    waves = plan(chosen.waves, [m.name for m in members], fleet=chosen.name)
    spec = fleet_dag.DagSpec(
        chosen.name, settings.config_path.resolve(), runbooks, waves, pairs,
        args.confirm_production,
    )  # fmt: skip
    sys.stdout.write(fleet_dag.dag_source(spec))
    say(
        f"DAG {spec.dag_id}: {len(members)} member(s) of fleet {chosen.name} in "
        f"{len(waves)} wave(s), {', '.join(runbooks)}; trigger it with conf "
        '{"change_id": "CHG-..."}'
    )
    return 0


def _print_plan(prepared: fleet_run.FleetPlan) -> None:
    """What a fleet run would do, wave by wave: nothing is run and nothing is recorded."""
    rows = []
    for wave in prepared.waves:
        for name in wave.members:
            state = prepared.states[name]
            action = "skip (done)" if state.done else "run"
            rows.append((name, wave.name, state.state, action, prepared.member(name).connection))
    print(text_table(("member", "wave", "state", "would", "connection"), rows))
    for wave in prepared.waves:
        print(
            f"wave {wave.name}: {len(prepared.to_run(wave))} of {len(wave.members)} to run, "
            f"parallel {wave.spec.parallel}, {wave.allowed_failures} failure(s) allowed "
            f"({wave.spec.failure_budget}), on_failure {wave.spec.on_failure}"
        )
    print(f"\ndry run: nothing was run or recorded; to run it: {prepared.resume_command}")


def _print_page(settings: Settings, name: str, change_id: str) -> None:
    page = reports_root(settings) / "fleets" / name / f"{change_id}.html"
    if page.exists():
        print(f"page: {page}")


def _wave_of(waves: Sequence[Wave]) -> dict[str, str]:
    return {member: wave.name for wave in waves for member in wave.members}


class _Progress:
    """A tqdm bar over members on a terminal; one line per finished member otherwise."""

    def __init__(self, *, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="member", file=sys.stderr, dynamic_ncols=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, result: MemberResult) -> None:
        seconds = f" in {result.seconds:.1f} s" if result.seconds is not None else ""
        outcome = "rolled back" if result.rolled_back else result.status
        line = f"member {result.member} (wave {result.wave}): {outcome}{seconds}"
        if result.error:
            line += f": {result.error}"
        if self.bar is None:
            say(line)
            return
        self.bar.update(1)
        if not result.ok:
            self.bar.write(line, file=sys.stderr)


_ACTIONS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "list": _list,
    "run": _run,
    "status": _status,
    "dag": _dag,
}
