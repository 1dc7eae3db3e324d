"""Judge-agreement measures: hand-computed cases, scipy / scikit-learn cross-checks, perfect and
shuffled agreement on the real release, the bootstrap, failures counted apart."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from medhall.evaluate.agreement import (
    ALL_MEASURES,
    agreement,
    agreement_table,
    bootstrap_agreement,
    contingency,
    kendall_tau_b,
    quadratic_weighted_kappa,
    spearman,
)
from medhall.evaluate.judge import AXES

# --------------------------------------------------------------------------- hand-computed


def test_hand_computed_kendall_spearman_qwk_without_ties():
    x, y = [1, 2, 3, 4], [1, 3, 2, 4]  # 6 pairs: 5 concordant, 1 discordant; rank differences 0, 1, 1, 0
    a = agreement(x, y)
    assert a["kendall_tau_b"] == pytest.approx(4 / 6)
    assert a["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15)) == spearman(x, y)  # 0.8
    # QWK = 1 - mean((x-y)^2) / mean over all (i, j) of (x_i - y_j)^2 = 1 - (2/4) / (40/16)
    assert a["qwk"] == pytest.approx(1 - 0.5 / 2.5)
    assert a["bias"] == 0 and a["exact"] == 0.5 and a["within1"] == 1.0


def test_hand_computed_kendall_with_ties_is_tau_b():
    # pairs: C = 4, D = 0; one tie in x (1, 1), one in y (2, 2): tau_b = 4 / sqrt((6 - 1) (6 - 1)) = 0.8
    # (tau_a would be 4/6, the tie-blind (C - D) / (C + D) would be 1)
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)


def test_hand_computed_qwk_is_not_the_unweighted_kappa():
    # observed: (0 + 0 + 1) / 3; expected: (10 + 5 + 6) / 9 -> QWK = 1 - (1/3) / (7/3) = 6/7
    assert quadratic_weighted_kappa([1, 2, 3], [1, 2, 4]) == pytest.approx(6 / 7)
    # a disagreement by 3 costs 9 times one by 1: the far miss scores lower
    near = quadratic_weighted_kappa([2, 4, 6, 8], [2, 4, 6, 9])
    far = quadratic_weighted_kappa([2, 4, 6, 8], [2, 4, 6, 5])
    assert near > far


def test_bias_sign_exact_and_within_one_boundaries():
    a = agreement([5, 5, 6], [6, 7, 6])  # candidate - reference: +1, +2, 0
    assert a["bias"] == pytest.approx(1.0)
    assert a["exact"] == pytest.approx(1 / 3) and a["within1"] == pytest.approx(2 / 3)
    assert a["candidate_mean"] == pytest.approx(19 / 3) and a["reference_mean"] == pytest.approx(16 / 3)
    swapped = agreement([6, 7, 6], [5, 5, 6])  # bias is candidate minus reference: the sign flips
    assert swapped["bias"] == pytest.approx(-1.0) and swapped["spearman"] == pytest.approx(a["spearman"])
    half = agreement([7, 8, 4], [7.5, 8, 5.5])  # a judge's 7.5 is weighted by its value
    assert half["exact"] == pytest.approx(1 / 3) and half["within1"] == pytest.approx(2 / 3)
    assert half["bias"] == pytest.approx((0.5 + 0 + 1.5) / 3)


def test_undefined_measures_are_none_never_a_number():
    constant = agreement([3, 5, 7, 9], [7, 7, 7, 7])  # a judge that says 7 to everything
    assert constant["spearman"] is None and constant["kendall_tau_b"] is None
    assert constant["qwk"] == pytest.approx(0.0)  # kappa is defined: agreement no better than chance
    same = agreement([7, 7], [7, 7])
    assert same["qwk"] is None and same["exact"] == 1.0 and same["bias"] == 0.0
    assert set(agreement([], [])) == set(ALL_MEASURES) and all(v is None for v in agreement([], []).values())
    with pytest.raises(ValueError):
        agreement([1, 2], [1])
    with pytest.raises(ValueError):
        agreement([1, float("nan")], [1, 2])


def test_contingency_counts_pairs_over_the_union_of_values():
    values, table = contingency([1, 1, 2], [2, 2, 3])
    assert values.tolist() == [1, 2, 3]
    assert table.tolist() == [[0, 2, 0], [0, 0, 1], [0, 0, 0]]


def test_perfect_agreement():
    rng = np.random.default_rng(3)
    x = rng.integers(1, 11, 300).astype(float)
    a = agreement(x, x)
    assert a["spearman"] == pytest.approx(1.0) and a["kendall_tau_b"] == pytest.approx(1.0)
    assert a["qwk"] == pytest.approx(1.0) and a["bias"] == 0.0 and a["exact"] == 1.0 and a["within1"] == 1.0


# --------------------------------------------------------------------------- the libraries agree


@pytest.mark.filterwarnings("ignore:An input array is constant")
@pytest.mark.parametrize("trial", range(40))
def test_same_values_as_scipy_and_scikit_learn(trial):
    stats = pytest.importorskip("scipy.stats")
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(trial)
    n = int(rng.integers(2, 120))
    x = rng.integers(1, 11, n)
    y = np.clip(x + rng.integers(-3, 4, n), 1, 10) if trial % 2 else rng.integers(1, 11, n)
    a = agreement(x, y)
    expected = {
        "spearman": stats.spearmanr(x, y).statistic,
        "kendall_tau_b": stats.kendalltau(x, y).statistic,  # variant b is scipy's default
        "qwk": metrics.cohen_kappa_score(x, y, weights="quadratic", labels=list(range(1, 11))),
    }
    for name, value in expected.items():
        if math.isnan(value):
            assert a[name] is None, name
        else:
            assert a[name] == pytest.approx(value, abs=1e-9), name
    assert a["bias"] == pytest.approx(float(np.mean(y - x)))
    assert a["within1"] == pytest.approx(float(np.mean(np.abs(y - x) <= 1)))


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_seeded_and_brackets_the_value():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 11, 400).astype(float)
    y = np.clip(x + rng.integers(-2, 3, 400), 1, 10)
    one, again = bootstrap_agreement(x, y, n_boot=300, seed=5), bootstrap_agreement(x, y, n_boot=300, seed=5)
    other = bootstrap_agreement(x, y, n_boot=300, seed=6)
    assert one == again and one != other
    for m, est in one.items():
        assert est.n == 400
        assert est.ci_low <= est.value <= est.ci_high, m
    assert one["spearman"].ci_high - one["spearman"].ci_low < 0.2  # 400 pairs: a narrow interval
    assert bootstrap_agreement([], [])["qwk"].value is None


def test_bootstrap_of_a_constant_candidate_has_no_correlation_interval():
    est = bootstrap_agreement([3, 5, 7, 9], [7, 7, 7, 7], n_boot=50)
    assert est["spearman"].value is None and est["spearman"].ci_low is None
    assert est["candidate_mean"].value == 7 and est["candidate_mean"].ci_low == 7 == est["candidate_mean"].ci_high


# --------------------------------------------------------------------------- judgments tables


def _judgments(rows: dict[str, tuple[float, ...] | None], judge: str = "j") -> pa.Table:
    from medhall.schema import from_rows

    out = []
    for qa, scores in rows.items():
        ok = scores is not None
        out.append({"judgment_id": f"jdg_{judge}_{qa}", "qa_id": qa, "model": "m", "judge_model": judge,
                    "status": "ok" if ok else "failed", **dict(zip(AXES, scores if ok else (None,) * 4, strict=True))})
    return from_rows("judgments", out)


def test_agreement_table_per_axis_and_kind_counts_failures_apart():
    ref = _judgments({"a": (7, 8, 6, 9), "b": (5, 5, 5, 5), "c": (3, 4, 2, 6), "d": (8, 8, 8, 8), "e": (6, 6, 6, 6)})
    cand = _judgments({"a": (7, 8, 6, 9), "b": (5, 6, 5, 4), "c": None, "d": (8, 8, 7, 8), "f": (1, 1, 1, 1)}, "cand")
    kinds = {"a": "positive", "b": "positive", "c": "negative", "d": "negative", "e": "negative", "f": "negative"}
    t = agreement_table(ref, cand, kinds, judge_model="cand", n_boot=20)
    rows = {(r["axis"], r["kind"], r["measure"]): r for r in t.to_pylist()}
    assert len(rows) == len(AXES) * 3 * len(ALL_MEASURES) == t.num_rows
    # P: a and b both judged; N: d only (c failed for the candidate, f unknown to the reference, e not asked)
    assert rows[("clinical_accuracy", "positive", "exact")]["n"] == 2
    assert rows[("clinical_accuracy", "negative", "exact")]["n"] == 1
    assert rows[("clinical_accuracy", "negative", "exact")]["n_failed"] == 2
    assert rows[("clinical_accuracy", "all", "exact")]["n"] == 3 and rows[("clinical_accuracy", "all", "exact")]["n_failed"] == 2
    assert rows[("risk_level", "positive", "bias")]["value"] == pytest.approx(-0.5)  # (0 + -1) / 2
    assert rows[("detail_level", "negative", "candidate_mean")]["value"] == 7
    assert rows[("detail_level", "negative", "reference_mean")]["value"] == 8
    r = t.to_pylist()[0]
    assert (r["judge_model"], r["reference_judge"], r["model"]) == ("cand", "gpt-4o", "llava-med-v1.5-7b")


def _release_judgments(release_preds: dict[str, Path]):
    from medhall.evaluate.predictions import import_release_judgments, kinds_of, release_questions

    judgments = pa.concat_tables([import_release_judgments(p) for p in release_preds.values()])
    kinds = kinds_of([q for p in release_preds.values() for q in release_questions(p)[0]])
    return judgments, kinds


def test_gpt4o_against_itself_agrees_perfectly_on_the_release(release_preds):
    judgments, kinds = _release_judgments(release_preds)
    t = agreement_table(judgments, judgments, kinds, judge_model="gpt-4o-again", n_boot=100)
    for r in t.to_pylist():
        if r["measure"] in ("spearman", "kendall_tau_b", "qwk", "exact", "within1"):
            assert r["value"] == pytest.approx(1.0) and r["ci_low"] == pytest.approx(1.0), r
        elif r["measure"] == "bias":
            assert r["value"] == 0.0
        assert r["n"] == {"positive": 1110, "negative": 1128, "all": 2238}[r["kind"]] and r["n_failed"] == 0


def test_gpt4o_against_a_shuffled_copy_agrees_near_zero(release_preds):
    judgments, kinds = _release_judgments(release_preds)
    ids = judgments.column("qa_id").to_pylist()
    shuffled = judgments.set_column(judgments.schema.get_field_index("qa_id"), "qa_id",
                                    pa.array(list(np.random.default_rng(0).permutation(ids)), pa.string()))
    t = agreement_table(judgments, shuffled, kinds, judge_model="shuffled", n_boot=200)
    rows = {(r["axis"], r["kind"], r["measure"]): r for r in t.to_pylist()}
    for axis in AXES:
        for measure in ("spearman", "kendall_tau_b", "qwk"):
            r = rows[(axis, "all", measure)]
            assert abs(r["value"]) < 0.06, (axis, measure, r)
        # the same scores in another order: the means (and so the bias over all) are unchanged
        assert rows[(axis, "all", "bias")]["value"] == pytest.approx(0.0, abs=1e-12)
        assert rows[(axis, "all", "exact")]["value"] < 0.3
