"""The zero-shot VQA table in the layout of the paper's Table 3, as Markdown, CSV and PNG.

Input is a long table of results, one row per (model, benchmark, split) with a ``value``
in [0, 1] (e.g. :func:`medhall.evaluate.vqa_metrics.headline` rows with a ``model`` added).
Rows of the table are models, each base model followed by the models fine-tuned from it
(``base_of`` maps a fine-tuned model to its base); columns are (benchmark, split) in the
paper's order: VQA-RAD, PathVQA, SLAKE (open, closed), PMC-VQA, OmniMedVQA (choice), then
any other benchmark. Cells show ``value * scale`` (percent by default).

Everything here is a pure function returning text or bytes; publishing them (files, Prefect
artifacts, DuckDB rows) is the flow's business.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: Benchmarks in Table 3's order, with the names the paper prints.
BENCHMARK_LABELS: dict[str, str] = {
    "vqa_rad": "VQA-RAD",
    "pathvqa": "PathVQA",
    "slake": "SLAKE",
    "pmc_vqa": "PMC-VQA",
    "omnimedvqa": "OmniMedVQA",
}
SPLIT_ORDER: tuple[str, ...] = ("open", "closed", "choice")

Column = tuple[str, str]  # (benchmark, split)


@dataclass(frozen=True)
class Table3:
    """The table: its columns, its rows (model names, in order) and the cells."""

    columns: list[Column]
    models: list[str]
    cells: dict[tuple[str, Column], float | None]
    base_of: dict[str, str]

    def value(self, model: str, column: Column) -> float | None:
        return self.cells.get((model, column))


def column_label(column: Column) -> str:
    """``("vqa_rad", "open")`` -> ``"VQA-RAD open"``."""
    bench, split = column
    return f"{BENCHMARK_LABELS.get(bench, bench)} {split}"


def column_key(column: Column) -> str:
    """``("vqa_rad", "open")`` -> ``"vqa_rad_open"`` (CSV header)."""
    return f"{column[0]}_{column[1]}"


def _column_sort_key(column: Column) -> tuple[int, str, int]:
    bench, split = column
    known = list(BENCHMARK_LABELS)
    rank = known.index(bench) if bench in known else len(known)
    split_rank = SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)
    return rank, bench, split_rank


def _model_order(models: list[str], base_of: Mapping[str, str]) -> list[str]:
    """Models in first-seen order, each base model directly followed by its fine-tuned ones."""
    ordered: list[str] = []
    for m in models:
        if m in ordered or (m in base_of and base_of[m] in models):
            continue  # a fine-tuned model is placed after its base
        ordered.append(m)
        ordered.extend(f for f in models if base_of.get(f) == m and f not in ordered)
    return ordered


def build_table3(results: Iterable[Mapping[str, Any]], base_of: Mapping[str, str] | None = None) -> Table3:
    """The table from long rows ``{model, benchmark, split, value}``.

    A (model, benchmark, split) given twice is an error (``ValueError``); a missing one is
    an empty cell.
    """
    base_of = dict(base_of or {})
    cells: dict[tuple[str, Column], float | None] = {}
    models: list[str] = []
    columns: set[Column] = set()
    for r in results:
        model, column = str(r["model"]), (str(r["benchmark"]), str(r["split"]))
        if (model, column) in cells:
            raise ValueError(f"two results for {model} / {column_label(column)}")
        value = r.get("value")
        cells[(model, column)] = None if value is None else float(value)
        columns.add(column)
        if model not in models:
            models.append(model)
    return Table3(sorted(columns, key=_column_sort_key), _model_order(models, base_of), cells, base_of)


def _fmt(value: float | None, scale: float, digits: int, empty: str) -> str:
    return empty if value is None else f"{value * scale:.{digits}f}"


def table3_markdown(table: Table3, *, scale: float = 100.0, digits: int = 2) -> str:
    """A Markdown (GFM) table; a fine-tuned model's name is shown as ``↳ name``."""
    header = ["Model", *(column_label(c) for c in table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", *("---:" for _ in table.columns)]) + "|"]
    for m in table.models:
        name = f"↳ {m}" if m in table.base_of else m
        cells = [_fmt(table.value(m, c), scale, digits, "–") for c in table.columns]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def table3_csv(table: Table3, *, scale: float = 100.0, digits: int = 2) -> str:
    """CSV with ``model``, ``base_model`` and one ``<benchmark>_<split>`` column per column."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "base_model", *(column_key(c) for c in table.columns)])
    for m in table.models:
        w.writerow([m, table.base_of.get(m, ""), *(_fmt(table.value(m, c), scale, digits, "") for c in table.columns)])
    return buf.getvalue()


def table3_png(table: Table3, *, scale: float = 100.0, title: str = "Zero-shot medical VQA", dpi: int = 120) -> bytes:
    """A grouped bar chart (one group per column, one bar per model) as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_models, n_cols = max(len(table.models), 1), max(len(table.columns), 1)
    fig = Figure(figsize=(max(6.0, 1.1 * n_cols * max(1.0, n_models / 3)), 4.2 + 0.25 * ((n_models + 1) // 2)), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / n_models
    for i, m in enumerate(table.models):
        offset = (i - (n_models - 1) / 2) * width
        bars = [(j + offset, v * scale) for j, c in enumerate(table.columns) if (v := table.value(m, c)) is not None]
        ax.bar([x for x, _ in bars], [y for _, y in bars], width=width, label=m, hatch="//" if m in table.base_of else None)
    ax.set_xticks(range(len(table.columns)))
    ax.set_xticklabels([column_label(c) for c in table.columns], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (%)" if scale == 100.0 else "score")
    if scale == 100.0:
        ax.set_ylim(0, 100)
    ax.set_title(title)
    if table.models:
        ax.legend(fontsize=7, ncols=min(2, n_models), loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


__all__ = [
    "BENCHMARK_LABELS",
    "SPLIT_ORDER",
    "Table3",
    "build_table3",
    "column_key",
    "column_label",
    "table3_csv",
    "table3_markdown",
    "table3_png",
]
