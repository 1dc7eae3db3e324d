"""Zero-shot VQA reports: the table in the layout of the paper's Table 3, as Markdown, CSV and
PNG, and the run's report files (step 5 of :mod:`medhall.vqa.pipeline`).

Input is a long table of results, one row per (model, benchmark, split) with a ``value``
in [0, 1] (e.g. :func:`medhall.vqa.metrics.headline` rows with a ``model`` added).
Rows of the table are models, each base model followed by the models fine-tuned from it
(``base_of`` maps a fine-tuned model to its base); columns are (benchmark, split) in the
paper's order: VQA-RAD, PathVQA, SLAKE (open, closed), PMC-VQA, OmniMedVQA (choice), then
any other benchmark. Cells show ``value * scale`` (percent by default).

:func:`build_table3` and the ``table3_*`` renderers are pure functions returning text or
bytes; :func:`report` writes a run's files (Table 3 as Markdown, CSV and PNG, and the long
summary as CSV) under ``<home>/reports/<dataset>/``.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medhall.atomic import atomic_path

if TYPE_CHECKING:
    from medhall.store import ArtifactStore
    from medhall.vqa.config import VQAConfig

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


# --------------------------------------------------------------------------------------------
# A run's report (step 5)


def table3_results(summary: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Table 3 cells ``{model, benchmark, split, value, n}`` from the long summary rows."""
    from medhall.vqa.metrics import headline

    by_model: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in summary:
        by_model[r["model"]].append(r)
    return [{"model": m, **h} for m, rows in by_model.items() for h in headline(rows)]


def report_dir(store: ArtifactStore, cfg: VQAConfig) -> Path:
    """``<home>/reports/<dataset>``."""
    return store.root / "reports" / cfg.dataset


def _summary_csv(summary: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(
        buf, ["model", "benchmark", "split", "metric", "value", "n"], lineterminator="\n"
    )
    w.writeheader()
    w.writerows({k: r.get(k) for k in w.fieldnames} for r in summary)
    return buf.getvalue()


def _markdown(cfg: VQAConfig, table_md: str, summary: Sequence[Mapping[str, Any]]) -> str:
    missing = sum(int(r["value"] or 0) for r in summary if r["metric"] == "missing")
    return (
        f"# Zero-shot medical VQA: {cfg.dataset}\n\n{table_md}\n"
        "Open: LLaVA-Med recall of the reference words; closed: LLaVA-Med yes/no accuracy "
        f"(`{cfg.closed_variant}` rule); choice: accuracy. Percent; `↳` marks a fine-tuned model "
        f"under its base. Unanswered or failed questions (left out of the means): {missing}.\n"
    )


def _pope_markdown(cfg: VQAConfig, pope: Any) -> str:
    from medhall.evaluate.pope import RULE_WORDS, markdown_models

    return (
        f"# Hallucination without a judge: {cfg.dataset}'s closed yes/no questions, POPE-style\n\n"
        "The closed questions whose reference is yes or no, scored as POPE scores object hallucination "
        "(\"yes\" the positive class; hallucination rate: the share of no-questions answered yes). "
        f"Rule `first_word`: {RULE_WORDS['first_word']}. Rates in %; `pope_scores` has POPE's own rule too.\n\n"
        + markdown_models(pope)
    )


def report(
    store: ArtifactStore, cfg: VQAConfig, summary: Sequence[Mapping[str, Any]], pope: Any = None
) -> dict[str, Any]:
    """Table 3 as Markdown, CSV and PNG, and the long summary as CSV, under
    :func:`report_dir`; returns their paths, the Markdown text and the table's rows. ``pope``
    (the ``pope_scores`` rows of the closed yes/no items, a table or a list of dicts) adds
    ``pope.md`` and ``pope.csv`` (paths ``pope_markdown``, ``pope_csv``; text
    ``pope_markdown_text``)."""
    import pyarrow as pa

    table = build_table3(table3_results(summary), cfg.base_of())
    markdown, csv_text = _markdown(cfg, table3_markdown(table), summary), table3_csv(table)
    if pope is not None and not isinstance(pope, pa.Table):
        from medhall.schema import from_rows

        pope = from_rows("pope_scores", pope) if pope else None
    out = report_dir(store, cfg)
    files = {
        "markdown": (out / "table3.md", markdown.encode()),
        "csv": (out / "table3.csv", csv_text.encode()),
        "png": (
            out / "table3.png",
            table3_png(table, title=f"Zero-shot medical VQA ({cfg.dataset})"),
        ),
        "summary_csv": (out / "summary.csv", _summary_csv(summary).encode()),
    }
    extra: dict[str, Any] = {}
    if pope is not None:
        from medhall.report.export import write_table

        extra["pope_markdown_text"] = _pope_markdown(cfg, pope)
        extra["pope_markdown"] = str(out / "pope.md")
        with atomic_path(out / "pope.md") as tmp:
            tmp.write_bytes(extra["pope_markdown_text"].encode())
        write_table(pope, out / "pope.csv", "csv")
        extra["pope_csv"] = str(out / "pope.csv")
    for path, data in files.values():
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return {
        **{name: str(path) for name, (path, _) in files.items()},
        "markdown_text": markdown,
        "rows": list(csv.DictReader(io.StringIO(csv_text))),
        **extra,
    }


__all__ = [
    "BENCHMARK_LABELS",
    "SPLIT_ORDER",
    "Table3",
    "build_table3",
    "column_key",
    "column_label",
    "report",
    "report_dir",
    "table3_csv",
    "table3_markdown",
    "table3_png",
    "table3_results",
]
