"""What an evaluation did, by the numbers, and whether it is what was asked.

:func:`eval_outcome` reads the evaluation's own tables: answers ok and failed (by reason), and
when a judge ran, judgments ok and failed, and how many the baseline anchored. An evaluation
that answered nothing, whose failures exceed ``max_failed_share`` of the questions (default 0:
any), whose judge judged nothing, or whose ``--baseline`` anchored no judgment is
*incomplete*: the command exits 1 and the flow ends Failed, saying why. What was made is kept,
and a re-run asks again only what failed for a reason that may pass (a failed call, a spent
budget), never what succeeded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow.compute as pc

from medhall.errors import MedhallError
from medhall.evaluate.config import EvalConfig
from medhall.store import ArtifactStore


class IncompleteEvaluation(MedhallError, RuntimeError):
    """The evaluation did not do what was asked; the message is its summary."""


def _reason(error: str | None) -> str:
    """The code at the head of an error (``missing_image``, ``parse failed: range_score``,
    ``timeout``), for counting failures by reason."""
    parts = [p.strip() for p in (error or "failed").split(":")]
    if len(parts) > 1 and parts[0] == "parse failed":
        return f"parse failed: {parts[1].split()[0] if parts[1] else '?'}"
    head = parts[0]
    return head if head and len(head) <= 40 and " " not in head else (error or "failed")[:40]


@dataclass(frozen=True)
class EvalOutcome:
    eval_dataset: str
    model: str
    questions: int
    answered: int
    answer_failures: dict[str, int]
    examples: dict[str, str] = field(default_factory=dict)
    judge_model: str | None = None
    judged: int = 0
    judge_failures: dict[str, int] = field(default_factory=dict)
    baseline: str | None = None
    anchored: int = 0
    max_failed_share: float = 0.0

    def problems(self) -> list[str]:
        """Why the evaluation is incomplete (empty when it is complete)."""
        out = []
        failed = sum(self.answer_failures.values())
        if self.answered == 0:
            out.append("no question was answered")
        elif failed > self.max_failed_share * self.questions:
            out.append(f"{failed} of {self.questions} answers failed (allowed share {self.max_failed_share:g})")
        if self.judge_model is not None and self.answered:
            jfailed = sum(self.judge_failures.values())
            if self.judged == 0:
                out.append(f"the judge {self.judge_model} judged no answer")
            elif jfailed > self.max_failed_share * self.answered:
                out.append(f"{jfailed} of {self.answered} judgments failed (allowed share {self.max_failed_share:g})")
            if self.baseline is not None and self.anchored == 0:
                out.append(f"the baseline {self.baseline!r} anchored none of the judgments: it has no judged answers "
                           "on these questions; evaluate it with the same judge first (or drop --baseline)")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    def summary(self) -> str:
        lines = [f"{self.model} on {self.eval_dataset}: {self.answered} of {self.questions} questions answered"
                 + (f", {self.judged} judged by {self.judge_model}" if self.judge_model else "")
                 + (f" ({self.anchored} anchored on {self.baseline})" if self.baseline and self.judge_model else "")]
        for title, failures in (("answers failed", self.answer_failures), ("judgments failed", self.judge_failures)):
            for reason, n in sorted(failures.items(), key=lambda kv: -kv[1]):
                example = self.examples.get(f"{title}:{reason}", "")
                lines.append(f"  {title}: {reason} {n}" + (f" (e.g. {example[:160]})" if example else ""))
        problems = self.problems()
        if problems:
            lines.append("incomplete: " + "; ".join(problems) + ". What was made is kept; re-run to retry what failed")
        return "\n".join(lines)


def eval_outcome(store: ArtifactStore, cfg: EvalConfig, judge_model: str | None = None,
                 max_failed_share: float = 0.0) -> EvalOutcome:
    """The :class:`EvalOutcome` of ``cfg`` from its stored predictions (and judgments by
    ``judge_model`` when a judge ran)."""
    from medhall.evaluate.answers import read_predictions
    from medhall.evaluate.questions import load_questions

    questions = load_questions(store, cfg)
    ids = questions.qa_ids
    preds = read_predictions(store, cfg, ids) if store.latest("predictions", cfg.eval_dataset()) else None
    answered, failures, examples = 0, Counter(), {}
    if preds is not None:
        for r in preds.select(["status", "error"]).to_pylist():
            if r["status"] == "ok":
                answered += 1
            else:
                reason = _reason(r["error"])
                failures[reason] += 1
                examples.setdefault(f"answers failed:{reason}", r["error"] or "")
    judged, jfailures, anchored = 0, Counter(), 0
    if judge_model is not None and store.latest("judgments", cfg.eval_dataset()) is not None:
        j = store.read("judgments", cfg.eval_dataset())
        j = j.filter(pc.and_(pc.equal(j.column("model"), cfg.resolved_model_name()),
                             pc.equal(j.column("judge_model"), judge_model)))
        wanted = set(ids)
        for r in j.select(["qa_id", "status", "error", "anchor_model"]).to_pylist():
            if r["qa_id"] not in wanted:
                continue
            if r["status"] == "ok":
                judged += 1
                anchored += bool(cfg.baseline_model and r["anchor_model"] == cfg.baseline_model)
            else:
                reason = _reason(r["error"])
                jfailures[reason] += 1
                examples.setdefault(f"judgments failed:{reason}", r["error"] or "")
    return EvalOutcome(cfg.eval_dataset(), cfg.resolved_model_name(), len(ids), answered, dict(failures), examples,
                       judge_model, judged, dict(jfailures), cfg.baseline_model, anchored, max_failed_share)


__all__ = ["EvalOutcome", "IncompleteEvaluation", "eval_outcome"]
