"""Training curves as a PNG: the loss (and, when logged, the learning rate and DPO margins) by step."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PANELS = (("loss", "training loss"), ("learning_rate", "learning rate"), ("rewards/margins", "DPO margin"))


def plot_curves(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], title: str = "Training") -> Path:
    """One panel per logged metric of :data:`PANELS`, value by optimizer step."""
    from medhall.report.figures import pyplot, save

    plt = pyplot()

    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        series.setdefault(r["metric"], []).append((r["step"], r["value"]))
    panels = [(m, label) for m, label in PANELS if series.get(m)] or [("loss", "training loss")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels, strict=True):
        points = sorted(series.get(metric, []))
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], marker="." if len(points) < 50 else None)
        else:
            ax.text(0.5, 0.5, "no values logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    return save(fig, path, title)


__all__ = ["plot_curves"]
