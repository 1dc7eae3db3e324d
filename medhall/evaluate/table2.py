"""The paper's Table 2 as numbers: means with bootstrap intervals, breakdowns, comparisons.

:func:`table2` turns ``judgments`` and ``scores`` tables into one long report table (schema
:data:`REPORT_SCHEMA`): per model, breakdown (overall / category / modality), group, kind
(positive = P, non-hallucination; negative = N, hallucination) and measure, the mean with a
percentile-bootstrap interval, the number of values averaged (``n``) and the number of failed
rows (``n_failed``: failed judgments or null scores; counted, never averaged in).

:func:`compare` puts two reports (e.g. base vs fine-tuned) side by side with the difference of
the means. Everything here is a pure function over Arrow tables and mappings; the renderers
(Markdown, CSV, PNG) are in :mod:`medhall.evaluate.report`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from medhall.evaluate.judge import AXES

KIND_ORDER = ("positive", "negative", "unknown")
BREAKDOWNS = ("overall", "category", "modality")
MEASURE_ORDER = (*AXES, "bertscore_f1", "meteor", "rouge1", "rouge2", "rougeL")
MEASURE_LABELS = {
    "clinical_accuracy": "Cli. Acc.",
    "clinical_relevance": "Cli. Rel.",
    "detail_level": "Detail Level",
    "risk_level": "Risk Level",
    "bertscore_f1": "B. Score",
    "meteor": "M. Score",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
}
UNKNOWN = "unknown"

REPORT_SCHEMA = pa.schema([
    ("model", pa.string()),
    ("breakdown", pa.string()),
    ("group", pa.string()),
    ("kind", pa.string()),
    ("measure", pa.string()),
    ("mean", pa.float64()),
    ("ci_low", pa.float64()),
    ("ci_high", pa.float64()),
    ("n", pa.int64()),
    ("n_failed", pa.int64()),
])
_KEYS = ("breakdown", "group", "kind", "measure")


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Estimate:
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


def bootstrap_mean(values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean and percentile-bootstrap interval of ``values`` (``n_boot`` resamples, seeded,
    vectorised). Empty input: all None; one value: the interval is that value."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Estimate(None, None, None, 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Estimate(mean, float(low), float(high), n)


# --------------------------------------------------------------------------- long values


@dataclass(frozen=True)
class Observation:
    """One value to average (None: a failure) of one model, question and measure."""

    model: str
    qa_id: str
    measure: str
    value: float | None


def judgment_observations(judgments: pa.Table) -> list[Observation]:
    """Four observations per judgment; a failed judgment gives four failures."""
    cols = judgments.select(["model", "qa_id", "status", *AXES]).to_pylist()
    return [
        Observation(r["model"], r["qa_id"], axis, float(r[axis]) if r["status"] == "ok" and r[axis] is not None else None)
        for r in cols
        for axis in AXES
    ]


def score_observations(scores: pa.Table) -> list[Observation]:
    """One observation per score row. Values of one (model, metric) made with different
    ``params`` (e.g. two BERTScore encoders) are refused: they must not be averaged together."""
    cols = scores.select(["model", "qa_id", "metric", "value", "params"]).to_pylist()
    settings: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in cols:
        settings[(r["model"], r["metric"])].add(r["params"])
    mixed = {k: v for k, v in settings.items() if len(v) > 1}
    if mixed:
        (model, metric), params = next(iter(mixed.items()))
        raise ValueError(f"{model} / {metric}: scores made with {len(params)} different params ({sorted(params)}); filter to one first")
    return [Observation(r["model"], r["qa_id"], r["metric"], _finite(r["value"])) for r in cols]


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


# --------------------------------------------------------------------------- Table 2


def table2(
    judgments: pa.Table | None,
    scores: pa.Table | None,
    kinds: Mapping[str, str | None],
    *,
    categories: Mapping[str, str | None] | None = None,
    modalities: Mapping[str, str | None] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pa.Table:
    """The report table (:data:`REPORT_SCHEMA`) of judgments and scores.

    ``kinds`` maps qa_id to positive / negative (a qa_id missing from it counts as
    ``unknown``); ``categories`` and ``modalities`` (qa_id to label), when given, add the
    ``category`` and ``modality`` breakdowns.
    """
    observations = (judgment_observations(judgments) if judgments is not None else []) + (
        score_observations(scores) if scores is not None else []
    )
    labels = {"overall": None, "category": categories, "modality": modalities}
    cells: dict[tuple[str, str, str, str, str], list[float | None]] = defaultdict(list)
    for o in observations:
        kind = kinds.get(o.qa_id) or UNKNOWN
        for breakdown, mapping in labels.items():
            if breakdown != "overall" and mapping is None:
                continue
            group = "all" if mapping is None else (mapping.get(o.qa_id) or UNKNOWN)
            cells[(o.model, breakdown, group, kind, o.measure)].append(o.value)
    rows = [_cell_row(key, values, n_boot, seed, level) for key, values in sorted(cells.items(), key=lambda kv: _order(kv[0]))]
    return pa.Table.from_pylist(rows, schema=REPORT_SCHEMA)


def _order(key: tuple[str, str, str, str, str]) -> tuple[Any, ...]:
    model, breakdown, group, kind, measure = key
    return (
        model,
        BREAKDOWNS.index(breakdown),
        group == UNKNOWN,
        group,
        KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER),
        MEASURE_ORDER.index(measure) if measure in MEASURE_ORDER else len(MEASURE_ORDER),
        measure,
    )


def _cell_row(key: tuple[str, ...], values: list[float | None], n_boot: int, seed: int, level: float) -> dict[str, Any]:
    ok = [v for v in values if v is not None]
    est = bootstrap_mean(ok, n_boot=n_boot, seed=seed, level=level)
    return {
        **dict(zip(("model", *_KEYS), key, strict=True)),
        "mean": est.mean,
        "ci_low": est.ci_low,
        "ci_high": est.ci_high,
        "n": est.n,
        "n_failed": len(values) - len(ok),
    }


def label_maps(instructions: pa.Table, images: pa.Table | None = None) -> dict[str, dict[str, str | None]]:
    """``kinds``, ``categories`` and (with ``images``) ``modalities`` keyed by qa_id, ready for
    :func:`table2` as keyword arguments."""
    rows = instructions.select(["qa_id", "image_id", "kind", "category"]).to_pylist()
    out: dict[str, dict[str, str | None]] = {
        "kinds": {r["qa_id"]: r["kind"] for r in rows},
        "categories": {r["qa_id"]: r["category"] for r in rows},
    }
    if images is not None:
        modality = dict(zip(images.column("image_id").to_pylist(), images.column("modality").to_pylist(), strict=True))
        out["modalities"] = {r["qa_id"]: modality.get(r["image_id"]) for r in rows}
    return out


# --------------------------------------------------------------------------- comparison


COMPARE_SCHEMA = pa.schema([
    *(REPORT_SCHEMA.field(k) for k in _KEYS),
    ("model_a", pa.string()), ("mean_a", pa.float64()), ("ci_low_a", pa.float64()), ("ci_high_a", pa.float64()), ("n_a", pa.int64()),
    ("model_b", pa.string()), ("mean_b", pa.float64()), ("ci_low_b", pa.float64()), ("ci_high_b", pa.float64()), ("n_b", pa.int64()),
    ("diff", pa.float64()),
])


def compare(run_a: pa.Table, run_b: pa.Table) -> pa.Table:
    """Two reports side by side (one model each), cell by cell, with ``diff = mean_b - mean_a``.

    A cell present in one run only keeps nulls for the other.
    """
    a, b = _cells_of(run_a, "a"), _cells_of(run_b, "b")
    rows = []
    for key in sorted(a.keys() | b.keys(), key=lambda k: _order(("", *k))):
        ra, rb = a.get(key, {}), b.get(key, {})
        row = {**dict(zip(_KEYS, key, strict=True)), **ra, **rb}
        both = ra.get("mean_a") is not None and rb.get("mean_b") is not None
        row["diff"] = rb["mean_b"] - ra["mean_a"] if both else None
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=COMPARE_SCHEMA)


def _cells_of(report: pa.Table, side: str) -> dict[tuple[str, ...], dict[str, Any]]:
    models = set(report.column("model").to_pylist())
    if len(models) > 1:
        raise ValueError(f"compare takes one model per report; run {side} has {sorted(models)}: filter it first")
    fields = ("model", "mean", "ci_low", "ci_high", "n")
    return {tuple(r[k] for k in _KEYS): {f"{f}_{side}": r[f] for f in fields} for r in report.to_pylist()}


__all__ = [
    "COMPARE_SCHEMA",
    "MEASURE_LABELS",
    "REPORT_SCHEMA",
    "Estimate",
    "bootstrap_mean",
    "compare",
    "label_maps",
    "table2",
]
