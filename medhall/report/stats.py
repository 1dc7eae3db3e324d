"""Dataset statistics: counts by modality and body part (and by kind/category for instructions).

The statistics are a long table ``(dimension, value, count)`` so one shape serves the
terminal, CSV, Prefect artifacts and the chart.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from medhall.sampling import counts

IMAGE_DIMENSIONS = ("modality", "body_part", "image_status")
INSTRUCTION_DIMENSIONS = ("kind", "category")


def dataset_stats(images: pa.Table, instructions: pa.Table | None = None) -> pa.Table:
    rows: list[dict] = [{"dimension": "images", "value": "total", "count": images.num_rows}]
    for dim in IMAGE_DIMENSIONS:
        rows += [{"dimension": dim, "value": v, "count": c} for v, c in counts(images, dim)]
    if instructions is not None:
        rows.append({"dimension": "instructions", "value": "total", "count": instructions.num_rows})
        for dim in INSTRUCTION_DIMENSIONS:
            rows += [{"dimension": dim, "value": v, "count": c} for v, c in counts(instructions, dim)]
    return pa.Table.from_pylist(
        rows, schema=pa.schema([("dimension", pa.string()), ("value", pa.string()), ("count", pa.int64())])
    )


def plot_stats(stats: pa.Table, path: str | os.PathLike[str], title: str = "Dataset statistics") -> Path:
    """Horizontal bar charts, one panel per dimension with more than one value; written as PNG."""
    from medhall.report.figures import pyplot, save

    plt = pyplot()

    rows = stats.to_pylist()
    dims = [d for d in dict.fromkeys(r["dimension"] for r in rows) if d not in ("images", "instructions")]
    panels = [(d, [(r["value"], r["count"]) for r in rows if r["dimension"] == d]) for d in dims]
    panels = [p for p in panels if len(p[1]) > 1] or [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 4.5), squeeze=False)
    for ax, (dim, pairs) in zip(axes[0], panels, strict=False):
        pairs = pairs[:20][::-1]
        ax.barh([p[0] for p in pairs], [p[1] for p in pairs], color="#3b75af")
        ax.set_title(dim.replace("_", " "))
        ax.set_xlabel("count")
        for y, (_, c) in enumerate(pairs):
            ax.text(c, y, f" {c}", va="center", fontsize=8)
    return save(fig, path, title)
