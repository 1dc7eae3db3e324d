"""Judge agreement: how a candidate judge's scores agree with a reference judge's (GPT-4o).

Pure functions over paired score vectors and ``judgments`` tables; the stage that makes the
candidate's judgments is :mod:`medhall.evaluate.agreement_run`.

For one axis (Clinical Accuracy, ...) and one set of questions, with ``x`` the reference's
scores (GPT-4o) and ``y`` the candidate's for the same answers:

========================= ==================================================================
``spearman``              Pearson correlation of the mid-ranks (``scipy.stats.spearmanr``)
``kendall_tau_b``         ``(C - D) / sqrt((n0 - n1) (n0 - n2))``: concordant minus discordant
                          pairs, corrected for ties (``scipy.stats.kendalltau``, variant b)
``qwk``                   quadratic-weighted Cohen's kappa ``1 - sum(w O) / sum(w E)`` with
                          ``w = (a - b)^2`` on the score values, O the observed joint
                          distribution, E the product of the marginals (for integer scores
                          equal to ``sklearn.metrics.cohen_kappa_score(weights="quadratic",
                          labels=1..10)``; a judge's 7.5 is weighted by its value)
``bias``                  ``mean(y - x)``: positive when the candidate is more lenient
``exact``                 share of answers with ``y == x``
``within1``               share with ``|y - x| <= 1``
``candidate_mean``        ``mean(y)``, and ``reference_mean`` ``mean(x)``: the leaderboard cells
========================= ==================================================================

A correlation is undefined (``None``) when either judge gives one value to every answer, and
kappa when both give the same single value. Every measure is a function of the two judges'
joint distribution, i.e. of their contingency table over the distinct score values: the
functions here compute all of them from that table, so a percentile bootstrap of thousands of
resamples of the answer pairs (seeded, the same resamples for every measure) costs a few array
operations. The tests check the values against scipy and scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from medhall.evaluate.judge import AXES
from medhall.schema import JUDGE_AGREEMENT, from_rows

#: The agreement measures, in report order.
MEASURES = ("spearman", "kendall_tau_b", "qwk", "bias", "exact", "within1")
#: The two judges' means (the leaderboard cells) on the same answers.
MEANS = ("candidate_mean", "reference_mean")
ALL_MEASURES = (*MEASURES, *MEANS)
MEASURE_LABELS = {
    "spearman": "Spearman ρ",
    "kendall_tau_b": "Kendall τ-b",
    "qwk": "QWK",
    "bias": "bias (cand. − ref.)",
    "exact": "exact",
    "within1": "±1",
    "candidate_mean": "candidate mean",
    "reference_mean": "reference mean",
}
#: Kinds of a report: positive (P), negative (N), and both together.
KINDS = ("positive", "negative", "all")

#: GPT-4o's published judge means of LLaVA-Med-v1.5-7B (MedHallTune Table 2; the release's
#: 2,238 judgments reproduce them): ``{kind: {axis: mean}}``.
PUBLISHED_GPT4O = {
    "positive": {"clinical_accuracy": 6.28, "clinical_relevance": 6.78, "detail_level": 5.48, "risk_level": 7.39},
    "negative": {"clinical_accuracy": 5.03, "clinical_relevance": 5.39, "detail_level": 4.84, "risk_level": 5.89},
}

#: The rows' schema: the store's ``judge_agreement`` table (:data:`medhall.schema.JUDGE_AGREEMENT`).
AGREEMENT_SCHEMA = JUDGE_AGREEMENT


# --------------------------------------------------------------------------- from tables


def contingency(reference: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, table): the distinct score values of both judges, sorted, and the counts
    ``table[i, j]`` of answers the reference scored ``values[i]`` and the candidate ``values[j]``."""
    x, y = _pair(reference, candidate)
    values, codes = _codes(x, y)
    k = len(values)
    return values, np.bincount(codes, minlength=k * k).reshape(k, k)


def _pair(reference: Any, candidate: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"reference and candidate must be two vectors of one length, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores must be finite (leave failed judgments out, count them apart)")
    return x, y


def _codes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct values and each pair's cell index ``i * K + j``."""
    values = np.unique(np.concatenate([x, y]))
    k = len(values)
    return values, np.searchsorted(values, x) * k + np.searchsorted(values, y)


def measures_from_tables(values: np.ndarray, tables: np.ndarray) -> dict[str, np.ndarray]:
    """Every measure of :data:`ALL_MEASURES` for each contingency table of ``tables`` (shape
    ``(B, K, K)``, rows the reference, columns the candidate, over ``values``); NaN where a
    measure is undefined."""
    t = np.asarray(tables, dtype=np.float64)
    if t.ndim == 2:
        t = t[None]
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = t.sum(axis=(1, 2))
        px, py = t.sum(axis=2), t.sum(axis=1)  # marginals: reference (rows), candidate (columns)
        mean_x, mean_y = px @ v / n, py @ v / n
        diff = v[None, :] - v[:, None]  # candidate value - reference value, per cell
        exact = (t * (diff == 0)).sum(axis=(1, 2)) / n
        within1 = (t * (np.abs(diff) <= 1 + 1e-9)).sum(axis=(1, 2)) / n
        weights = diff**2
        observed = (t * weights).sum(axis=(1, 2)) / n
        expected = np.einsum("bi,ij,bj->b", px, weights, py) / n**2
        qwk = np.where(expected > 0, 1.0 - observed / np.where(expected > 0, expected, 1.0), np.nan)
        spearman = _spearman(t, px, py, n)
        kendall = _kendall(t, px, py, n)
    return {
        "spearman": spearman, "kendall_tau_b": kendall, "qwk": qwk, "bias": mean_y - mean_x, "exact": exact,
        "within1": within1, "candidate_mean": mean_y, "reference_mean": mean_x,
    }


def _midranks(marginal: np.ndarray) -> np.ndarray:
    """Average rank (1-based) of each value given its count and the counts below it."""
    below = np.cumsum(marginal, axis=1) - marginal
    return below + (marginal + 1.0) / 2.0


def _spearman(t: np.ndarray, px: np.ndarray, py: np.ndarray, n: np.ndarray) -> np.ndarray:
    rx = _midranks(px) - ((n + 1.0) / 2.0)[:, None]  # centred: the mean rank is (n + 1) / 2
    ry = _midranks(py) - ((n + 1.0) / 2.0)[:, None]
    cov = np.einsum("bij,bi,bj->b", t, rx, ry)
    var_x, var_y = (px * rx**2).sum(axis=1), (py * ry**2).sum(axis=1)
    denom = np.sqrt(var_x * var_y)
    return np.where(denom > 1e-12, cov / np.where(denom > 1e-12, denom, 1.0), np.nan)


def _kendall(t: np.ndarray, px: np.ndarray, py: np.ndarray, n: np.ndarray) -> np.ndarray:
    b, k, _ = t.shape
    padded = np.zeros((b, k + 2, k + 2))
    padded[:, 1:-1, 1:-1] = t
    # above[a, c] = counts with row > a and column > c; left[a, c] = row > a and column < c
    rows_after = np.flip(np.cumsum(np.flip(padded, axis=1), axis=1), axis=1)  # row >= a
    ge_ge = np.flip(np.cumsum(np.flip(rows_after, axis=2), axis=2), axis=2)  # row >= a, col >= c
    ge_le = np.cumsum(rows_after, axis=2)  # row >= a, col <= c
    above = ge_ge[:, 2:, 2:]  # row >= a + 1, col >= c + 1 (for the inner cells a, c = 1..k)
    left = ge_le[:, 2:, :-2]  # row >= a + 1, col <= c - 1
    concordant = (t * above).sum(axis=(1, 2))
    discordant = (t * left).sum(axis=(1, 2))
    n0 = n * (n - 1) / 2.0
    ties_x, ties_y = (px * (px - 1) / 2.0).sum(axis=1), (py * (py - 1) / 2.0).sum(axis=1)
    denom = np.sqrt(np.clip(n0 - ties_x, 0, None) * np.clip(n0 - ties_y, 0, None))
    return np.where(denom > 0, (concordant - discordant) / np.where(denom > 0, denom, 1.0), np.nan)


# --------------------------------------------------------------------------- vectors


def _value(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def agreement(reference: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """Every measure of :data:`ALL_MEASURES` for paired scores (None where undefined; all None
    for no pairs)."""
    x, y = _pair(reference, candidate)
    if x.size == 0:
        return dict.fromkeys(ALL_MEASURES)
    values, table = contingency(x, y)
    return {k: _value(v[0]) for k, v in measures_from_tables(values, table).items()}


def spearman(reference: Sequence[float], candidate: Sequence[float]) -> float | None:
    return agreement(reference, candidate)["spearman"]


def kendall_tau_b(reference: Sequence[float], candidate: Sequence[float]) -> float | None:
    return agreement(reference, candidate)["kendall_tau_b"]


def quadratic_weighted_kappa(reference: Sequence[float], candidate: Sequence[float]) -> float | None:
    return agreement(reference, candidate)["qwk"]


@dataclass(frozen=True)
class AgreementEstimate:
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


def bootstrap_agreement(
    reference: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray, *,
    n_boot: int = 1000, seed: int = 0, level: float = 0.95,
) -> dict[str, AgreementEstimate]:
    """Each measure with its percentile-bootstrap interval: ``n_boot`` resamples of the answer
    pairs with replacement (seeded; the same resamples for every measure). Resamples where a
    measure is undefined are left out of its interval; no pairs: all None."""
    x, y = _pair(reference, candidate)
    n = int(x.size)
    if n == 0:
        return {m: AgreementEstimate(None, None, None, 0) for m in ALL_MEASURES}
    values, codes = _codes(x, y)
    k = len(values)
    point = measures_from_tables(values, np.bincount(codes, minlength=k * k).reshape(1, k, k))
    rng = np.random.default_rng(seed)
    picked = codes[rng.integers(0, n, size=(n_boot, n))] + (np.arange(n_boot) * k * k)[:, None]
    tables = np.bincount(picked.ravel(), minlength=n_boot * k * k).reshape(n_boot, k, k)
    boot = measures_from_tables(values, tables)
    alpha = (1.0 - level) / 2.0
    out = {}
    for m in ALL_MEASURES:
        finite = boot[m][np.isfinite(boot[m])]
        low, high = (np.quantile(finite, [alpha, 1.0 - alpha]) if finite.size else (np.nan, np.nan))
        out[m] = AgreementEstimate(_value(point[m][0]), _value(low), _value(high), n)
    return out


# --------------------------------------------------------------------------- judgments


def judged_scores(judgments: pa.Table) -> dict[str, dict[str, float] | None]:
    """``{qa_id: {axis: score}}`` of a ``judgments`` table; None for a failed judgment (the
    first row of a qa_id counts)."""
    out: dict[str, dict[str, float] | None] = {}
    for r in judgments.select(["qa_id", "status", *AXES]).to_pylist():
        if r["qa_id"] in out:
            continue
        ok = r["status"] == "ok" and all(r[a] is not None for a in AXES)
        out[r["qa_id"]] = {a: float(r[a]) for a in AXES} if ok else None
    return out


def agreement_table(
    reference: pa.Table, candidate: pa.Table, kinds: Mapping[str, str | None], *,
    judge_model: str, reference_judge: str = "gpt-4o", model: str = "llava-med-v1.5-7b",
    rubric_hash: str | None = None, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
    run_id: str | None = None,
) -> pa.Table:
    """Agreement of the ``candidate`` judgments with the ``reference`` ones (both ``judgments``
    tables of the same answers), per axis and kind (positive, negative, all), as
    ``judge_agreement`` rows (:data:`AGREEMENT_SCHEMA`): each measure with its bootstrap
    interval, ``n`` the answers both judged, ``n_failed`` the answers of the candidate's table
    whose candidate or reference judgment failed (or that the reference did not judge):
    counted, never scored. Only the questions in the candidate's table and in ``kinds`` count."""
    ref, cand = judged_scores(reference), judged_scores(candidate)
    rows = []
    for kind in KINDS:
        ids = [q for q in cand if q in kinds and (kind == "all" or kinds[q] == kind)]
        pairs = [q for q in ids if cand[q] is not None and ref.get(q) is not None]
        failed = len(ids) - len(pairs)
        for axis in AXES:
            x = np.array([ref[q][axis] for q in pairs], dtype=np.float64)  # type: ignore[index]
            y = np.array([cand[q][axis] for q in pairs], dtype=np.float64)  # type: ignore[index]
            for measure, est in bootstrap_agreement(x, y, n_boot=n_boot, seed=seed, level=level).items():
                rows.append({"judge_model": judge_model, "reference_judge": reference_judge, "model": model,
                             "axis": axis, "kind": kind, "measure": measure, "value": est.value, "ci_low": est.ci_low,
                             "ci_high": est.ci_high, "n": est.n, "n_failed": failed, "rubric_hash": rubric_hash,
                             "run_id": run_id})
    return from_rows("judge_agreement", rows)


__all__ = [
    "AGREEMENT_SCHEMA",
    "ALL_MEASURES",
    "KINDS",
    "MEANS",
    "MEASURES",
    "MEASURE_LABELS",
    "PUBLISHED_GPT4O",
    "AgreementEstimate",
    "agreement",
    "agreement_table",
    "bootstrap_agreement",
    "contingency",
    "judged_scores",
    "kendall_tau_b",
    "measures_from_tables",
    "quadratic_weighted_kappa",
    "spearman",
]
