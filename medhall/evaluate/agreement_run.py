"""The judge-agreement stage: a candidate judge scores the release's LLaVA-Med answers, and its
scores are compared with GPT-4o's.

The MedHallTune release holds LLaVA-Med-v1.5-7B's answers to its 2,238 validation questions and
GPT-4o's judge output for each (``../shared/data/medhalltune``). This stage asks a candidate judge
(any OpenAI-compatible server, or a local model, through the LLM layer) to judge the same
answers, or a seeded sample of ``n`` of them, and measures how its scores agree with GPT-4o's
(:mod:`medhall.evaluate.agreement`: Spearman, Kendall, quadratic-weighted kappa, bias, exact and
±1 agreement, with bootstrap intervals, per axis and for P and N apart), beside the two judges'
leaderboard rows.

It reuses the evaluation's stages: the release's questions are ingested (``dataset``, once),
the answers imported (:class:`~medhall.evaluate.config.ImportSpec`, the ``answers`` stage), and the
candidate judges them in the ``judge`` stage (:mod:`medhall.evaluate.judging`: shards with
completion markers, temperature 0, cached, un-anchored, as GPT-4o's release judgments were
made). A re-run judges only what is missing and pays for nothing twice. Results go to the
dataset :func:`agreement_dataset` (``judgments`` of the candidate, ``judge_agreement``) and to
``<home>/reports/<that dataset>/`` (``agreement.md``, ``agreement.csv``, ``agreement.png``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from medhall import atomic, schema, shards
from medhall.endpoints import LLMSettings
from medhall.evaluate.config import (
    EvalConfig,
    EvalError,
    ImportSpec,
    judge_identity,
    judge_model_name,
    slug,
)
from medhall.ids import file_sha256, sha256_hex
from medhall.ids import run_id as make_run_id
from medhall.store import Artifact, ArtifactStore

DEFAULT_RELEASE_DIR = "../shared/data/medhalltune"
VAL_FILES = {"positive": "val_positive_qa-filtered.jsonl", "negative": "val_negative_qa-filtered.jsonl"}
PREDICTION_FILES = {"positive": "llava-med-prediction-postive-GPT4o-eval-filtered.jsonl",
                    "negative": "llava-med-prediction-negative-GPT4o-eval-filtered.jsonl"}


class AgreementConfig(BaseModel):
    """What decides a judge-agreement run (recorded in the manifests)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    judge: LLMSettings | None = Field(None, description="The candidate judge; None: MEDHALL_LLM_BASE_URL / MEDHALL_LLM_MODEL.")
    release_dir: str = Field(DEFAULT_RELEASE_DIR, description="Folder with the MedHallTune release's val and prediction files.")
    dataset: str = Field("medhalltune", description="Dataset the release's questions are ingested into (once).")
    n: int | None = Field(200, ge=1, description="Judge a seeded sample of this many questions; None: all 2,238.")
    seed: int = Field(0, description="Seed of the sample and of the bootstrap.")
    n_boot: int = Field(1000, ge=10, description="Bootstrap resamples of the intervals.")
    shard_size: int = Field(200, ge=1, description="Answers per judge shard (one task each).")
    judge_attempts: int = Field(3, ge=1, le=10, description="Judge calls per answer until a reply parses.")
    judge_max_tokens: int = Field(512, ge=16, description="The judge's token limit.")
    rubric_version: str = Field("v1", description="Judge templates medhall/prompts/judge/<version>.")

    def files(self) -> tuple[list[Path], list[Path]]:
        """(val files, prediction files) of the release, positive first; EvalError when absent."""
        root = Path(self.release_dir).expanduser()
        vals = [root / VAL_FILES[k] for k in ("positive", "negative")]
        preds = [root / PREDICTION_FILES[k] for k in ("positive", "negative")]
        missing = [str(p) for p in (*vals, *preds) if not p.is_file()]
        if missing:
            raise EvalError(f"the MedHallTune release files are not in {root}: missing {', '.join(missing)} "
                            "(give --release DIR: the folder holding the val_*_qa-filtered.jsonl and "
                            "llava-med-prediction-*-GPT4o-eval-filtered.jsonl files)")
        return vals, preds

    def eval_config(self) -> EvalConfig:
        """The evaluation whose stages this run reuses: the release's LLaVA-Med answers (imported)
        on the ingested questions (all, or a seeded sample of ``n``), judged by the candidate."""
        from medhall.evaluate.predictions import RELEASE_MODEL

        _, preds = self.files()
        return EvalConfig(dataset=self.dataset, split=None, model=ImportSpec(paths=tuple(str(p.resolve()) for p in preds)),
                          model_name=RELEASE_MODEL, judge=self.judge or LLMSettings(), judge_attempts=self.judge_attempts,
                          judge_max_tokens=self.judge_max_tokens, rubric_version=self.rubric_version, shard_size=self.shard_size,
                          max_questions=self.n, seed=self.seed, n_boot=self.n_boot, metrics=("meteor",))


def agreement_dataset(judge_model: str, n: int | None) -> str:
    """``agreement-<judge>-<n<N>|all>``, shortened with a hash past 64 characters."""
    name = f"agreement-{slug(judge_model)}-{f'n{n}' if n else 'all'}"
    return name if len(name) <= 64 else f"{name[:47]}-{sha256_hex(name)[:16]}"


def reports_dir(store: ArtifactStore, dataset: str) -> Path:
    return store.root / "reports" / dataset


# --------------------------------------------------------------------------- steps


def ensure_release(store: ArtifactStore, cfg: AgreementConfig) -> str:
    """The release's questions in ``cfg.dataset`` (ingested from the val files unless they
    already are); returns the dataset. A dataset of that name made from other files is an
    error, never overwritten."""
    from medhall.jobs import ingest_to_store

    vals, _ = cfg.files()
    inputs = {file_sha256(v) for v in vals}
    art = store.latest("instructions", cfg.dataset)
    if art is not None:
        if set(art.manifest.get("inputs") or ()) >= inputs:
            return cfg.dataset
        raise EvalError(f"dataset {cfg.dataset!r} holds instructions made from other files than the release's val files "
                        f"in {cfg.release_dir}; give another dataset (--dataset) for the release's questions")
    outcome = ingest_to_store("medhalltune", vals, dataset=cfg.dataset, store=store)
    if not outcome.ok:
        raise EvalError(f"ingesting the release's questions into {cfg.dataset!r} failed")
    return cfg.dataset


def agreement_run_id(store: ArtifactStore, cfg: AgreementConfig, client: Any = None) -> str:
    """Hash of the config, the judge's identity and the release files' contents."""
    vals, preds = cfg.files()
    ecfg = cfg.eval_config()
    return make_run_id("judge_agreement", {"config": cfg.model_dump(mode="json"), "judge": judge_identity(ecfg, client)},
                       [file_sha256(p) for p in (*vals, *preds)])


def prepare(store: ArtifactStore, cfg: AgreementConfig) -> EvalConfig:
    """The release ingested and LLaVA-Med's answers imported (the evaluation's answer stage);
    returns the :class:`EvalConfig` the judge stage runs with."""
    from medhall.evaluate.answers import answer_shard, assemble_predictions, plan_answers

    ensure_release(store, cfg)
    ecfg = cfg.eval_config()
    plan = plan_answers(store, ecfg)
    for shard in plan.todo:
        answer_shard(store, ecfg, plan.work_dir, shard, plan.run_id)
    assemble_predictions(store, ecfg, plan.work_dir, plan.run_id)
    return ecfg


def plan_agreement_judging(store: ArtifactStore, cfg: AgreementConfig, run_id: str, client: Any = None) -> Any:
    """The answers the candidate has not judged yet, in shards (:func:`medhall.evaluate.judging.plan_judging`)."""
    from medhall.evaluate.judging import plan_judging as plan

    return plan(store, cfg.eval_config(), run_id, client)


@dataclass
class AgreementResult:
    """What :func:`finish` wrote and measured."""

    dataset: str
    run_id: str
    judge_model: str
    table: pa.Table  # judge_agreement rows
    questions: int
    judged: int  # ok judgments of the candidate
    failures: dict[str, int]
    markdown: str
    paths: dict[str, Path]
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    judged_now: int = 0  # judgments made in this run (0 on a finished re-run)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.judged > 0

    def value(self, axis: str, kind: str, measure: str) -> float | None:
        rows = [r for r in self.table.to_pylist() if (r["axis"], r["kind"], r["measure"]) == (axis, kind, measure)]
        return rows[0]["value"] if rows else None

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "run_id": self.run_id, "judge_model": self.judge_model, "questions": self.questions,
                "judged": self.judged, "failures": self.failures, "judged_now": self.judged_now,
                "paths": {k: str(v) for k, v in self.paths.items()},
                "artifacts": {k: a.name for k, a in self.artifacts.items()}, "seconds": self.seconds}


def finish(store: ArtifactStore, cfg: AgreementConfig, work_dir: str | Path, run_id: str, *, judge_model: str,
           client: Any = None) -> AgreementResult:
    """The candidate's judgments from the finished shards, their agreement with GPT-4o's
    (``judge_agreement``), both written to :func:`agreement_dataset`, and the report."""
    from medhall.evaluate.agreement import agreement_table
    from medhall.evaluate.judge import load_rubric
    from medhall.evaluate.predictions import RELEASE_JUDGE, RELEASE_MODEL, import_release_judgments
    from medhall.evaluate.questions import load_questions

    ecfg = cfg.eval_config()
    questions = load_questions(store, ecfg)
    ids = questions.qa_ids
    parts = list(shards.read(Path(work_dir), ids, id_column="qa_id"))
    candidate = pa.concat_tables(parts) if parts else schema.empty("judgments")
    _, preds = cfg.files()
    wanted = pa.array(ids, pa.string())
    reference = pa.concat_tables([import_release_judgments(p) for p in preds])
    reference = reference.filter(pc.is_in(reference.column("qa_id"), wanted))
    kinds = {r["qa_id"]: r["kind"] for r in questions.rows()}
    rubric_hash = load_rubric(cfg.rubric_version).hash
    table = agreement_table(reference, candidate, kinds, judge_model=judge_model, reference_judge=RELEASE_JUDGE,
                            model=RELEASE_MODEL, rubric_hash=rubric_hash, n_boot=cfg.n_boot, seed=cfg.seed, run_id=run_id)
    dataset = agreement_dataset(judge_model, cfg.n)
    config = {"judge_agreement": cfg.model_dump(mode="json"), "judge_dir": Path(work_dir).name}
    inputs = [store.get("predictions", ecfg.eval_dataset()).fingerprint, *questions.inputs]
    arts = {"judgments": store.write("judgments", candidate, dataset=dataset, config=config, inputs=inputs, run_id=run_id)}
    arts["judge_agreement"] = store.write("judge_agreement", table, dataset=dataset, config=config,
                                          inputs=[arts["judgments"].fingerprint], run_id=run_id)
    rows = candidate.select(["status", "error"]).to_pylist()
    failures = Counter(_reason(r["error"]) for r in rows if r["status"] != "ok")
    judged = sum(1 for r in rows if r["status"] == "ok")
    out = reports_dir(store, dataset)
    out.mkdir(parents=True, exist_ok=True)
    from medhall.evaluate.report import write_csv

    paths = {"csv": write_csv(table, out / "agreement.csv"),
             "png": plot_agreement(table, reference, candidate, kinds, out / "agreement.png",
                                   title=f"{judge_model} vs {RELEASE_JUDGE} on {RELEASE_MODEL}'s answers")}
    markdown = render_markdown(cfg, table, judge_model=judge_model, kinds=[kinds[q] for q in ids], judged=judged,
                               failures=dict(failures), rubric_hash=rubric_hash, endpoint=_endpoint(cfg, client),
                               dataset=dataset, files=paths)
    paths["markdown"] = out / "agreement.md"
    atomic.write_bytes(paths["markdown"], markdown.encode())
    return AgreementResult(dataset, run_id, judge_model, table, len(ids), judged, dict(failures), markdown, paths, arts)


def _reason(error: str | None) -> str:
    from medhall.evaluate.outcome import _reason as reason

    return reason(error)


def _endpoint(cfg: AgreementConfig, client: Any) -> str:
    if client is not None:
        return f"{client.backend.name} backend"
    judge = cfg.judge or LLMSettings()
    return judge.resolved_url() or f"local {judge.backend} model"


def run_agreement(store: ArtifactStore, cfg: AgreementConfig, *, client: Any = None) -> AgreementResult:
    """The whole run in one process (what the ``judge_agreement`` flow does with tasks).
    ``client``: an :class:`medhall.llm.LLMClient` for the candidate judge (default: one made
    from ``cfg.judge``)."""
    from medhall.evaluate.judging import judge_shard

    t0 = time.perf_counter()
    ecfg = prepare(store, cfg)
    run_id = agreement_run_id(store, cfg, client)
    judge_model = judge_model_name(ecfg, client)
    plan = plan_agreement_judging(store, cfg, run_id, client)
    t1 = time.perf_counter()
    judged_now = sum(judge_shard(store, ecfg, plan.work_dir, s, run_id, client=client).num_rows for s in plan.todo)
    t2 = time.perf_counter()
    result = finish(store, cfg, plan.work_dir, run_id, judge_model=judge_model, client=client)
    result.judged_now = judged_now
    result.seconds = {"prepare": t1 - t0, "judge": t2 - t1, "agreement": time.perf_counter() - t2,
                      "total": time.perf_counter() - t0}
    return result


# --------------------------------------------------------------------------- report


def _cell(rows: Mapping[tuple[str, str, str], dict[str, Any]], axis: str, kind: str, measure: str, digits: int = 2) -> str:
    r = rows.get((axis, kind, measure))
    if r is None or r["value"] is None:
        return "n/a"
    pct = measure in ("exact", "within1")
    scale, unit = (100.0, " %") if pct else (1.0, "")
    d = 1 if pct else digits
    sign = "+" if measure == "bias" else ""
    value = f"{scale * r['value']:{sign}.{d}f}{unit}"
    if r["ci_low"] is None:
        return value
    return f"{value} [{scale * r['ci_low']:.{d}f}, {scale * r['ci_high']:.{d}f}]"


def leaderboard_markdown(table: pa.Table, judge_model: str, reference_judge: str = "gpt-4o", *,
                         published: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """The LLaVA-Med row of Table 2 by the candidate, by the reference on the same answers and
    (``published``) the published row, in the paper's "P&N" layout."""
    from medhall.evaluate.agreement import PUBLISHED_GPT4O
    from medhall.evaluate.judge import AXES
    from medhall.evaluate.table2 import MEASURE_LABELS

    published = PUBLISHED_GPT4O if published is None else published
    rows = {(r["axis"], r["kind"], r["measure"]): r for r in table.to_pylist()}
    n = {k: rows.get((AXES[0], k, "candidate_mean"), {}).get("n", 0) for k in ("positive", "negative")}

    def cells(measure: str) -> list[str]:
        out = []
        for axis in AXES:
            p, q = (rows.get((axis, k, measure), {}).get("value") for k in ("positive", "negative"))
            out.append(f"{'–' if p is None else f'{p:.2f}'}&{'–' if q is None else f'{q:.2f}'}")
        return out

    head = "| Judge | " + " | ".join(f"{MEASURE_LABELS[a]} P&N" for a in AXES) + " |\n|---|" + "---|" * len(AXES) + "\n"
    lines = [f"| {judge_model} (these {n['positive']}+{n['negative']} answers) | " + " | ".join(cells("candidate_mean")) + " |",
             f"| {reference_judge} (the same answers) | " + " | ".join(cells("reference_mean")) + " |"]
    if published:
        lines.append(f"| {reference_judge} (published, all 1110+1128) | "
                     + " | ".join(f"{published['positive'][a]:.2f}&{published['negative'][a]:.2f}" for a in AXES) + " |")
    return head + "\n".join(lines) + "\n"


def agreement_markdown(table: pa.Table, kind: str) -> str:
    """One kind's agreement: one row per axis, one column per measure (value [95 % interval])."""
    from medhall.evaluate.agreement import MEASURE_LABELS, MEASURES
    from medhall.evaluate.judge import AXES
    from medhall.evaluate.table2 import MEASURE_LABELS as AXIS_LABELS

    rows = {(r["axis"], r["kind"], r["measure"]): r for r in table.to_pylist()}
    head = ("| axis | n | " + " | ".join(MEASURE_LABELS[m] for m in MEASURES) + " |\n|---|---:|"
            + "---:|" * len(MEASURES) + "\n")
    body = "".join(
        f"| {AXIS_LABELS[a]} | {rows.get((a, kind, MEASURES[0]), {}).get('n', 0)} | "
        + " | ".join(_cell(rows, a, kind, m) for m in MEASURES) + " |\n"
        for a in AXES
    )
    return head + body


def render_markdown(cfg: AgreementConfig, table: pa.Table, *, judge_model: str, kinds: Sequence[str | None], judged: int,
                    failures: Mapping[str, int], rubric_hash: str, endpoint: str, dataset: str,
                    files: Mapping[str, Path]) -> str:
    """The agreement report: the judges, the answers, the leaderboard rows, the agreement per
    kind (P, N, both) with bootstrap intervals, the files and queries."""
    from medhall.evaluate.predictions import RELEASE_JUDGE, RELEASE_MODEL

    counts = Counter(kinds)
    failed = sum(failures.values())
    view = dataset.replace("-", "_").replace(".", "_")
    parts = [
        f"# Judge agreement: {judge_model} vs {RELEASE_JUDGE}",
        "",
        f"- Candidate judge: `{judge_model}` ({endpoint}), medhall rubric {cfg.rubric_version} (hash `{rubric_hash}`), "
        f"temperature 0, up to {cfg.judge_attempts} calls per answer, no anchor (as the reference judgments were made)",
        f"- Reference: {RELEASE_JUDGE}'s judge outputs in the MedHallTune release (the official judge prompt)",
        f"- Answers: {RELEASE_MODEL}'s, from `{cfg.release_dir}`: {len(kinds)} questions (P {counts.get('positive', 0)}, "
        f"N {counts.get('negative', 0)})" + (f", a seeded sample (seed {cfg.seed}) of the release's 2,238" if cfg.n else ""),
        f"- Judgments: {judged} ok, **{failed} failed**"
        + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(failures.items(), key=lambda kv: -kv[1])) + "); failed "
           "judgments are counted (`n_failed`) and never scored" if failed else ""),
        "",
        "## The LLaVA-Med-v1.5-7B row of Table 2 by each judge (mean scores, P&N)",
        "",
        leaderboard_markdown(table, judge_model, RELEASE_JUDGE),
        f"## Agreement with {RELEASE_JUDGE} (bootstrap 95 % intervals, {cfg.n_boot} resamples, seed {cfg.seed})",
        "",
        "Spearman ρ and Kendall τ-b: rank correlation; QWK: quadratic-weighted Cohen's kappa; bias: mean of the "
        f"candidate's score minus {RELEASE_JUDGE}'s (positive: more lenient); exact and ±1: shares of answers scored the "
        "same, or within one point. n/a: undefined (a judge that gives every answer the same score).",
        "",
    ]
    for kind, title in (("positive", "P (non-hallucination questions)"), ("negative", "N (hallucination questions)"),
                        ("all", "P and N together")):
        parts += [f"### {title}", "", agreement_markdown(table, kind)]
    parts += ["## Files and queries", ""] + [f"- {k}: `{v}`" for k, v in files.items()]
    parts.append(f"- Rows: `medhall sql \"select * from judge_agreement__{view}\"` (also `judgments__{view}`)")
    return "\n".join(parts) + "\n"


def plot_agreement(table: pa.Table, reference: pa.Table, candidate: pa.Table, kinds: Mapping[str, str | None],
                   path: str | Path, title: str = "Judge agreement") -> Path:
    """One panel per axis: the candidate's score against the reference's for each answer (a
    bubble per score pair, its area the number of answers; P and N in two colours, the diagonal
    is perfect agreement); a last panel: Spearman, QWK, exact and ±1 agreement per axis (P and
    N together) with 95 % intervals. PNG."""
    from medhall.evaluate.agreement import judged_scores
    from medhall.evaluate.judge import AXES
    from medhall.evaluate.table2 import MEASURE_LABELS as AXIS_LABELS
    from medhall.report.figures import pyplot, save

    plt = pyplot()
    ref, cand = judged_scores(reference), judged_scores(candidate)
    pairs = [(q, kinds.get(q)) for q, s in cand.items() if s is not None and ref.get(q) is not None]
    fig, axes = plt.subplots(1, len(AXES) + 1, figsize=(4.0 * (len(AXES) + 1), 4.0), squeeze=False)
    for ax, axis in zip(axes[0], AXES, strict=False):
        by_kind = {kind: Counter((ref[q][axis], cand[q][axis]) for q, k in pairs if k == kind)  # type: ignore[index]
                   for kind in ("positive", "negative")}
        most = max((c for counts in by_kind.values() for c in counts.values()), default=1)
        for kind, colour in (("positive", "tab:blue"), ("negative", "tab:red")):
            counts = by_kind[kind]
            if counts:
                xs, ys = zip(*counts, strict=True)
                ax.scatter(xs, ys, s=[6 + 240 * c / most for c in counts.values()], alpha=0.45, color=colour,
                           label=f"{'P' if kind == 'positive' else 'N'}")
        ax.plot([1, 10], [1, 10], color="grey", lw=0.8, ls="--")
        ax.set_xlim(0.5, 10.5)
        ax.set_ylim(0.5, 10.5)
        ax.set_xlabel("reference (GPT-4o)")
        ax.set_ylabel("candidate")
        ax.set_title(AXIS_LABELS[axis], fontsize=10)
    axes[0][0].legend(fontsize=8)
    ax = axes[0][-1]
    rows = {(r["axis"], r["measure"]): r for r in table.to_pylist() if r["kind"] == "all"}
    measures = ("spearman", "qwk", "exact", "within1")
    width = 0.8 / len(measures)
    for i, m in enumerate(measures):
        xs = [j + (i - (len(measures) - 1) / 2) * width for j in range(len(AXES))]
        cells = [rows.get((a, m)) for a in AXES]
        heights = [c["value"] if c and c["value"] is not None else 0.0 for c in cells]
        errs = np.array([[max(h - (c["ci_low"] if c and c["ci_low"] is not None else h), 0.0),
                          max((c["ci_high"] if c and c["ci_high"] is not None else h) - h, 0.0)]
                         for h, c in zip(heights, cells, strict=True)]).T
        ax.bar(xs, heights, width, yerr=errs, capsize=2, label=m)
    ax.set_xticks(range(len(AXES)), [AXIS_LABELS[a] for a in AXES], rotation=20, fontsize=8)
    ax.set_ylim(min(0.0, *(r["value"] or 0.0 for r in rows.values())) - 0.05, 1.05)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_title("agreement (P and N)", fontsize=10)
    ax.legend(fontsize=7)
    return save(fig, path, title)


def describe_result(result: AgreementResult) -> str:
    """A few lines for a terminal: the judges' rows and Spearman / QWK per axis (P and N together)."""
    from medhall.evaluate.judge import AXES

    lines = [f"{result.judge_model}: {result.judged} of {result.questions} answers judged"
             + (f", {sum(result.failures.values())} failed ({json.dumps(result.failures)})" if result.failures else "")]
    for axis in AXES:
        s, q = result.value(axis, "all", "spearman"), result.value(axis, "all", "qwk")
        lines.append(f"  {axis}: Spearman {'n/a' if s is None else f'{s:.3f}'}, QWK {'n/a' if q is None else f'{q:.3f}'}")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_RELEASE_DIR",
    "AgreementConfig",
    "AgreementResult",
    "agreement_dataset",
    "agreement_markdown",
    "agreement_run_id",
    "describe_result",
    "ensure_release",
    "finish",
    "leaderboard_markdown",
    "plan_agreement_judging",
    "plot_agreement",
    "prepare",
    "render_markdown",
    "run_agreement",
]
