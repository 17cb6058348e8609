"""Charts for the runbook reports: matplotlib figures that render to embedded PNG."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .display import CHART

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .apply import StepResult
    from .benchmark import BenchmarkResult
    from .monitor import MonitorResult
    from .precheck import Capacity


@dataclass(frozen=True)
class Chart:
    """A rendered chart: displays itself in a notebook as PNG and archives with the report."""

    title: str
    png: bytes

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: str) -> None:
        with open(path, "wb") as out:
            out.write(self.png)


@dataclass(frozen=True)
class ChartGroup:
    """Charts and an HTML table shown by one cell (images embedded, so a report stays whole)."""

    charts: tuple[Chart, ...]
    table_html: str = ""

    def _repr_html_(self) -> str:
        images = "".join(
            f"<img alt='{html.escape(c.title)}' style='max-width:100%' "
            f"src='data:image/png;base64,{base64.b64encode(c.png).decode()}'/>"
            for c in self.charts
        )
        return f"<div class='runbook-charts'>{images}{self.table_html}</div>"


def render(figure: Figure, title: str) -> Chart:
    """Render a figure without pyplot (no global state, safe in threads and kernels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return Chart(title, buffer.getvalue())


def apply_durations(
    steps: Sequence[StepResult], *, target: str, lock_timeout_ms: int
) -> Chart | None:
    """Time per migration, failed ones in red; the lock_timeout drawn for scale when it fits."""
    if not steps:
        return None
    from matplotlib.figure import Figure

    labels = [f"{s.version}\n{s.name[:28]}" for s in steps]
    values = [max(s.duration_ms, 0) for s in steps]
    colours = [CHART["failed"] if s.status == "failed" else CHART["series"] for s in steps]
    height = 1.2 + 0.45 * len(steps)
    figure = Figure(figsize=(8, min(height, 14)))
    axes = figure.add_subplot()
    bars = axes.barh(labels, values, color=colours)
    axes.invert_yaxis()
    axes.bar_label(bars, labels=[f"{v:,} ms" for v in values], padding=3, fontsize=8)
    axes.set_xlabel("duration (ms)")
    axes.set_title(f"Apply on {target}: time per migration (red = failed)")
    if 0 < lock_timeout_ms <= max([*values, 1]) * 2:
        axes.axvline(lock_timeout_ms, color=CHART["limit"], linestyle="--", linewidth=1)
        axes.annotate(
            f"lock_timeout {lock_timeout_ms:,} ms",
            (lock_timeout_ms, 0),
            fontsize=8,
            color=CHART["limit"],
        )
    axes.tick_params(axis="y", labelsize=8)
    axes.margins(x=0.2)
    return render(figure, "time per migration")


def benchmark_comparison(
    before: BenchmarkResult | None, after: BenchmarkResult, *, threshold: float
) -> Chart | None:
    """Median per benchmark query, before and after, with the pass threshold drawn per query."""
    if not after.queries:
        return None
    from matplotlib.figure import Figure

    earlier = before.by_name() if before else {}
    names = [q.name for q in after.queries]
    figure = Figure(figsize=(8, 1.2 + 0.7 * len(names)))
    axes = figure.add_subplot()
    rows = range(len(names))
    if earlier:
        axes.barh(
            [r - 0.2 for r in rows],
            [earlier[n].median_ms if n in earlier else 0 for n in names],
            height=0.4,
            color=CHART["muted"],
            label="before (median)",
        )
        for r, n in zip(rows, names, strict=True):
            if n in earlier:
                limit = earlier[n].median_ms * threshold
                axes.plot(
                    [limit, limit], [r - 0.45, r + 0.45], color=CHART["failed"], linewidth=1.5
                )
        axes.plot([], [], color=CHART["failed"], label=f"threshold ({threshold:g}x before)")
    axes.barh(
        [r + (0.2 if earlier else 0) for r in rows],
        [q.median_ms for q in after.queries],
        height=0.4,
        color=CHART["series"],
        label="after (median)",
    )
    axes.set_yticks(list(rows), names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("median query time (ms)")
    title = (
        "Benchmark queries: before vs after" if earlier else "Benchmark queries (no baseline yet)"
    )
    axes.set_title(title)
    axes.legend(fontsize=8, loc="lower right")
    return render(figure, "benchmark before vs after")


def monitor_timeline(result: MonitorResult) -> Chart | None:
    """Sessions and connections over the apply, and the longest lock wait with its warn line."""
    if not result.samples:
        return None
    from matplotlib.figure import Figure

    t = [s.elapsed_s for s in result.samples]
    figure = Figure(figsize=(8, 5))
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(t, [s.connections for s in result.samples], label="connections", color=CHART["total"])
    top.plot(t, [s.active for s in result.samples], label="active", color=CHART["series"])
    top.plot(
        t,
        [s.idle_in_transaction for s in result.samples],
        label="idle in transaction",
        color=CHART["warn"],
    )
    top.plot(
        t, [s.waiting for s in result.samples], label="waiting on a lock", color=CHART["failed"]
    )
    top.set_ylabel("sessions")
    top.set_title(f"While apply ran on {result.target}: sessions and lock waits")
    top.legend(fontsize=8, loc="upper right")
    bottom.plot(
        t, [s.max_wait_ms for s in result.samples], color=CHART["failed"], label="longest lock wait"
    )
    bottom.axhline(
        result.blocked_warn_ms,
        color=CHART["limit"],
        linestyle="--",
        linewidth=1,
        label=f"warn at {result.blocked_warn_ms} ms",
    )
    bottom.set_ylabel("lock wait (ms)")
    bottom.set_xlabel("seconds since apply started")
    bottom.legend(fontsize=8, loc="upper right")
    return render(figure, "sessions and lock waits during apply")


def monitor_signals(result: MonitorResult) -> Chart | None:
    """The application's health while apply ran: probe latency, transactions and error rate,
    WAL, replication lag, the archiver's backlog and disk, each only when it has data."""
    panels = [
        panel for panel in (_probe_panel, _transactions_panel, _WAL, _LAG, _ARCHIVE, _DISK)
        if panel(result, None)
    ]  # fmt: skip
    if not panels:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 1.2 + 2.1 * len(panels)))
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for panel, axis in zip(panels, axes, strict=True):
        panel(result, axis)
        axis.legend(fontsize=7, loc="upper right")
    axes[0].set_title(f"While apply ran on {result.target}: the application's health")
    axes[-1].set_xlabel("seconds since apply started")
    figure.tight_layout()
    return render(figure, "the application's health during apply")


def _series(
    result: MonitorResult, field: str, scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """The samples that have ``field``, as (seconds, value / scale)."""
    found = [(s.elapsed_s, getattr(s, field)) for s in result.samples]
    kept = [(t, v / scale) for t, v in found if v is not None]
    return [t for t, _ in kept], [v for _, v in kept]


def _limits(
    axis: Axes, result: MonitorResult, stem: str, scale: float = 1.0, unit: str = ""
) -> None:
    limits = result.drawn_limits()
    for level, colour in (("warn", CHART["warn"]), ("fail", CHART["failed"])):
        value = limits.get(f"{stem}_{level}", limits.get(f"{stem}_{level}_pct"))
        if value:
            axis.axhline(value / scale, color=colour, linestyle="--", linewidth=1,
                         label=f"{level} at {value / scale:g}{unit}")  # fmt: skip


def _probe_panel(result: MonitorResult, axis: Axes | None) -> bool:
    if axis is None:
        return bool(result.probes)
    for name in dict.fromkeys(t.name for t in result.probes):
        runs = [t for t in result.probes if t.name == name]
        # A "$" in a label would start matplotlib's math text (and fail the whole chart).
        label = name[:30].replace("$", r"\$")
        axis.plot([t.elapsed_s for t in runs], [t.ms for t in runs], marker=".", label=label)
        failed = [t for t in runs if not t.ok]
        if failed:
            axis.scatter([t.elapsed_s for t in failed], [t.ms for t in failed], marker="x",
                         color=CHART["failed"], zorder=3)  # fmt: skip
    _limits(axis, result, "probe_latency", unit=" ms")
    axis.set_ylabel("probe (ms)\nx = failed")
    return True


def _transactions_panel(result: MonitorResult, axis: Axes | None) -> bool:
    t, commits = _series(result, "commits_per_s")
    if axis is None:
        return bool(commits)
    axis.plot(t, commits, color=CHART["series"], label="commits/s")
    axis.plot(*_series(result, "rollbacks_per_s"), color=CHART["failed"], label="rollbacks/s")
    axis.set_ylabel("transactions/s")
    rate = _series(result, "error_rate")
    if rate[1]:
        twin = axis.twinx()
        twin.plot(*rate, color=CHART["warn"], linestyle=":", label="error rate %")
        twin.set_ylabel("error rate (%)")
        twin.legend(fontsize=7, loc="upper left")
    return True


@dataclass(frozen=True)
class _Line:
    """A signal drawn alone in its panel: the sample field, its scale, names and limits."""

    field: str
    label: str
    ylabel: str
    scale: float = 1.0
    colour: str = "series"
    limit: str = ""  # the thresholds' stem drawn as warn and fail lines
    unit: str = ""
    zero_is_nothing: bool = False  # a backlog of 0 all along is nothing to show
    ylim: tuple[float, float] | None = None

    def __call__(self, result: MonitorResult, axis: Axes | None) -> bool:
        t, values = _series(result, self.field, self.scale)
        if axis is None:
            return any(values) if self.zero_is_nothing else bool(values)
        axis.plot(t, values, color=CHART[self.colour], label=self.label)
        if self.limit:
            _limits(axis, result, self.limit, self.scale, self.unit)
        if self.ylim is not None:
            axis.set_ylim(*self.ylim)
        axis.set_ylabel(self.ylabel)
        return True


_WAL = _Line("wal_bytes_per_s", "WAL written", "WAL (MB/s)", 1024**2)
_LAG = _Line(
    "replication_lag_bytes", "largest standby lag", "replication lag (MB)", 1024**2,
    limit="replication_lag", unit=" MB",
)  # fmt: skip
_ARCHIVE = _Line(
    "archive_backlog", "WAL files waiting for the archiver", "archive backlog", colour="warn",
    zero_is_nothing=True,
)  # fmt: skip
_DISK = _Line(
    "disk_used_pct", "data directory's disk used", "disk used (%)", limit="disk_used",
    unit=" %", ylim=(0, 100),
)  # fmt: skip


def capacity(
    cap: Capacity, *, target: str, connections_warn_pct: float, connections_fail_pct: float
) -> Chart:
    """Connections against max_connections, and database size against the free disk."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2))
    left, right = figure.subplots(1, 2)
    left.barh(["connections"], [cap.connections], color=CHART["series"])
    left.set_xlim(0, cap.max_connections)
    for pct, colour in (
        (connections_warn_pct, CHART["warn"]),
        (connections_fail_pct, CHART["failed"]),
    ):
        left.axvline(cap.max_connections * pct / 100, color=colour, linestyle="--", linewidth=1)
    left.set_xlabel(f"connections (max_connections {cap.max_connections}; dashed: warn / fail)")
    left.set_title(f"{cap.connections} of {cap.max_connections} connections")
    gib = 1024**3
    if cap.disk_total and cap.disk_free is not None:
        used = (cap.disk_total - cap.disk_free) / gib
        right.barh(["disk"], [used], color=CHART["muted"], label="used")
        right.barh(
            ["disk"],
            [cap.database_bytes / gib],
            left=[used],
            color=CHART["series"],
            label="a full backup",
        )
        right.set_xlim(0, cap.disk_total / gib)
        right.set_xlabel("GiB of the data directory's disk")
        right.legend(fontsize=8, loc="lower right")
        right.set_title("Disk: used, and what a backup adds")
    else:
        right.text(
            0.5,
            0.5,
            "data directory not visible here:\nfree disk not measured",
            ha="center",
            va="center",
        )
        right.set_axis_off()
    figure.suptitle(f"Capacity of {target}")
    figure.tight_layout()
    return render(figure, "capacity")


def batch_timeline(rows: Sequence[Sequence[object]], *, target: str) -> Chart | None:
    """Each batch of the batched migrations: its size, rows changed, time and throttle sleeps.

    ``rows`` are backfill.batch_rows: (version, batch, keys, rows, batch_size, duration_ms,
    throttle_ms, throttle_reason, run_id, finished_at), in version and batch order.
    """
    if not rows:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5.5))
    top, bottom = figure.subplots(2, 1, sharex=True)
    versions = sorted({str(row[0]) for row in rows})
    for version in versions:
        mine = [row for row in rows if str(row[0]) == version]
        batch = [int(str(row[1])) for row in mine]
        suffix = f" ({version})" if len(versions) > 1 else ""
        top.plot(batch, [int(str(row[2])) for row in mine], color=CHART["series"],
                 label=f"keys in the batch{suffix}")  # fmt: skip
        top.plot(batch, [int(str(row[3])) for row in mine], color=CHART["total"],
                 linestyle=":", label=f"rows changed{suffix}")  # fmt: skip
        bottom.bar(batch, [int(str(row[5])) for row in mine], color=CHART["series"],
                   label=f"batch time{suffix}")  # fmt: skip
        sleeps = [(b, int(str(row[6]))) for b, row in zip(batch, mine, strict=True) if row[6]]
        if sleeps:
            bottom.bar([b for b, _ in sleeps], [ms for _, ms in sleeps], color=CHART["warn"],
                       alpha=0.8, label=f"throttled or paused before it{suffix}")  # fmt: skip
    top.set_ylabel("keys / rows")
    top.set_title(f"Batched migrations on {target}: {len(rows)} batch(es)")
    top.legend(fontsize=8, loc="upper right")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("batch")
    bottom.legend(fontsize=8, loc="upper right")
    return render(figure, "batches of the batched migrations")
