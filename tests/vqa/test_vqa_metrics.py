"""Every quirk of LLaVA-Med's VQA metrics, pinned with worked examples, and the strict variant."""

from __future__ import annotations

import pytest

from medhall.vqa.data import VQAItem
from medhall.vqa.metrics import (
    choice_accuracy,
    choose_option,
    closed_accuracy,
    closed_strict,
    exact_match,
    headline,
    llava_f1,
    llava_open_scores,
    normalize_llava_med,
    normalize_strict,
    open_hit,
    open_recall,
    score_items,
    summarise,
    token_f1,
)

# normalize_llava_med ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a mark with no space beside it anywhere in the text becomes a space ...
        ("left-sided", "left sided"),
        ("x-ray", "x ray"),
        ("(right)", "right"),
        # ... but one occurrence next to a space deletes that mark everywhere
        ("left - sided", "left sided"),
        ("x-ray - chest", "xray chest"),
        ("the mass (right side)", "mass right side"),  # " (" deletes "(", ")" becomes a space
        # a comma between digits anywhere deletes every mark, not only commas
        ("1,000 left-sided", "1000 leftsided"),
        ("3,4 (x-ray)", "34 xray"),
        # periods: removed unless a digit follows
        ("3.5 cm", "3.5 cm"),
        ("5.", "5"),
        ("e.g. the lung.", "eg lung"),
        ("a.5", "a.5"),
        # number words (and "none"/"zero") to digits; only one..ten
        ("two lesions", "2 lesions"),
        ("Ten", "10"),
        ("none", "0"),
        ("zero", "0"),
        ("eleven", "eleven"),
        # articles are whole words only
        ("The left lung", "left lung"),
        ("an apple", "apple"),
        ("A", ""),
        ("theory", "theory"),
        # contractions: keys compared with lower-cased words
        ("dont", "don't"),
        ("Isnt", "isn't"),
        ("somebody'd", "somebodyd"),  # the table maps this one backwards
        ("Im", "im"),  # capitalised key never matches
        ("don't", "don't"),
        # marks outside its list are kept
        ("ratio: 2", "ratio: 2"),
        ("50% stenosis", "50% stenosis"),
        # whitespace of any kind collapses
        ("left\t\nlung  ", "left lung"),
    ],
)
def test_normalize_llava_med(text: str, expected: str) -> None:
    assert normalize_llava_med(text) == expected


def test_normalize_llava_med_removes_at_most_32_periods() -> None:
    # run_eval passes re.UNICODE (32) as sub()'s count
    assert normalize_llava_med("." * 40 + "x") == "." * 8 + "x"


# open recall -----------------------------------------------------------------------------------


def test_open_recall_counts_candidate_repeats() -> None:
    # tp = candidate's 3 counts of "lung"; fn = reference's 1 "left": 3 / (3 + 1)
    assert open_recall("lung lung lung", "left lung") == 0.75
    f1, precision, recall = llava_open_scores("lung lung lung", "left lung")
    assert (precision, recall) == (1.0, 0.75)
    assert f1 == pytest.approx(2 * 0.75 / 1.75)


@pytest.mark.parametrize(
    ("pred", "gt", "recall"),
    [
        ("The left lung", "left lung", 1.0),
        ("there are two nodules", "2", 1.0),  # number words
        ("0", "None", 1.0),  # "none" -> "0"
        ("right lung", "left lung", 0.5),
        ("lung", "left lung left", 1 / 3),  # fn counts the reference's repeats
        ("", "liver", 0.0),
        ("a", "a", 0.0),  # both normalise to nothing
        ("left-sided", "left", 1.0),  # "-" becomes a space
        ("left-sided - lung", "left", 0.0),  # a spaced "-" deletes every "-": "leftsided lung"
    ],
)
def test_open_recall_examples(pred: str, gt: str, recall: float) -> None:
    assert open_recall(pred, gt) == pytest.approx(recall)


def test_llava_f1_zero_when_no_overlap() -> None:
    assert llava_f1("kidney", "liver") == (0.0, 0.0, 0.0)


def test_open_hit_is_substring_after_normalisation() -> None:
    assert open_hit("It is the left lung.", "Left lung") == 1.0
    assert open_hit("lung, left", "left lung") == 0.0


# closed accuracy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        ("Yes", "yes", 1.0),
        ("No.", "no", 1.0),
        ("The eyes are normal", "yes", 1.0),  # "eyes" contains "yes"
        ("Not sure", "no", 1.0),  # "not" contains "no"
        ("It is unknown", "no", 1.0),  # "unknown" contains "no"
        ("no", "yes", 0.0),  # a yes/no answer that misses scores 0 and is counted
        ("abnormal", "yes", 0.0),  # "abnormal" contains "no", no "yes": a counted miss
        ("None", "no", 0.0),  # "none" becomes "0": no "yes"/"no" at all
        ("The liver", "yes", 0.0),
        ("Lung", "lung", 0.0),  # a non-yes/no closed answer needs "yes"/"no" in the prediction
        ("yes, the lung", "lung", 1.0),
    ],
)
def test_closed_accuracy_gated(pred: str, gt: str, expected: float | None) -> None:
    assert closed_accuracy(pred, gt) == expected


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [("no", "yes", None), ("abnormal", "yes", None), ("None", "no", 0.0), ("Yes", "yes", 1.0), ("Lung", "lung", 0.0)],
)
def test_closed_accuracy_run_eval_drops_gated_misses(pred: str, gt: str, expected: float | None) -> None:
    # run_eval.py as published: a yes/no answer that misses is left out of the mean
    assert closed_accuracy(pred, gt, variant="run_eval") == expected


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [("no", "yes", 0.0), ("Lung", "lung", 1.0), ("The eyes are normal", "yes", 1.0), ("None", "no", 0.0)],
)
def test_closed_accuracy_run_eval_batch(pred: str, gt: str, expected: float) -> None:
    assert closed_accuracy(pred, gt, "run_eval_batch") == expected


def test_closed_accuracy_unknown_variant() -> None:
    with pytest.raises(ValueError):
        closed_accuracy("yes", "yes", "loose")  # type: ignore[arg-type]


# strict variant -------------------------------------------------------------------------------


def test_normalize_strict() -> None:
    assert normalize_strict("The X-ray, 1,000 don't 3.5") == "x ray 1000 dont 3.5"
    assert normalize_strict("Two lesions.") == "2 lesions"
    assert normalize_strict("none") == "none"  # unlike LLaVA-Med


@pytest.mark.parametrize(
    ("pred", "gt", "em", "f1"),
    [
        ("The left lung.", "left lung", 1.0, 1.0),
        ("lung lung lung", "left lung", 0.0, 0.4),  # clipped: 1 common word; P 1/3, R 1/2
        ("left lung and heart", "left lung", 0.0, 2 / 3),  # P 2/4, R 1
        ("", "", 1.0, 1.0),
        ("", "liver", 0.0, 0.0),
    ],
)
def test_exact_match_and_token_f1(pred: str, gt: str, em: float, f1: float) -> None:
    assert exact_match(pred, gt) == em
    assert token_f1(pred, gt) == pytest.approx(f1)


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        ("No, there is none", "no", 1.0),
        ("There is no effusion", "no", 0.0),  # first word decides
        ("The eyes are normal", "yes", 0.0),
        ("YES.", "Yes", 1.0),
        ("The lung", "Lung", 1.0),  # not yes/no: strict exact match
        ("lung and heart", "lung", 0.0),
    ],
)
def test_closed_strict(pred: str, gt: str, expected: float) -> None:
    assert closed_strict(pred, gt) == expected


# multiple choice ------------------------------------------------------------------------------

OPTIONS = {"A": "CT scan", "B": "MRI", "C": "X-ray", "D": "CT scan with contrast"}


@pytest.mark.parametrize(
    ("pred", "letter", "rule"),
    [
        ("B", "B", "letter"),
        ("(b)", "B", "letter"),
        ("C) X-ray", "C", "letter"),
        ("The answer is D.", "D", "letter"),
        ("Answer: (A)", "A", "letter"),
        ("E", None, "none"),  # not an option letter, and no text resembles an option
        ("A large mass", None, "none"),  # the article "A" is not a letter
        ("It is an MRI image", "B", "text"),
        ("x ray", "C", "text"),
        ("ct scan with contrast agent", "D", "text"),  # the longest option contained wins
        ("CT", "A", "nearest"),  # token F1: A 0.67, D 0.4
        ("computed tomography", None, "none"),
    ],
)
def test_choose_option_rules(pred: str, letter: str | None, rule: str) -> None:
    assert choose_option(pred, OPTIONS) == (letter, rule)


def test_choice_accuracy() -> None:
    assert choice_accuracy("B. MRI", OPTIONS, "B") == (True, "letter")
    assert choice_accuracy("x-ray", OPTIONS, "B") == (False, "text")


# score_items / summarise / headline --------------------------------------------------------------


def _items() -> list[VQAItem]:
    return [
        VQAItem("vqa_rad", "vqa_rad/1", "a.jpg", "Where?", "left lung", "open"),
        VQAItem("vqa_rad", "vqa_rad/2", "a.jpg", "Where?", "liver", "open"),
        VQAItem("vqa_rad", "vqa_rad/3", "a.jpg", "Is it?", "yes", "closed"),
        VQAItem("vqa_rad", "vqa_rad/4", "a.jpg", "Is it?", "yes", "closed"),
        VQAItem("vqa_rad", "vqa_rad/5", "a.jpg", "Is it?", "no", "closed"),
        VQAItem("vqa_rad", "vqa_rad/6", "a.jpg", "Is it?", "no", "closed"),
        VQAItem("pmc_vqa", "pmc_vqa/1", "b.jpg", "Which?", "MRI", "choice", OPTIONS, "B"),
        VQAItem("pmc_vqa", "pmc_vqa/2", "b.jpg", "Which?", "X-ray", "choice", OPTIONS, "C"),
        VQAItem("pmc_vqa", "pmc_vqa/3", "b.jpg", "Which?", "CT scan", "choice", OPTIONS, "A"),
        VQAItem("pmc_vqa", "pmc_vqa/4", "b.jpg", "Which?", "CT scan", "choice", OPTIONS, "A"),
    ]


PREDICTIONS = {
    "vqa_rad/1": "lung lung lung",  # recall 0.75
    "vqa_rad/2": "kidney",  # recall 0
    "vqa_rad/3": "Yes.",  # 1
    "vqa_rad/4": "No",  # uncounted by run_eval
    "vqa_rad/5": "The liver",  # 0
    # vqa_rad/6: no prediction
    "pmc_vqa/1": "B",  # letter, hit
    "pmc_vqa/2": "x ray",  # text, hit
    "pmc_vqa/3": "ct",  # nearest, hit
    "pmc_vqa/4": "ultrasound",  # none, miss
    "other/9": "ignored",
}


def _metric(summary: list[dict], bench: str, split: str, metric: str) -> tuple[float | None, int]:
    (row,) = [r for r in summary if (r["benchmark"], r["split"], r["metric"]) == (bench, split, metric)]
    return row["value"], row["n"]


def test_score_items_rows() -> None:
    rows = {r["item_id"]: r for r in score_items(_items(), PREDICTIONS)}
    assert rows["vqa_rad/1"]["llava_recall"] == 0.75 and rows["vqa_rad/1"]["token_f1"] == pytest.approx(0.4)
    assert rows["vqa_rad/4"]["llava_closed"] == 0.0 and rows["vqa_rad/4"]["closed_strict"] == 0.0
    dropped = {r["item_id"]: r for r in score_items(_items(), PREDICTIONS, closed_variant="run_eval")}
    assert dropped["vqa_rad/4"]["llava_closed"] is None
    assert rows["vqa_rad/6"]["missing"] is True and "llava_closed" not in rows["vqa_rad/6"]
    assert (rows["pmc_vqa/3"]["choice_rule"], rows["pmc_vqa/3"]["choice_letter"]) == ("nearest", "A")
    assert rows["pmc_vqa/1"]["answer"] == "B"


def test_summarise_means_counts_and_rule_shares() -> None:
    summary = summarise(score_items(_items(), PREDICTIONS))
    assert _metric(summary, "vqa_rad", "open", "llava_recall") == (0.375, 2)
    assert _metric(summary, "vqa_rad", "closed", "items") == (4.0, 4)
    assert _metric(summary, "vqa_rad", "closed", "missing") == (1.0, 4)
    assert _metric(summary, "vqa_rad", "closed", "llava_closed") == (pytest.approx(1 / 3), 3)  # the miss counts
    assert _metric(summary, "vqa_rad", "closed", "closed_strict") == (pytest.approx(1 / 3), 3)
    assert _metric(summary, "pmc_vqa", "choice", "choice_acc") == (0.75, 4)
    for rule in ("letter", "text", "nearest", "none"):
        assert _metric(summary, "pmc_vqa", "choice", f"rule_share:{rule}") == (0.25, 4)


def test_summarise_run_eval_variant_drops_gated_misses() -> None:
    summary = summarise(score_items(_items(), PREDICTIONS, closed_variant="run_eval"))
    assert _metric(summary, "vqa_rad", "closed", "llava_closed") == (0.5, 2)  # 1 and 0; "No" left out
    assert _metric(summary, "vqa_rad", "closed", "llava_closed_uncounted") == (1.0, 3)


def test_summarise_batch_variant_counts_every_closed_item() -> None:
    summary = summarise(score_items(_items(), PREDICTIONS, closed_variant="run_eval_batch"))
    assert _metric(summary, "vqa_rad", "closed", "llava_closed") == (pytest.approx(1 / 3), 3)


def test_headline_picks_the_table3_metric() -> None:
    rows = headline(summarise(score_items(_items(), PREDICTIONS)))
    assert {(r["benchmark"], r["split"]): r["value"] for r in rows} == {
        ("vqa_rad", "open"): 0.375,
        ("vqa_rad", "closed"): pytest.approx(1 / 3),
        ("pmc_vqa", "choice"): 0.75,
    }
