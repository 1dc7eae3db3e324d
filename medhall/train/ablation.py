"""The paper's ablation (Fig. 5): a base model fine-tuned on each training subset, side by side.

Arms (:data:`ARMS`) are the build's ablation subsets: positive-only, negative-only, MedHallTune
without QC, MedHallTune (QC-filtered), and nested 25 / 50 / 75 % of it (100 % is MedHallTune
itself, trained once). Each arm is trained, then evaluated like any model
(:mod:`medhall.evaluate`); :func:`ablation_table` gathers the overall Table 2 rows of the base
and every arm, :func:`plot_ablation` draws Fig. 5: (a) the data-composition arms as grouped
bars, (b) the score against the share of the data, per measure, for P and N.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

#: Arm -> (training subset, label in the paper's wording).
ARMS: dict[str, tuple[str, str]] = {
    "positive_only": ("positive_only", "+ Positive"),
    "negative_only": ("negative_only", "+ Negative"),
    "no_qc": ("no_qc", "+ MedHallTune (w.o. QC)"),
    "full": ("full", "+ MedHallTune"),
    "frac_25": ("frac_25", "25 %"),
    "frac_50": ("frac_50", "50 %"),
    "frac_75": ("frac_75", "75 %"),
}
COMPOSITION = ("base", "positive_only", "negative_only", "no_qc", "full")
FRACTIONS = {"base": 0, "frac_25": 25, "frac_50": 50, "frac_75": 75, "full": 100}

ABLATION_SCHEMA = pa.schema([
    ("arm", pa.string()), ("label", pa.string()), ("model", pa.string()), ("kind", pa.string()),
    ("measure", pa.string()), ("mean", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    ("n", pa.int64()),
])


def label(arm: str) -> str:
    return "base" if arm == "base" else ARMS[arm][1]


def ablation_table(reports: Mapping[str, pa.Table]) -> pa.Table:
    """One row per (arm, kind, measure): the overall means and intervals of each arm's Table 2
    (``reports``: arm -> :func:`medhall.evaluate.table2.table2` rows; ``base`` for the base)."""
    rows = []
    order = ["base", *ARMS]
    for arm in sorted(reports, key=lambda a: order.index(a) if a in order else len(order)):
        for r in reports[arm].to_pylist():
            if r["breakdown"] == "overall" and r["kind"] in ("positive", "negative"):
                rows.append({"arm": arm, "label": label(arm), "model": r["model"], "kind": r["kind"],
                             "measure": r["measure"], "mean": r["mean"], "ci_low": r["ci_low"],
                             "ci_high": r["ci_high"], "n": r["n"]})
    return pa.Table.from_pylist(rows, schema=ABLATION_SCHEMA)


def markdown(table: pa.Table) -> str:
    """Arms as rows, measures as ``P&N`` columns (the paper's Table 2 layout)."""
    rows = table.to_pylist()
    measures = list(dict.fromkeys(r["measure"] for r in rows))
    cell = {(r["arm"], r["kind"], r["measure"]): r["mean"] for r in rows}
    arms = list(dict.fromkeys(r["arm"] for r in rows))

    def fmt(v: float | None, m: str) -> str:
        return "-" if v is None else f"{v:.2f}" if m.startswith(("clinical", "relevance", "detail", "risk")) else f"{v:.3f}"

    head = "| Arm | " + " | ".join(f"{m} P&N" for m in measures) + " |"
    lines = [head, "|" + "---|" * (len(measures) + 1)]
    for arm in arms:
        lines.append(f"| {label(arm)} | " + " | ".join(
            f"{fmt(cell.get((arm, 'positive', m)), m)}&{fmt(cell.get((arm, 'negative', m)), m)}" for m in measures) + " |")
    return "\n".join(lines)


def plot_ablation(table: pa.Table, path: str | os.PathLike[str], measures: Sequence[str] | None = None,
                  title: str = "Ablation (the paper's Fig. 5)") -> Path:
    """(a) the composition arms as bars per measure (P solid, N hatched); (b) each measure
    against the share of MedHallTune trained on (0 % = the base), P and N."""
    from medhall.report.figures import pyplot, save

    plt = pyplot()
    rows = [r for r in table.to_pylist() if r["mean"] is not None]
    measures = list(measures or dict.fromkeys(r["measure"] for r in rows))
    cell = {(r["arm"], r["kind"], r["measure"]): r for r in rows}
    fig, (bars, curve) = plt.subplots(1, 2, figsize=(14, 5.5))
    arms = [a for a in COMPOSITION if any((a, k, m) in cell for k in ("positive", "negative") for m in measures)]
    width = 0.8 / max(2 * len(arms), 1)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arm in enumerate(arms):
        for j, kind in enumerate(("positive", "negative")):
            k = 2 * i + j
            xs = [x + (k - (2 * len(arms) - 1) / 2) * width for x in range(len(measures))]
            found = [cell.get((arm, kind, m)) for m in measures]
            bars.bar(xs, [c["mean"] if c else 0.0 for c in found], width, color=colours[i % len(colours)],
                     hatch="//" if kind == "negative" else None, edgecolor="white",
                     label=f"{label(arm)} {'P' if kind == 'positive' else 'N'}")
    bars.set_xticks(range(len(measures)), measures, rotation=20)
    bars.set_title("(a) training data composition")
    bars.legend(fontsize=7, ncol=len(arms), loc="upper center", bbox_to_anchor=(0.5, -0.14))
    for i, m in enumerate(measures):
        for kind, style in (("positive", "-"), ("negative", "--")):
            points = sorted((pct, cell[(arm, kind, m)]["mean"]) for arm, pct in FRACTIONS.items() if (arm, kind, m) in cell)
            if points:
                curve.plot([p for p, _ in points], [v for _, v in points], style, marker="o",
                           color=colours[i % len(colours)], label=f"{m} {'P' if kind == 'positive' else 'N'}")
    curve.set_xticks([0, 25, 50, 75, 100], ["base", "25 %", "50 %", "75 %", "100 %"])
    curve.set_xlabel("share of MedHallTune trained on")
    curve.set_title("(b) amount of training data")
    curve.legend(fontsize=7, ncol=max(2, len(measures)), loc="upper center", bbox_to_anchor=(0.5, -0.2))
    curve.grid(alpha=0.3)
    return save(fig, path, title)


def arms_to_run(arms: Sequence[str]) -> list[str]:
    """The arms in a stable order, ``frac_100`` folded into ``full`` (the same data)."""
    wanted = {"full" if a == "frac_100" else a for a in arms}
    unknown = wanted - set(ARMS)
    if unknown:
        raise ValueError(f"unknown ablation arm(s) {sorted(unknown)}; arms: {', '.join(ARMS)}")
    return [a for a in ARMS if a in wanted]


def summary(table: pa.Table, trained: Mapping[str, Mapping[str, Any]]) -> str:
    """The ablation's Markdown page: what each arm trained on, then the table."""
    lines = ["# Ablation (the paper's Fig. 5)", "", "| Arm | Subset | Examples | Steps | Final loss | Adapter |",
             "|---|---|---|---|---|---|"]
    for arm, res in trained.items():
        loss = res.get("train_loss")
        lines.append(f"| {label(arm)} | {ARMS[arm][0]} | {res.get('examples')} | {res.get('steps')} | "
                     f"{'-' if loss is None else f'{loss:.4f}'} | `{res.get('adapter_dir')}` |")
    return "\n".join([*lines, "", "## Scores (overall, P&N)", "", markdown(table), ""])


__all__ = ["ABLATION_SCHEMA", "ARMS", "ablation_table", "arms_to_run", "label", "markdown", "plot_ablation", "summary"]
