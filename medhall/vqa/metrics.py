"""Medical VQA metrics: LLaVA-Med's, reproduced exactly, and a strict variant beside them.

**LLaVA-Med** (``llava/eval/run_eval.py`` with ``eval_metrics/glossary.py``,
``evaluate_metrics.py`` and ``utils.py`` of microsoft/LLaVA-Med): every quirk is kept, so
numbers compare with the papers that use it (``docs/vqa.md`` lists them with examples).

- :func:`normalize_llava_med` is its ``normalize_word``.
- :func:`open_recall` is the "recall" reported for open questions: ``calculate_f1score``'s
  recall on answers normalised twice (``run_eval`` normalises, then the metric again).
- :func:`closed_accuracy` is the "yes/no accuracy". ``run_eval.py`` scores a closed item
  only when the normalised prediction contains ``"yes"`` or ``"no"`` as a substring: then 1
  if the normalised ground truth is a substring of it and *nothing at all* otherwise (the
  item is left out of the mean, returned here as ``None``); a prediction with neither gets 0.
  ``variant="run_eval_batch"`` is the corrected rule of LLaVA-Med's ``run_eval_batch.py``:
  1 when the ground truth is a substring of the prediction, else 0.

**Strict**: :func:`normalize_strict` (lowercase, punctuation split, articles dropped, number
words to digits), :func:`exact_match`, :func:`token_f1` (clipped counts, as SQuAD), and
:func:`closed_strict` (a yes/no question is decided by the prediction's first word).

**Multiple choice**: :func:`choose_option` reads the option a prediction picks, by its letter,
else its text, else the nearest option text; :func:`choice_accuracy` scores it and says which
rule decided.

:func:`score_items` scores predictions per item; :func:`summarise` averages per benchmark and
split; :func:`headline` picks the Table 3 number of each.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from difflib import SequenceMatcher
from typing import Any, Literal

from medhall.vqa.data import VQAItem

# --------------------------------------------------------------------------------------------
# LLaVA-Med's normalisation (glossary.normalize_word), behaviour for behaviour

#: Marks handled by the punctuation step, in LLaVA-Med's order. Not in the list (so kept):
#: ``.`` (its own rule), ``:``, ``'``, ``%``, ``*``, ``&``, ``#``, ``$``, ``^``, ``|``, ``~``.
LLAVA_PUNCT: tuple[str, ...] = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

#: Its period pattern, typo included: ``(?!<=\d)`` is a look-*ahead* for the text "<=" and a
#: digit (meant as a look-behind), always true before a ".", so the pattern is ``\.(?!\d)``:
#: a period is removed unless a digit follows it ("3.5" stays, "5." loses its period).
_LLAVA_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
#: ``period_strip.sub("", text, re.UNICODE)`` passes ``re.UNICODE`` (= 32) as ``count``: at
#: most 32 periods are removed per call; later ones stay.
LLAVA_PERIOD_COUNT = int(re.UNICODE)
_LLAVA_DIGIT_COMMA = re.compile(r"(\d)(\,)(\d)")

#: ``manual_map``: note "none" and "zero" both become "0".
LLAVA_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
LLAVA_ARTICLES = frozenset({"a", "an", "the"})

#: The entries of LLaVA-Med's ``contractions`` table that can change a word: its keys are
#: compared with lower-cased words, so the capitalised keys ("Im", "Ive", "Id've", "I'dve")
#: never match, and "let's" / "she's" map to themselves. "somebody'd" really maps to
#: "somebodyd" (the table is reversed there).
LLAVA_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip


def _llava_punctuation(text: str) -> str:
    """Each mark of :data:`LLAVA_PUNCT` is deleted everywhere when the *original* text has it
    next to a space, or when the original has a comma between digits anywhere; otherwise it
    is replaced by a space everywhere."""
    digit_comma = _LLAVA_DIGIT_COMMA.search(text) is not None
    out = text
    for mark in LLAVA_PUNCT:
        delete = digit_comma or f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if delete else " ")
    return out


def normalize_llava_med(text: str) -> str:
    """LLaVA-Med's ``normalize_word``: punctuation, periods, lowercase, number words, articles,
    contractions, commas; words joined by single spaces."""
    text = _LLAVA_PERIOD.sub("", _llava_punctuation(text), count=LLAVA_PERIOD_COUNT)
    words = [LLAVA_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [LLAVA_CONTRACTIONS.get(w, w) for w in words if w not in LLAVA_ARTICLES]
    return " ".join(words).replace(",", "")  # the last replace never finds a comma: kept as is


def _llava_words(text: str) -> Counter[str]:
    """``split_sentence(text, 1)``: counts of the lower-cased whitespace tokens."""
    return Counter(text.lower().split())


def llava_f1(candidate: str, reference: str) -> tuple[float, float, float]:
    """``calculate_f1score``: (f1, precision, recall) over normalised word counts.

    tp sums the *candidate's* counts of words found in both; fp the candidate's counts of
    words missing from the reference; fn the reference's counts of words missing from the
    candidate. All three are 0 when either side is empty or tp is 0.
    """
    cand = _llava_words(normalize_llava_med(candidate))
    ref = _llava_words(normalize_llava_med(reference))
    if not cand or not ref:
        return 0.0, 0.0, 0.0
    tp = sum(n for w, n in cand.items() if w in ref)
    fp = sum(n for w, n in cand.items() if w not in ref)
    fn = sum(n for w, n in ref.items() if w not in cand)
    if tp == 0:
        return 0.0, 0.0, 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall), precision, recall


def _run_eval_values(pred: str, gt: str) -> tuple[str, str]:
    """What ``run_eval.py`` compares: both sides lower-cased and normalised once."""
    return normalize_llava_med(pred.lower()), normalize_llava_med(gt.lower())


def llava_open_scores(pred: str, gt: str) -> tuple[float, float, float]:
    """(f1, precision, recall) of an open answer as ``run_eval.py`` computes them (the values
    it passes to ``calculate_f1score`` are already normalised; that normalises again)."""
    p, g = _run_eval_values(pred, gt)
    return llava_f1(p, g)


def open_recall(pred: str, gt: str) -> float:
    """LLaVA-Med's open-set recall of one answer ("lung lung lung" vs "left lung": 0.75)."""
    return llava_open_scores(pred, gt)[2]


def open_hit(pred: str, gt: str) -> float:
    """``run_eval_batch.py``'s "open accuracy": 1 when the normalised ground truth is a
    substring of the normalised prediction, else 0."""
    p, g = _run_eval_values(pred, gt)
    return 1.0 if g in p else 0.0


ClosedVariant = Literal["gated", "run_eval", "run_eval_batch"]


def closed_accuracy(pred: str, gt: str, variant: ClosedVariant = "gated") -> float | None:
    """LLaVA-Med's yes/no accuracy of one closed answer: 1.0, 0.0, or None (not counted).

    ``gated`` (the default, medhall's Table 3 rule): 1.0 when the normalised prediction
    contains "yes" or "no" anywhere (so "eyes", "not", "abnormal", "unknown" count) and the
    normalised ground truth is a substring of it; every other case 0.0 and counted.
    ``run_eval``: ``run_eval.py`` as published: the same gate, but a gated miss is None (the
    item is dropped from the mean), so a model that always says "yes" or "no" scores 100 %.
    ``run_eval_batch``: the authors' later fix: 1.0 when the ground truth is a substring of
    the prediction, else 0.0, with no yes/no gate.
    """
    p, g = _run_eval_values(pred, gt)
    if variant == "run_eval_batch":
        return 1.0 if g in p else 0.0
    if variant not in ("gated", "run_eval"):
        raise ValueError(f"unknown closed-accuracy variant {variant!r}")
    if "yes" in p or "no" in p:
        if g in p:
            return 1.0
        return None if variant == "run_eval" else 0.0
    return 0.0


# --------------------------------------------------------------------------------------------
# Strict variant

STRICT_NUMBER_WORDS: dict[str, str] = {w: d for w, d in LLAVA_NUMBER_WORDS.items() if w != "none"}
_STRICT_ARTICLES = LLAVA_ARTICLES
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_APOSTROPHES = re.compile(r"['\u2019`]")
_STRICT_TOKEN = re.compile(r"\d+(?:\.\d+)*|[^\W_]+")


def normalize_strict(text: str) -> str:
    """Lowercase (NFKC); commas inside numbers and apostrophes removed; every other
    punctuation mark splits words (a decimal point between digits stays); articles dropped;
    "zero".."ten" to digits. "The X-ray, 1,000 don't 3.5" -> "x ray 1000 dont 3.5"."""
    s = unicodedata.normalize("NFKC", text).lower()
    s = _APOSTROPHES.sub("", _DIGIT_COMMA.sub("", s))
    words = (STRICT_NUMBER_WORDS.get(w, w) for w in _STRICT_TOKEN.findall(s))
    return " ".join(w for w in words if w not in _STRICT_ARTICLES)


def exact_match(pred: str, gt: str) -> float:
    """1.0 when the strictly normalised prediction equals the normalised ground truth."""
    return 1.0 if normalize_strict(pred) == normalize_strict(gt) else 0.0


def token_f1(pred: str, gt: str) -> float:
    """Token F1 over strictly normalised words with clipped counts (SQuAD's definition):
    1.0 when both are empty, 0.0 when only one is."""
    p, g = normalize_strict(pred).split(), normalize_strict(gt).split()
    if not p or not g:
        return 1.0 if p == g else 0.0
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def closed_strict(pred: str, gt: str) -> float:
    """A yes/no ground truth is matched by the prediction's first word only ("No, ..." is
    "no"; "There is no ..." is neither); any other closed answer (SLAKE's "left", "liver")
    needs a strict exact match."""
    g = normalize_strict(gt)
    if g in ("yes", "no"):
        words = normalize_strict(pred).split()
        return 1.0 if words and words[0] == g else 0.0
    return exact_match(pred, gt)


# --------------------------------------------------------------------------------------------
# Multiple choice

ChoiceRule = Literal["letter", "text", "nearest", "none"]
CHOICE_RULES: tuple[ChoiceRule, ...] = ("letter", "text", "nearest", "none")

_LETTER_ALONE = re.compile(r"^\s*[(\[]?([A-Za-z])[)\]]?\s*[.:)]?\s*$")
_LETTER_LEADING = re.compile(r"^\s*(?:[(\[]([A-Z])[)\]]|([A-Z])[.:)])(?=\s|$)")
_LETTER_NAMED = re.compile(r"\b(?i:answer(?:\s+is)?|option|choice)\s*[:\-]?\s*[(\[]?([A-Z])(?![A-Za-z])")


def _letter_of(pred: str, options: Mapping[str, str]) -> str | None:
    """The option letter a prediction names: the whole answer ("B", "(b)", "B."), a leading
    "B." / "B)" / "(B)" / "B:", or "answer is B" / "Answer: (B)" / "option B"."""
    m = _LETTER_ALONE.match(pred)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    m = _LETTER_LEADING.match(pred)
    if m and (m.group(1) or m.group(2)) in options:
        return m.group(1) or m.group(2)
    for m in _LETTER_NAMED.finditer(pred):
        if m.group(1) in options:
            return m.group(1)
    return None


def _text_choice(pred: str, options: Mapping[str, str]) -> str | None:
    """The option whose normalised text equals the prediction, else the one contained in it
    as whole words (the longest, when it is the only longest)."""
    p = normalize_strict(pred)
    norms = {k: normalize_strict(t) for k, t in options.items()}
    equal = [k for k, t in norms.items() if t and t == p]
    if len(equal) == 1:
        return equal[0]
    inside = [k for k, t in norms.items() if t and f" {t} " in f" {p} "]
    if not inside:
        return None
    longest = max(len(norms[k]) for k in inside)
    best = [k for k in inside if len(norms[k]) == longest]
    return best[0] if len(best) == 1 else None


def _nearest_choice(pred: str, options: Mapping[str, str]) -> str | None:
    """The option with the highest token F1 to the prediction (ties: the higher character
    similarity, then the earlier letter); None when every option has F1 0."""
    p = normalize_strict(pred)
    ranked = [(token_f1(pred, t), SequenceMatcher(None, p, normalize_strict(t)).ratio(), -i, k) for i, (k, t) in enumerate(options.items())]
    best = max(ranked, default=None)
    return best[3] if best is not None and best[0] > 0 else None


def choose_option(pred: str, options: Mapping[str, str]) -> tuple[str | None, ChoiceRule]:
    """The letter a prediction picks and the rule that decided: ``letter``, ``text``,
    ``nearest`` or ``none`` (nothing resembles any option)."""
    for rule, pick in (("letter", _letter_of), ("text", _text_choice), ("nearest", _nearest_choice)):
        letter = pick(pred, options)
        if letter is not None:
            return letter, rule  # type: ignore[return-value]
    return None, "none"


def choice_accuracy(pred: str, options: Mapping[str, str], label: str) -> tuple[bool, ChoiceRule]:
    """(hit, rule): whether the option the prediction picks is ``label``, and which rule decided."""
    letter, rule = choose_option(pred, options)
    return letter == label, rule


# --------------------------------------------------------------------------------------------
# Scoring items and summarising

#: The Table 3 number of each split.
HEADLINE_METRIC: dict[str, str] = {"open": "llava_recall", "closed": "llava_closed", "choice": "choice_acc"}


def _score_open(pred: str, gt: str) -> dict[str, Any]:
    f1, precision, recall = llava_open_scores(pred, gt)
    return {
        "llava_recall": recall,
        "llava_precision": precision,
        "llava_f1": f1,
        "llava_open_hit": open_hit(pred, gt),
        "exact_match": exact_match(pred, gt),
        "token_f1": token_f1(pred, gt),
    }


def _score_closed(pred: str, gt: str, variant: ClosedVariant) -> dict[str, Any]:
    return {"llava_closed": closed_accuracy(pred, gt, variant), "closed_strict": closed_strict(pred, gt), "exact_match": exact_match(pred, gt)}


def _score_choice(pred: str, item: VQAItem) -> dict[str, Any]:
    letter, rule = choose_option(pred, item.options or {})
    return {"choice_acc": 1.0 if letter == item.answer_label else 0.0, "choice_rule": rule, "choice_letter": letter}


def score_item(item: VQAItem, prediction: str | None, *, closed_variant: ClosedVariant = "gated") -> dict[str, Any]:
    """One item's score row: ids, split, prediction, reference and the split's metrics
    (``missing=True`` and no metrics when there is no prediction)."""
    row: dict[str, Any] = {
        "benchmark": item.benchmark,
        "item_id": item.item_id,
        "split": item.answer_type,
        "prediction": prediction,
        "answer": item.answer_label if item.answer_type == "choice" else item.answer,
        "missing": prediction is None,
    }
    if prediction is None:
        return row
    if item.answer_type == "open":
        row.update(_score_open(prediction, item.answer))
    elif item.answer_type == "closed":
        row.update(_score_closed(prediction, item.answer, closed_variant))
    else:
        row.update(_score_choice(prediction, item))
    return row


def score_items(
    items: Iterable[VQAItem], predictions: Mapping[str, str | None], *, closed_variant: ClosedVariant = "gated"
) -> list[dict[str, Any]]:
    """Score rows for ``items`` with ``predictions`` keyed by ``item_id`` (an item without a
    prediction gets a ``missing`` row; predictions for unknown ids are ignored)."""
    return [score_item(it, predictions.get(it.item_id), closed_variant=closed_variant) for it in items]


_NOT_AVERAGED = frozenset({"benchmark", "item_id", "split", "prediction", "answer", "missing", "choice_rule", "choice_letter"})


def _means(rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[float | None, int]]:
    """(mean over the non-None values, how many) of each numeric metric in ``rows``."""
    values: dict[str, list[float]] = defaultdict(list)
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k in _NOT_AVERAGED:
                continue
            if k not in values:
                keys.append(k)
            if v is not None:
                values[k].append(float(v))
    return {k: (sum(values[k]) / len(values[k]) if values[k] else None, len(values[k])) for k in keys}


def _summary_row(benchmark: str, split: str, metric: str, value: float | None, n: int) -> dict[str, Any]:
    return {"benchmark": benchmark, "split": split, "metric": metric, "value": value, "n": n}


def summarise(scores: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Long summary rows ``{benchmark, split, metric, value, n}`` per (benchmark, split).

    ``value`` is the mean of the metric over the items that have it (in [0, 1]); ``n`` how
    many. Beside the metrics: ``items`` and ``missing`` (counts in ``value``);
    ``llava_closed_uncounted`` (closed items ``run_eval`` would leave out of its mean); and, for
    multiple choice, ``rule_share:<rule>`` (the share of scored items each rule decided).
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for s in scores:
        groups[(s["benchmark"], s["split"])].append(s)
    out: list[dict[str, Any]] = []
    for (bench, split), rows in groups.items():
        scored = [r for r in rows if not r.get("missing")]
        out.append(_summary_row(bench, split, "items", float(len(rows)), len(rows)))
        out.append(_summary_row(bench, split, "missing", float(len(rows) - len(scored)), len(rows)))
        for metric, (value, n) in _means(scored).items():
            out.append(_summary_row(bench, split, metric, value, n))
        if split == "closed":
            uncounted = sum(1 for r in scored if "llava_closed" in r and r["llava_closed"] is None)
            out.append(_summary_row(bench, split, "llava_closed_uncounted", float(uncounted), len(scored)))
        if split == "choice":
            rules = Counter(r["choice_rule"] for r in scored)
            for rule in CHOICE_RULES:
                out.append(_summary_row(bench, split, f"rule_share:{rule}", rules[rule] / len(scored) if scored else None, len(scored)))
    return out


def headline(summary: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The Table 3 rows ``{benchmark, split, value, n}`` of a :func:`summarise` output:
    LLaVA-Med recall (open), LLaVA-Med yes/no accuracy (closed), accuracy (choice)."""
    return [
        {"benchmark": r["benchmark"], "split": r["split"], "value": r["value"], "n": r["n"]}
        for r in summary
        if HEADLINE_METRIC.get(r["split"]) == r["metric"]
    ]


__all__ = [
    "CHOICE_RULES",
    "HEADLINE_METRIC",
    "LLAVA_CONTRACTIONS",
    "LLAVA_NUMBER_WORDS",
    "LLAVA_PUNCT",
    "choice_accuracy",
    "choose_option",
    "closed_accuracy",
    "closed_strict",
    "exact_match",
    "headline",
    "llava_f1",
    "llava_open_scores",
    "normalize_llava_med",
    "normalize_strict",
    "open_hit",
    "open_recall",
    "score_item",
    "score_items",
    "summarise",
    "token_f1",
]
