"""The evaluation pipeline: answers from the model under test, the clinical judge, text metrics
and the Table 2 report, as resumable steps over the artifact store.

This module composes the stages and is the evaluation's public face (it re-exports the names
of the modules below it). One module per concern: :mod:`~medhall.evaluate.config` (what
decides a run), :mod:`~medhall.evaluate.questions`, :mod:`~medhall.evaluate.answers`,
:mod:`~medhall.evaluate.judging` (the judge stage; :mod:`~medhall.evaluate.judge` holds the
rubric and the reply parser), :mod:`~medhall.evaluate.text_metrics`,
:mod:`~medhall.evaluate.table2` (the numbers) and :mod:`~medhall.evaluate.report` (rendering).
Answer and judge shards follow :mod:`medhall.shards`.

Steps (each a Prefect task in ``flows/evaluate_model.py``; each callable on its own here):

1. :func:`plan_answers`: the questions to evaluate (the dataset's QC-filtered instructions on
   the images of one split) and the shards still to answer;
2. :func:`answer_shard`: the model's answers to one shard (a local VLM, an API model through
   the LLM layer, the text-only baseline, or imported predictions), written atomically with a
   completion marker; :func:`assemble_predictions` streams finished shards into the
   ``predictions`` artifact;
3. :func:`plan_judging` / :func:`judge_shard` / :func:`assemble_judgments`: the same for the
   clinical judge (only when a judge is configured);
4. :func:`compute_metrics`: METEOR, ROUGE and BERTScore into the ``scores`` artifact (values
   already computed for the same answer, reference and metric params come from the metric
   cache, :mod:`~medhall.evaluate.metric_cache`);
5. :func:`compute_pope`: judge-free hallucination scores of the yes/no questions whose answer
   is known (:mod:`~medhall.evaluate.pope`) into the ``pope_scores`` artifact;
6. :func:`write_report`: Table 2 (P and N means with bootstrap 95 % intervals, by category and
   modality) and the POPE scores, Markdown, CSV and PNG under ``<home>/reports/<eval dataset>/``.

:func:`run_eval` runs them in-process; :func:`evaluate_default` is the main job's evaluation
of the embedded text-only baseline. Results go to the eval dataset
:func:`eval_dataset_name` (``<dataset>-<split>-eval-<model>``): one per model, so models never
overwrite each other, and the DuckDB views ``predictions``, ``judgments`` and ``scores`` show
every model side by side. Shard files live under ``<home>/work/<eval dataset>/``; a re-run
with nothing changed answers and judges nothing again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from medhall.endpoints import LLMSettings
from medhall.evaluate.answers import (
    FINAL_ERRORS,
    StagePlan,
    answer_shard,
    answers_dir,
    assemble_predictions,
    final_answers,
    plan_answers,
    qa_shard,
    read_predictions,
)
from medhall.evaluate.config import (
    DEFAULT_METRICS,
    JUDGE_ENV_HELP,
    METRIC_GROUPS,
    MODEL_SPEC,
    SMOLLM2_EVAL_NAME,
    APISpec,
    EvalConfig,
    EvalError,
    ImportSpec,
    LocalVLMSpec,
    ModelSpec,
    TextLLMSpec,
    default_model_name,
    eval_dataset_name,
    judge_identity,
    judge_model_name,
    model_identity,
    slug,
)
from medhall.evaluate.judging import (
    Anchor,
    assemble_judgments,
    judge_dir,
    judge_shard,
    load_anchors,
    plan_judging,
)
from medhall.evaluate.metric_cache import MetricCache, cache_path
from medhall.evaluate.questions import Questions, eval_run_id, load_questions
from medhall.evaluate.report import (
    ReportFiles,
    build_report_table,
    render_markdown,
    reports_dir,
    write_report,
)
from medhall.ids import file_sha256
from medhall.store import Artifact, ArtifactStore

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- metrics


def compute_metrics(store: ArtifactStore, cfg: EvalConfig, run_id: str, *,
                    cache: MetricCache | None = None) -> tuple[Artifact, list[str]]:
    """Reference-based metrics of this model's answers against the ground truth, as the
    ``scores`` artifact; returns it and the qa_ids left out (failed answers, no reference).

    Values come from the store's metric cache (``<home>/cache/metrics/scores.sqlite``, or
    ``cache``) where the same (metric, params, reference, answer) was scored before: a re-run
    of a finished evaluation scores nothing, and its identical ``scores`` content adds no
    version. Counts are logged and kept on ``cache`` (``hits``, ``computed``)."""
    from medhall.evaluate.text_metrics import score_predictions

    cache = cache if cache is not None else MetricCache(cache_path(store.root))
    hits, computed = cache.hits, cache.computed
    questions = load_questions(store, cfg)
    preds = read_predictions(store, cfg, questions.qa_ids)
    refs = {r["qa_id"]: r["answer"] for r in questions.rows()}
    scores, skipped = score_predictions(preds, refs, cfg.metric_names(), run_id=run_id,
                                        bertscore_model=cfg.bertscore_encoder, bertscore_layers=cfg.bertscore_layers,
                                        wordnet_cache=store.root / "cache", cache=cache)
    log.info("%s: %d metric values computed, %d from the metric cache", cfg.eval_dataset(),
             cache.computed - computed, cache.hits - hits)
    config = {"evaluate": cfg.model_dump(mode="json"), "metrics": cfg.metric_names()}
    pred_fp = store.get("predictions", cfg.eval_dataset()).fingerprint
    art = store.write("scores", scores, dataset=cfg.eval_dataset(), config=config, inputs=[pred_fp], run_id=run_id)
    return art, skipped


def compute_pope(store: ArtifactStore, cfg: EvalConfig, run_id: str) -> Artifact | None:
    """Judge-free hallucination scores (:mod:`medhall.evaluate.pope`): the model's answers to
    the yes/no questions whose right answer is known, as the ``pope_scores`` artifact of the
    eval dataset; None (nothing written) when no question has such an answer."""
    from medhall.evaluate.pope import eval_pope

    questions = load_questions(store, cfg)
    table = eval_pope(store, cfg, questions, run_id=run_id)
    if table is None:
        return None
    config = {"evaluate": cfg.model_dump(mode="json"), "pope": "first_word+pope"}
    pred_fp = store.get("predictions", cfg.eval_dataset()).fingerprint
    return store.write("pope_scores", table, dataset=cfg.eval_dataset(), config=config, inputs=[pred_fp, *questions.inputs],
                       run_id=run_id)


# --------------------------------------------------------------------------- whole runs


@dataclass
class EvalResult:
    """What :func:`run_eval` did and wrote."""

    eval_dataset: str
    run_id: str
    model: str
    artifacts: dict[str, Artifact]
    report: ReportFiles
    answered: int  # answers computed in this run (0 on a resumed, finished run)
    judged: int  # judgments computed in this run
    skipped_metrics: list[str]
    seconds: dict[str, float]
    metrics_computed: int = 0  # metric values computed in this run (0 on a re-run: all cached)
    metrics_cached: int = 0  # metric values taken from the metric cache

    def as_dict(self) -> dict[str, Any]:
        """A plain summary (paths as strings, artifacts by name)."""
        return {
            "eval_dataset": self.eval_dataset, "run_id": self.run_id, "model": self.model,
            "artifacts": {k: a.name for k, a in self.artifacts.items()},
            "report": str(self.report.markdown_path), "csv": str(self.report.csv_path), "png": str(self.report.png_path),
            "answered": self.answered, "judged": self.judged, "skipped_metrics": len(self.skipped_metrics),
            "metrics_computed": self.metrics_computed, "metrics_cached": self.metrics_cached,
            "seconds": self.seconds,
        }


def run_eval(store: ArtifactStore, cfg: EvalConfig, *, client: Any = None, judge_client: Any = None,
             compare_with: str | None = None, max_shards: int | None = None) -> EvalResult:
    """The whole evaluation in one process (what the flow does with tasks).

    ``client``: an :class:`medhall.llm.LLMClient` for an api / text_llm model under test;
    ``judge_client``: one for the judge (judging runs when ``cfg.judge`` or this is given);
    ``max_shards``: stop answering after that many shards (as a killed run would).
    """
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    plan = plan_answers(store, cfg)
    for i, shard in enumerate(plan.todo):
        if max_shards is not None and i >= max_shards:
            raise EvalError(f"stopped after {i} answer shard(s) (max_shards)")
        answer_shard(store, cfg, plan.work_dir, shard, plan.run_id, client=client)
    arts = {"predictions": assemble_predictions(store, cfg, plan.work_dir, plan.run_id)}
    seconds["answers"] = time.perf_counter() - t0
    judged, judge_model = 0, None
    if cfg.judge is not None or judge_client is not None:
        t1 = time.perf_counter()
        judge_model = judge_model_name(cfg, judge_client)
        jplan = plan_judging(store, cfg, plan.run_id, judge_client)
        for shard in jplan.todo:
            judged += judge_shard(store, cfg, jplan.work_dir, shard, plan.run_id, client=judge_client).num_rows
        arts["judgments"] = assemble_judgments(store, cfg, jplan.work_dir, plan.run_id)
        seconds["judge"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    metric_cache = MetricCache(cache_path(store.root))
    arts["scores"], skipped = compute_metrics(store, cfg, plan.run_id, cache=metric_cache)
    seconds["metrics"] = time.perf_counter() - t2
    if (pope := compute_pope(store, cfg, plan.run_id)) is not None:
        arts["pope_scores"] = pope
    if (ledger := write_ledger(store, cfg, plan.run_id, client or judge_client)) is not None:
        arts["llm_calls"] = ledger
    t3 = time.perf_counter()
    report = write_report(store, cfg, plan.run_id, judge_model=judge_model, compare_with=compare_with)
    seconds["report"] = time.perf_counter() - t3
    seconds["total"] = time.perf_counter() - t0
    answered = sum(len(s.ids) for s in plan.todo)
    return EvalResult(cfg.eval_dataset(), plan.run_id, cfg.resolved_model_name(), arts, report, answered, judged, skipped, seconds,
                      metrics_computed=metric_cache.computed, metrics_cached=metric_cache.hits)


def write_ledger(store: ArtifactStore, cfg: EvalConfig, run_id: str, client: Any = None) -> Artifact | None:
    """This run's LLM calls (from ``client``'s cache, else the store's) as ``llm_calls`` rows."""
    from medhall.llm.ledger import write_ledger as write

    return write(store, cfg.eval_dataset(), run_id, {"evaluate": cfg.model_dump(mode="json")}, client)


def import_baseline(store: ArtifactStore, dataset: str, files: Sequence[str | Path], *, model: str | None = None,
                    judge_model: str | None = None) -> str:
    """Bring a baseline's answers and judge outputs from MedHallTune release prediction files
    (``llava-med-prediction-*-GPT4o-eval-filtered.jsonl``) into the store, so that
    ``baseline_model`` can anchor the judge; returns the dataset written
    (``<dataset>-baseline-<model>``)."""
    from medhall.evaluate.predictions import (
        RELEASE_JUDGE,
        RELEASE_MODEL,
        import_predictions,
        import_release_judgments,
    )

    model, judge_model = model or RELEASE_MODEL, judge_model or RELEASE_JUDGE
    target = f"{dataset}-baseline-{slug(model)}"[:64]
    preds = pa.concat_tables([import_predictions(f, model)[0] for f in files])
    judgments = pa.concat_tables([import_release_judgments(f, judge_model, model) for f in files])
    inputs = [file_sha256(f) for f in files]
    config = {"files": [str(f) for f in files], "model": model, "judge_model": judge_model}
    store.write("predictions", preds, dataset=target, config=config, inputs=inputs)
    store.write("judgments", judgments, dataset=target, config=config, inputs=inputs)
    return target


def default_eval_config(dataset: str = "sample-instruct", *, judge: LLMSettings | None = None,
                        max_questions: int | None = None) -> EvalConfig:
    """The main job's evaluation: the embedded SmolLM2 text-only baseline on the test split,
    at most 48 new tokens per answer, METEOR + ROUGE + BERTScore (shipped MiniLM)."""
    return EvalConfig(dataset=dataset, split="test", model=TextLLMSpec(max_tokens=48), judge=judge,
                      metrics=DEFAULT_METRICS, max_questions=max_questions)


def evaluate_default(store: ArtifactStore, dataset: str = "sample-instruct", *, judge: LLMSettings | None = None,
                     max_questions: int | None = None) -> dict[str, Any]:
    """The main job's evaluation on the embedded default (after :func:`medhall.jobs.run_default`):
    the embedded SmolLM2-135M-Instruct answers the test split's questions without the image (a
    text-only baseline), scored with METEOR, ROUGE-1/2/L and BERTScore; the report says which
    scores need a judge endpoint and how to give one (``judge``: run the judge too).
    ``max_questions`` caps the questions (a seeded sample). Returns :meth:`EvalResult.as_dict`
    plus ``summary`` (the Table 2 P&N line), ``pope`` (the judge-free hallucination scores: a
    count line and a line per decision rule; empty when no question has a known yes/no answer)
    and ``judge_help``."""
    from medhall.evaluate.pope import summary_lines
    from medhall.evaluate.report import markdown_pn

    result = run_eval(store, default_eval_config(dataset, judge=judge, max_questions=max_questions))
    out = result.as_dict()
    out["summary"] = markdown_pn(result.report.table)
    out["pope"] = summary_lines(result.report.pope)
    out["judge_help"] = None if judge else f"Judge scores need a judge endpoint: {JUDGE_ENV_HELP}."
    return out




__all__ = [
    "DEFAULT_METRICS",
    "FINAL_ERRORS",
    "JUDGE_ENV_HELP",
    "METRIC_GROUPS",
    "MODEL_SPEC",
    "SMOLLM2_EVAL_NAME",
    "APISpec",
    "Anchor",
    "EvalConfig",
    "EvalError",
    "EvalResult",
    "ImportSpec",
    "LocalVLMSpec",
    "MetricCache",
    "ModelSpec",
    "Questions",
    "ReportFiles",
    "StagePlan",
    "TextLLMSpec",
    "answer_shard",
    "answers_dir",
    "assemble_judgments",
    "assemble_predictions",
    "build_report_table",
    "compute_metrics",
    "compute_pope",
    "default_eval_config",
    "default_model_name",
    "eval_dataset_name",
    "eval_run_id",
    "evaluate_default",
    "final_answers",
    "import_baseline",
    "judge_dir",
    "judge_identity",
    "judge_model_name",
    "judge_shard",
    "load_anchors",
    "load_questions",
    "model_identity",
    "plan_answers",
    "plan_judging",
    "qa_shard",
    "read_predictions",
    "render_markdown",
    "reports_dir",
    "run_eval",
    "slug",
    "write_ledger",
    "write_report",
]
