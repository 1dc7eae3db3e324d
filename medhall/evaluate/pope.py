"""Judge-free hallucination scores, the POPE way: yes/no questions whose right answer is known.

POPE (Li et al., 2023) measures object hallucination by asking "Is there a <object> in the
image?" about objects that are there (answer yes) and objects that are not (answer no, the
absent ones sampled at random, among the most frequent objects, or among those that co-occur
with what the image shows), and scoring the answers as a binary classification: accuracy,
precision, recall and F1 of "yes", and the share of "yes" answers. No judge is needed.

**Which questions** (:func:`known_questions`). A question counts when it is a yes/no question
(:func:`is_polar`) and its right answer is known:

- rows of the offline generator (``meta.task`` says what was asked):
  ``nonexistent_object/absent`` (an absent entity, POPE's negatives; ``meta.strategy`` is the
  sampling strategy actually used: random, popular or adversarial) and
  ``object_manipulation/attribute`` and ``/number`` (an attribute swapped to one the caption
  does not state; ``meta.swapped.group`` is the attribute type: laterality, size, shape, ...)
  expect **no**; ``finding_recognition/present`` and ``disease_recognition/confirm`` (a finding
  or disease the caption states without negation or hedging) expect **yes**. Relation
  questions (``object_manipulation/relation``) are left out: the caption does not support the
  relation, which is not the same as the answer being no;
- any other row (an LLM build, an ingested corpus, closed VQA): the ground-truth answer's first
  word decides it (by the rule ``first_word`` below); other answers are not known.

A question is yes/no when it ends with "?" and either its last sentence (after a lead-in such as
"Quick question:") starts with an auxiliary (is, are, does, do, can, could, has, have, should,
would, will, ... or the elliptical "Any") and is not a request ("Can you describe ...", "Could
you tell me ..."), or it ends with a tag (", right?", "doesn't it?", "isn't it?"). "Please
comment on ...", "How large is ...", "Describe ..." are open questions: they need a judge.

**The yes/no decision rule** (:func:`decide`) reads the model's answer:

- ``first_word`` (the default, strict): the answer is normalised as the VQA metrics' strict
  variant does (:func:`medhall.vqa.metrics.normalize_strict`: lower case, punctuation split,
  articles dropped) and its **first word** decides: ``yes`` -> yes, ``no`` -> no; anything
  else ("There is no ...", "I cannot see the image", an empty answer) is **undecided**. This is
  :func:`medhall.vqa.metrics.closed_strict`'s rule. Undecided answers are counted
  (``undecided``, ``undecided_share``) and left out of the rates, except ``accuracy_all``, which
  counts them wrong;
- ``pope``: POPE's own evaluation code: keep the first sentence (up to the first "."), remove
  commas, split on spaces; ``No``, ``no`` or ``not`` among the words -> no, else yes. It
  always decides, so an answer that dodges the question counts as yes.

**Scores** (:func:`confusion_scores`), "yes" the positive class: ``accuracy = (tp + tn) /
decided``, ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``, ``f1``, ``yes_ratio =
(tp + fp) / decided``, ``hallucination_rate = fp / (fp + tn)`` (the share of questions whose
answer is no that the model answered yes), ``accuracy_all = (tp + tn) / n`` and
``undecided_share = undecided / n``; None where a denominator is 0.

**Breakdowns** (:func:`pope_scores`): overall; by sampling strategy (as in POPE, each
strategy's group is its nonexistent-object questions plus every question whose answer is yes,
which the strategies share); by category; by attribute type; by modality.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from medhall.schema import POPE_SCORES, from_rows

Label = Literal["yes", "no"]
Rule = Literal["first_word", "pope"]
RULES: tuple[Rule, ...] = ("first_word", "pope")
DEFAULT_RULE: Rule = "first_word"
BREAKDOWNS = ("overall", "strategy", "category", "attribute_type", "modality")
STRATEGIES = ("random", "popular", "adversarial")

#: What the offline generator's tasks expect: ``(category, meta.task) -> answer``.
GENERATOR_LABELS: dict[tuple[str, str], Label] = {
    ("nonexistent_object", "absent"): "no",
    ("object_manipulation", "attribute"): "no",
    ("object_manipulation", "number"): "no",
    ("finding_recognition", "present"): "yes",
    ("disease_recognition", "confirm"): "yes",
}

COUNT_FIELDS = ("n", "n_failed", "n_expected_yes", "n_expected_no", "tp", "fp", "tn", "fn", "undecided")
RATE_FIELDS = ("accuracy", "accuracy_all", "precision", "recall", "f1", "yes_ratio", "hallucination_rate", "undecided_share")

#: The rows' schema: the store's ``pope_scores`` table (:data:`medhall.schema.POPE_SCORES`).
POPE_SCHEMA = POPE_SCORES

# --------------------------------------------------------------------------- questions

_AUXILIARIES = frozenset(
    "is are was were am do does did can could has have had will would should shall may might must any".split()
)
_REQUEST = re.compile(
    r"^(?:can|could|would|will)\s+you\s+(?:please\s+)?(?:describe|tell|explain|list|characteri[sz]e|comment|"
    r"give|outline|summari[sz]e|walk|point|identify|name|specify|state|detail|elaborate|interpret|discuss)\b",
    re.IGNORECASE,
)
_TAG = re.compile(
    r"(?:,\s*(?:right|correct|true|yes)|\b(?:isn't|aren't|doesn't|don't|wasn't|weren't|hasn't|haven't|can't|won't)"
    r"\s+(?:it|they|there|he|she|you|we)|\bis\s+(?:that|it)\s+(?:right|correct|true))\s*\?\s*$",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LEAD_IN = re.compile(r"^(?:[^\s:?]+\s+){0,3}[^\s:?]+:\s+")
_FIRST_WORD = re.compile(r"[A-Za-z]+")


def is_polar(question: str | None) -> bool:
    """Whether ``question`` is a yes/no question (the module docstring gives the rule)."""
    q = (question or "").strip()
    if not q.endswith("?"):
        return False
    if _TAG.search(q):
        return True
    last = _LEAD_IN.sub("", _SENTENCE_END.split(q)[-1].strip())
    if _REQUEST.match(last):
        return False
    first = _FIRST_WORD.match(last)
    return bool(first) and first.group(0).lower() in _AUXILIARIES


@dataclass(frozen=True)
class KnownQuestion:
    """A yes/no question whose right answer is known without a judge."""

    qa_id: str
    expected: Label
    category: str | None = None
    strategy: str | None = None  # POPE sampling strategy of a nonexistent-object question
    attribute_type: str | None = None  # the swapped attribute's group of an attribute question
    modality: str | None = None
    basis: str = "generator"  # generator (the task says it) or ground_truth (its first word)


def _meta(meta: Any) -> dict[str, Any]:
    if isinstance(meta, Mapping):
        return dict(meta)
    if isinstance(meta, str) and meta:
        try:
            value = json.loads(meta)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


def expected_answer(row: Mapping[str, Any]) -> KnownQuestion | None:
    """The :class:`KnownQuestion` of an instruction row (``qa_id``, ``question``, ``answer``,
    ``category``, ``meta``, optionally ``modality``), or None when its answer is not known
    without a judge."""
    if not is_polar(row.get("question")):
        return None
    meta, category = _meta(row.get("meta")), row.get("category")
    common = {"qa_id": row["qa_id"], "category": category, "modality": row.get("modality")}
    task = meta.get("task")
    if isinstance(task, str) and category is not None:
        label = GENERATOR_LABELS.get((category, task))
        if label is not None:
            strategy = meta.get("strategy") if category == "nonexistent_object" else None
            swapped = meta.get("swapped") if isinstance(meta.get("swapped"), Mapping) else {}
            return KnownQuestion(expected=label, strategy=strategy if strategy in STRATEGIES else None,
                                 attribute_type=swapped.get("group") if category == "object_manipulation" else None,
                                 **common)
        if (category, task) in _GENERATOR_TASKS:
            return None  # an offline task whose answer is not yes or no
    label = decide(row.get("answer"), "first_word")
    return KnownQuestion(expected=label, basis="ground_truth", **common) if label else None


_GENERATOR_TASKS = frozenset({
    ("nonexistent_object", "absent"), ("object_manipulation", "attribute"), ("object_manipulation", "number"),
    ("object_manipulation", "relation"), ("knowledge_distortion", "premise"), ("captioning", "describe"),
    ("finding_recognition", "present"), ("disease_recognition", "which"), ("disease_recognition", "confirm"),
    ("modality_anatomy", "modality"), ("modality_anatomy", "anatomy"), ("clinical_reasoning", "significance"),
    ("clinical_reasoning", "modality_knowledge"), ("other", "count"), ("other", "location"), ("other", "appearance"),
})


def known_questions(rows: Iterable[Mapping[str, Any]]) -> list[KnownQuestion]:
    """The rows whose right yes/no answer is known (see :func:`expected_answer`)."""
    return [k for r in rows if (k := expected_answer(r)) is not None]


# --------------------------------------------------------------------------- the decision


def decide(answer: str | None, rule: Rule = DEFAULT_RULE) -> Label | None:
    """The yes/no an answer gives by ``rule`` (``first_word`` or ``pope``); None: undecided."""
    if rule == "first_word":
        from medhall.vqa.metrics import normalize_strict

        words = normalize_strict(answer or "").split()
        return words[0] if words and words[0] in ("yes", "no") else None  # type: ignore[return-value]
    if rule == "pope":  # POPE's evaluate.py, as published
        text = answer or ""
        if text.find(".") != -1:
            text = text.split(".")[0]
        words = text.replace(",", "").split(" ")
        return "no" if ("No" in words or "not" in words or "no" in words) else "yes"
    raise ValueError(f"unknown decision rule {rule!r}; known: {', '.join(RULES)}")


# --------------------------------------------------------------------------- scores


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def confusion_scores(expected: Sequence[Label], decided: Sequence[Label | None], n_failed: int = 0) -> dict[str, Any]:
    """Counts and rates of answers ``decided`` (None: undecided) to questions whose answers are
    ``expected``; "yes" is the positive class (the module docstring defines each field)."""
    if len(expected) != len(decided):
        raise ValueError("expected and decided must have one length")
    pairs = list(zip(expected, decided, strict=True))
    tp = sum(1 for e, d in pairs if e == "yes" and d == "yes")
    fn = sum(1 for e, d in pairs if e == "yes" and d == "no")
    fp = sum(1 for e, d in pairs if e == "no" and d == "yes")
    tn = sum(1 for e, d in pairs if e == "no" and d == "no")
    n, done = len(pairs), tp + fn + fp + tn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n, "n_failed": n_failed, "n_expected_yes": sum(1 for e in expected if e == "yes"),
        "n_expected_no": sum(1 for e in expected if e == "no"), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "undecided": n - done, "accuracy": _ratio(tp + tn, done), "accuracy_all": _ratio(tp + tn, n),
        "precision": precision, "recall": recall, "f1": f1, "yes_ratio": _ratio(tp + fp, done),
        "hallucination_rate": _ratio(fp, fp + tn), "undecided_share": _ratio(n - done, n),
    }


def _groups(k: KnownQuestion) -> list[tuple[str, str]]:
    out = [("overall", "all")]
    if k.strategy is not None:
        out.append(("strategy", k.strategy))
    elif k.expected == "yes":
        out += [("strategy", s) for s in STRATEGIES]
    out.append(("category", k.category or "unknown"))
    if k.attribute_type is not None:
        out.append(("attribute_type", k.attribute_type))
    out.append(("modality", k.modality or "unknown"))
    return out


def pope_scores(known: Sequence[KnownQuestion], answers: Mapping[str, str | None], *, model: str,
                rules: Sequence[Rule] = RULES, run_id: str | None = None) -> pa.Table:
    """POPE scores (rows of :data:`POPE_SCHEMA`) of ``model``'s ``answers`` (``{qa_id: answer}``,
    None or absent: no answer) to the ``known`` questions, per decision rule and breakdown
    group. A question without an answer is counted in ``n_failed``, never scored. A strategy
    group with no nonexistent-object question is left out (it would only hold the yes questions)."""
    cells: dict[tuple[str, str], list[KnownQuestion]] = defaultdict(list)
    for k in known:
        for key in _groups(k):
            cells[key].append(k)
    with_strategy = {k.strategy for k in known if k.strategy is not None}
    keys = sorted((key for key in cells if key[0] != "strategy" or key[1] in with_strategy), key=_order)
    rows = []
    for rule in rules:
        for breakdown, group in keys:
            members = cells[(breakdown, group)]
            scored = [k for k in members if answers.get(k.qa_id) is not None]
            decided = [decide(answers[k.qa_id], rule) for k in scored]
            row = confusion_scores([k.expected for k in scored], decided, n_failed=len(members) - len(scored))
            rows.append({"model": model, "rule": rule, "breakdown": breakdown, "group": group, **row, "run_id": run_id})
    return from_rows("pope_scores", rows)


def _order(key: tuple[str, str]) -> tuple[Any, ...]:
    breakdown, group = key
    rank = STRATEGIES.index(group) if breakdown == "strategy" and group in STRATEGIES else 0
    return BREAKDOWNS.index(breakdown), group == "unknown", rank, group


# --------------------------------------------------------------------------- rendering


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown_pope(table: pa.Table, rule: Rule = DEFAULT_RULE, *, breakdowns: Sequence[str] = BREAKDOWNS) -> str:
    """One rule's rows as a Markdown table (rates in %)."""
    rows = [r for r in table.to_pylist() if r["rule"] == rule and r["breakdown"] in breakdowns]
    head = ("| breakdown | group | n | yes / no expected | accuracy | precision | recall | F1 | yes-ratio | "
            "hallucination rate | undecided | no answer |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['breakdown']} | {r['group']} | {r['n']} | {r['n_expected_yes']} / {r['n_expected_no']} | "
        f"{_pct(r['accuracy'])} | {_pct(r['precision'])} | {_pct(r['recall'])} | {_pct(r['f1'])} | "
        f"{_pct(r['yes_ratio'])} | {_pct(r['hallucination_rate'])} | {r['undecided']} ({_pct(r['undecided_share'])} %) | "
        f"{r['n_failed']} |\n"
        for r in rows
    )
    return head + body


RULE_WORDS = {
    "first_word": "strict: the answer's first word, after the VQA metrics' strict normalisation, is \"yes\" or "
                  "\"no\"; anything else is undecided (counted, not scored)",
    "pope": "POPE's own rule: \"no\", \"No\" or \"not\" in the first sentence -> no, else yes (always decides)",
}


def _overall(table: pa.Table, rule: Rule) -> dict[str, Any] | None:
    return next((r for r in table.to_pylist() if r["rule"] == rule and r["breakdown"] == "overall"), None)


def count_line(table: pa.Table) -> str | None:
    """How many questions were scored (None when there is no overall row)."""
    row = _overall(table, DEFAULT_RULE) or _overall(table, "pope")
    if row is None:
        return None
    failed = f"; {row['n_failed']} more not answered" if row["n_failed"] else ""
    return (f"{row['n']} yes/no questions whose right answer is known without a judge "
            f"({row['n_expected_yes']} yes, {row['n_expected_no']} no{failed})")


def summary_line(table: pa.Table, rule: Rule = DEFAULT_RULE) -> str | None:
    """The overall scores under ``rule`` in one line (None when there is no overall row)."""
    row = _overall(table, rule)
    if row is None:
        return None
    no_decided = row["fp"] + row["tn"]
    def pc(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f} %"

    return (f"hallucination rate {pc(row['hallucination_rate'])} ({row['fp']} of {no_decided} decided "
            f"no-questions answered yes), accuracy {pc(row['accuracy'])}, F1 {pc(row['f1'])}, "
            f"yes-ratio {pc(row['yes_ratio'])}, undecided {row['undecided']} of {row['n']} ({pc(row['undecided_share'])})")


def summary_lines(table: pa.Table | None) -> list[str]:
    """The count and one line per rule: what the report's section and ``medhall demo`` show."""
    if table is None or (count := count_line(table)) is None:
        return []
    return [count + ":", *(f"`{rule}`: {line}" for rule in RULES if (line := summary_line(table, rule)))]


def markdown_section(table: pa.Table | None, *, heading: str = "##") -> str:
    """The report's section: what counts, the two decision rules' overall scores, the scores by
    breakdown under the default (strict) rule."""
    title = f"{heading} Hallucination without a judge (POPE-style yes/no questions)\n\n"
    if table is None or table.num_rows == 0:
        return title + ("No question of this set has a yes/no answer known without a judge (offline-generator "
                        "nonexistent-object, attribute and presence questions, or yes/no ground truths).\n")
    lines = [
        "Yes/no questions whose right answer is known without a judge: the offline generator's nonexistent-object and "
        "attribute questions (answer no) and presence questions (answer yes), and questions whose ground truth "
        "starts with yes or no. \"Yes\" is the positive class; the hallucination rate is the share of no-questions "
        "answered yes. Decision rules: `first_word` is " + RULE_WORDS["first_word"] + "; `pope` is "
        + RULE_WORDS["pope"] + ".",
        "",
    ]
    summary = summary_lines(table)
    lines += [f"**{summary[0]}**", *(f"- {line}" for line in summary[1:])]
    lines += ["", f"By breakdown, rule `{DEFAULT_RULE}` (rates in %; strategy groups share the yes questions, as in POPE):",
              "", markdown_pope(table, DEFAULT_RULE)]
    return title + "\n".join(lines)


def plot_pope(table: pa.Table, path: str | os.PathLike[str], title: str = "POPE-style scores",
              rule: Rule = DEFAULT_RULE) -> Path:
    """Accuracy, F1, yes-ratio, hallucination rate and undecided share per group (overall,
    strategy, category, attribute type), one panel per breakdown, as PNG."""
    from medhall.report.figures import pyplot, save

    plt = pyplot()
    rows = [r for r in table.to_pylist() if r["rule"] == rule and r["breakdown"] != "modality"]
    shown = [b for b in BREAKDOWNS if any(r["breakdown"] == b for r in rows)] or ["overall"]
    measures = ("accuracy", "f1", "yes_ratio", "hallucination_rate", "undecided_share")
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.8), squeeze=False)
    width = 0.8 / len(measures)
    for ax, breakdown in zip(axes[0], shown, strict=True):
        group_rows = [r for r in rows if r["breakdown"] == breakdown]
        for i, m in enumerate(measures):
            xs = [j + (i - (len(measures) - 1) / 2) * width for j in range(len(group_rows))]
            ax.bar(xs, [100 * (r[m] or 0.0) for r in group_rows], width, label=m.replace("_", " "))
        ax.set_xticks(range(len(group_rows)), [f"{r['group']}\n(n={r['n']})" for r in group_rows], fontsize=7, rotation=20)
        ax.set_ylim(0, 100)
        ax.set_title(breakdown, fontsize=9)
        ax.set_ylabel("%")
    axes[0][0].legend(fontsize=7)
    return save(fig, path, title)


# --------------------------------------------------------------------------- closed VQA


def vqa_known(items: Iterable[Any]) -> list[KnownQuestion]:
    """The closed VQA items (:class:`medhall.vqa.data.VQAItem`, ``answer_type == "closed"``)
    whose reference answer is yes or no (by :func:`decide`'s ``first_word`` rule; SLAKE's
    closed "left" / "liver" are not), keyed by ``item_id``, grouped by benchmark (``category``)
    and the item's modality where its dataset gives one. The benchmark says the question is
    closed: no question-form check."""
    out = []
    for it in items:
        if it.answer_type != "closed":
            continue
        label = decide(it.answer, "first_word")
        if label is not None and len((it.answer or "").split()) <= 2:
            modality = (it.meta or {}).get("modality")
            out.append(KnownQuestion(it.item_id, label, it.benchmark, modality=modality if isinstance(modality, str) else None,
                                     basis="ground_truth"))
    return out


def markdown_models(table: pa.Table, rule: Rule = DEFAULT_RULE) -> str:
    """Several models' scores side by side: one row per model and group (overall and each
    category, e.g. benchmark), rates in %."""
    rows = [r for r in table.to_pylist() if r["rule"] == rule and r["breakdown"] in ("overall", "category")]
    head = ("| model | group | n | yes / no expected | accuracy | F1 | yes-ratio | hallucination rate | undecided |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    return head + "".join(
        f"| {r['model']} | {r['group']} | {r['n']} | {r['n_expected_yes']} / {r['n_expected_no']} | {_pct(r['accuracy'])} | "
        f"{_pct(r['f1'])} | {_pct(r['yes_ratio'])} | {_pct(r['hallucination_rate'])} | {r['undecided']} |\n"
        for r in rows
    )


# --------------------------------------------------------------------------- an evaluation's


def eval_pope(store: Any, cfg: Any, questions: Any = None, *, run_id: str | None = None) -> pa.Table | None:
    """POPE scores of an evaluation's model (``cfg``, an :class:`~medhall.evaluate.config.EvalConfig`)
    on its questions, from the dataset's instructions (their ``meta`` says what the offline
    generator asked) and the model's stored answers; None when no question has a yes/no answer
    known without a judge."""
    import pyarrow.compute as pc

    from medhall.evaluate.answers import read_predictions
    from medhall.evaluate.questions import load_questions

    questions = questions if questions is not None else load_questions(store, cfg)
    wanted = pa.array(questions.qa_ids, pa.string())
    instr = store.get("instructions", cfg.dataset).read(columns=["qa_id", "meta"])
    instr = instr.filter(pc.is_in(instr.column("qa_id"), wanted))
    meta = dict(zip(instr.column("qa_id").to_pylist(), instr.column("meta").to_pylist(), strict=True))
    known = known_questions({**r, "meta": meta.get(r["qa_id"])} for r in questions.rows())
    if not known:
        return None
    answers: dict[str, str | None] = {}
    if store.latest("predictions", cfg.eval_dataset()) is not None:
        preds = read_predictions(store, cfg, questions.qa_ids).select(["qa_id", "status", "answer"]).to_pylist()
        answers = {r["qa_id"]: r["answer"] for r in preds if r["status"] == "ok"}
    return pope_scores(known, answers, model=cfg.resolved_model_name(), run_id=run_id)


__all__ = [
    "BREAKDOWNS",
    "DEFAULT_RULE",
    "GENERATOR_LABELS",
    "POPE_SCHEMA",
    "RULES",
    "RULE_WORDS",
    "KnownQuestion",
    "confusion_scores",
    "decide",
    "eval_pope",
    "expected_answer",
    "is_polar",
    "known_questions",
    "markdown_models",
    "markdown_pope",
    "markdown_section",
    "plot_pope",
    "pope_scores",
    "count_line",
    "summary_line",
    "summary_lines",
    "vqa_known",
]
