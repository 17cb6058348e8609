"""Charts for the runbook reports: matplotlib figures that render to embedded PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .apply import StepResult


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
    colours = ["#c0392b" if s.status == "failed" else "#2e86c1" for s in steps]
    height = 1.2 + 0.45 * len(steps)
    figure = Figure(figsize=(8, min(height, 14)))
    axes = figure.add_subplot()
    bars = axes.barh(labels, values, color=colours)
    axes.invert_yaxis()
    axes.bar_label(bars, labels=[f"{v:,} ms" for v in values], padding=3, fontsize=8)
    axes.set_xlabel("duration (ms)")
    axes.set_title(f"Apply on {target}: time per migration (red = failed)")
    if 0 < lock_timeout_ms <= max([*values, 1]) * 2:
        axes.axvline(lock_timeout_ms, color="#7f8c8d", linestyle="--", linewidth=1)
        axes.annotate(
            f"lock_timeout {lock_timeout_ms:,} ms",
            (lock_timeout_ms, 0),
            fontsize=8,
            color="#7f8c8d",
        )
    axes.tick_params(axis="y", labelsize=8)
    axes.margins(x=0.2)
    return render(figure, "time per migration")
