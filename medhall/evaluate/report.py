"""The evaluation report: Table 2 rendered as Markdown, CSV and a PNG chart, and the report page.

Renderers over the long report table of :func:`medhall.evaluate.table2.table2`: Markdown in the
paper's "P&N" style (:func:`markdown_pn`), a clean Markdown table (:func:`markdown_table`,
:func:`markdown_compare`), CSV (:func:`write_csv`) and a PNG chart (:func:`plot_report`;
matplotlib is imported there). :func:`write_report` writes an evaluation's page (what was
evaluated and how, the judge, the metrics, Table 2, breakdowns, a comparison) under
``<home>/reports/<eval dataset>/``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medhall import atomic
from medhall.evaluate.answers import read_predictions
from medhall.evaluate.config import JUDGE_ENV_HELP, EvalConfig, eval_dataset_name, slug
from medhall.evaluate.judge import AXES
from medhall.evaluate.questions import Questions, load_questions
from medhall.evaluate.table2 import (
    MEASURE_LABELS,
    MEASURE_ORDER,
    compare,
    table2,
)
from medhall.store import ArtifactStore

# --------------------------------------------------------------------------- renderers


def _fmt(value: float | None, digits: int, *, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _digits(measure: str) -> int:
    return 2 if measure in AXES else 3


def _measures(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    present = {r["measure"] for r in rows}
    return [m for m in MEASURE_ORDER if m in present] + sorted(present - set(MEASURE_ORDER))


def markdown_pn(report: pa.Table, measures: Sequence[str] | None = None) -> str:
    """The paper's Table 2 layout: one row per model, one "P&N" cell per measure (overall)."""
    rows = [r for r in report.to_pylist() if r["breakdown"] == "overall"]
    cols = list(measures) if measures is not None else _measures(rows)
    means = {(r["model"], r["kind"], r["measure"]): r["mean"] for r in rows}
    lines = [
        "| Method | " + " | ".join(f"{MEASURE_LABELS.get(m, m)} P&N" for m in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = [
            f"{_fmt(means.get((model, 'positive', m)), 2)}&{_fmt(means.get((model, 'negative', m)), 2)}" for m in cols
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(report: pa.Table, breakdown: str = "overall") -> str:
    """A clean table of one breakdown: mean, 95 % interval, n and failures per cell."""
    rows = [r for r in report.to_pylist() if r["breakdown"] == breakdown]
    head = "| model | group | kind | measure | mean | 95 % CI | n | failed |\n|---|---|---|---|---:|---|---:|---:|\n"
    body = "".join(
        f"| {r['model']} | {r['group']} | {r['kind']} | {MEASURE_LABELS.get(r['measure'], r['measure'])} | "
        f"{_fmt(r['mean'], _digits(r['measure']) + 1)} | "
        f"[{_fmt(r['ci_low'], _digits(r['measure']) + 1)}, {_fmt(r['ci_high'], _digits(r['measure']) + 1)}] | "
        f"{r['n']} | {r['n_failed']} |\n"
        for r in rows
    )
    return head + body


def markdown_compare(comparison: pa.Table, breakdown: str = "overall", labels: tuple[str, str] | None = None) -> str:
    """Two runs side by side with their difference (b - a); ``labels`` name the two columns
    (default: the models)."""
    rows = [r for r in comparison.to_pylist() if r["breakdown"] == breakdown]
    model_a, model_b = labels or (
        next((r["model_a"] for r in rows if r["model_a"]), "a"),
        next((r["model_b"] for r in rows if r["model_b"]), "b"),
    )
    head = f"| group | kind | measure | {model_a} | {model_b} | Δ |\n|---|---|---|---:|---:|---:|\n"
    body = "".join(
        f"| {r['group']} | {r['kind']} | {MEASURE_LABELS.get(r['measure'], r['measure'])} | "
        f"{_fmt(r['mean_a'], _digits(r['measure']) + 1)} | {_fmt(r['mean_b'], _digits(r['measure']) + 1)} | "
        f"{_fmt(r['diff'], _digits(r['measure']) + 1, sign=True)} |\n"
        for r in rows
    )
    return head + body


def write_csv(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """A report or comparison as CSV, written atomically."""
    from medhall.report.export import write_table

    write_table(table, path, "csv")
    return Path(path)


def plot_report(report: pa.Table, path: str | os.PathLike[str], title: str = "MedHallTune evaluation") -> Path:
    """Grouped bars with 95 % intervals (overall breakdown): the judge axes (1-10) in one
    panel, the text metrics (0-1) in another; one bar per (model, kind). Several models (e.g.
    two reports concatenated) are drawn side by side. Written as PNG."""
    from medhall.report.figures import pyplot, save

    plt = pyplot()

    rows = [r for r in report.to_pylist() if r["breakdown"] == "overall" and r["mean"] is not None]
    measures = _measures(rows)
    panels = [p for p in ([m for m in measures if m in AXES], [m for m in measures if m not in AXES]) if p]
    series = list(dict.fromkeys((r["model"], r["kind"]) for r in rows))
    cell = {(r["model"], r["kind"], r["measure"]): r for r in rows}
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4.2), squeeze=False)
    width = 0.8 / max(len(series), 1)
    for ax, panel in zip(axes[0], panels, strict=False):
        for i, (model, kind) in enumerate(series):
            found = [cell.get((model, kind, m)) for m in panel]
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(panel))]
            heights = [c["mean"] if c else 0.0 for c in found]
            errs = np.array([[c["mean"] - c["ci_low"], c["ci_high"] - c["mean"]] if c else [0.0, 0.0] for c in found]).T
            ax.bar(xs, heights, width, yerr=errs, capsize=2, label=f"{model} {kind}")
        ax.set_xticks(range(len(panel)), [MEASURE_LABELS.get(m, m) for m in panel], rotation=20)
        ax.set_ylim(0, 10 if panel[0] in AXES else 1)
        ax.set_ylabel("mean score (1-10)" if panel[0] in AXES else "mean (0-1)")
    axes[0][0].legend(fontsize=8)
    return save(fig, path, title)




# --------------------------------------------------------------------------- the report page


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote and the tables it rendered."""

    markdown_path: Path
    csv_path: Path
    png_path: Path
    markdown: str
    table: pa.Table
    comparison: pa.Table | None = None
    compare_paths: dict[str, Path] = field(default_factory=dict)
    pope: pa.Table | None = None  # judge-free POPE scores (None: no yes/no question with a known answer)
    pope_paths: dict[str, Path] = field(default_factory=dict)


def reports_dir(store: ArtifactStore, cfg: EvalConfig) -> Path:
    return store.root / "reports" / cfg.eval_dataset()


def _model_tables(store: ArtifactStore, cfg: EvalConfig, model: str, dataset: str, qa_ids: Sequence[str],
                  judge_model: str | None, rubric_hash: str | None) -> tuple[pa.Table | None, pa.Table | None]:
    """(judgments, scores) of ``model`` in ``dataset`` for ``qa_ids``; judgments only by this
    judge and rubric (None when no judge ran); scores of this run's metrics only."""
    wanted = pa.array(list(qa_ids), pa.string())

    def latest(table: str) -> pa.Table | None:
        art = store.latest(table, dataset)
        if art is None:
            return None
        t = art.read()
        return t.filter(pc.and_(pc.equal(t.column("model"), model), pc.is_in(t.column("qa_id"), wanted)))

    judgments = latest("judgments") if judge_model else None
    if judgments is not None:
        judgments = judgments.filter(pc.and_(pc.equal(judgments.column("judge_model"), judge_model),
                                             pc.equal(judgments.column("rubric_hash"), rubric_hash)))
    scores = latest("scores")
    if scores is not None:
        scores = scores.filter(pc.is_in(scores.column("metric"), pa.array(cfg.metric_names(), pa.string())))
    return judgments, scores


def build_report_table(store: ArtifactStore, cfg: EvalConfig, questions: Questions, *, model: str | None = None,
                       dataset: str | None = None, judge_model: str | None = None) -> pa.Table:
    """Table 2 rows (:func:`medhall.evaluate.report.table2`) of one model on the questions."""
    from medhall.evaluate.judge import load_rubric

    rows = questions.rows()
    judgments, scores = _model_tables(store, cfg, model or cfg.resolved_model_name(), dataset or cfg.eval_dataset(),
                                      questions.qa_ids, judge_model, load_rubric(cfg.rubric_version).hash)
    return table2(judgments, scores, {r["qa_id"]: r["kind"] for r in rows},
                  categories={r["qa_id"]: r["category"] for r in rows}, modalities={r["qa_id"]: r["modality"] for r in rows},
                  n_boot=cfg.n_boot, seed=cfg.seed)


def write_report(store: ArtifactStore, cfg: EvalConfig, run_id: str, *, judge_model: str | None = None,
                 compare_with: str | None = None) -> ReportFiles:
    """Table 2 with intervals, breakdowns and (``compare_with``: another model evaluated on the
    same questions) a side-by-side comparison: Markdown, CSV and PNG under
    ``<home>/reports/<eval dataset>/``. ``judge_model``: the judge of this run (None: no judge).
    The judge-free POPE scores (:mod:`medhall.evaluate.pope`) of the yes/no questions whose
    answer is known go into the page and into ``pope.csv`` / ``pope.png``."""
    from medhall.evaluate.pope import eval_pope, plot_pope

    questions = load_questions(store, cfg)
    table = build_report_table(store, cfg, questions, judge_model=judge_model)
    out = reports_dir(store, cfg)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(table, out / "report.csv")
    png_path = plot_report(table, out / "report.png", title=f"{cfg.resolved_model_name()} on {cfg.dataset} ({cfg.split or 'all'})")
    pope = eval_pope(store, cfg, questions)
    pope_paths = {} if pope is None else {
        "POPE CSV": write_csv(pope, out / "pope.csv"),
        "POPE chart": plot_pope(pope, out / "pope.png", title=f"{cfg.resolved_model_name()}: judge-free yes/no scores"),
    }
    comparison, compare_paths, other_note = None, {}, None
    if compare_with:
        other_ds = eval_dataset_name(cfg.dataset, cfg.split, compare_with, cfg.max_questions)
        if store.latest("predictions", other_ds) is None:
            other_note = f"No evaluation of `{compare_with}` on these questions (eval dataset `{other_ds}`): nothing to compare."
        else:
            common, other_note = _common_questions(store, cfg, questions, compare_with, other_ds)
            other = build_report_table(store, cfg, common, model=compare_with, dataset=other_ds, judge_model=judge_model)
            mine = table if common is questions else build_report_table(store, cfg, common, judge_model=judge_model)
            comparison = compare(other, mine)
            compare_paths = {"csv": write_csv(comparison, out / f"compare-{slug(compare_with)}.csv"),
                             "png": plot_report(pa.concat_tables([other, table]), out / f"compare-{slug(compare_with)}.png",
                                                title=f"{compare_with} vs {cfg.resolved_model_name()}")}
    markdown = render_markdown(store, cfg, questions, table, judge_model=judge_model, comparison=comparison,
                               compare_with=compare_with, note=other_note, pope=pope,
                               files={"CSV": csv_path, "chart": png_path, **compare_paths, **pope_paths})
    md_path = out / "report.md"
    atomic.write_bytes(md_path, markdown.encode())
    return ReportFiles(md_path, csv_path, png_path, markdown, table, comparison, compare_paths, pope,
                       {k.removeprefix("POPE ").lower(): v for k, v in pope_paths.items()})


def _common_questions(store: ArtifactStore, cfg: EvalConfig, questions: Questions, other: str,
                      other_ds: str) -> tuple[Questions, str | None]:
    """The questions both models answered (ok), and a note when that is not all of them: a
    comparison of means over different question sets would compare the sets, not the models."""
    def answered(model: str, dataset: str) -> set[str]:
        preds = store.read("predictions", dataset)
        preds = preds.filter(pc.and_(pc.equal(preds.column("model"), model), pc.equal(preds.column("status"), "ok")))
        return set(preds.column("qa_id").to_pylist())

    wanted = set(questions.qa_ids)
    mine, theirs = answered(cfg.resolved_model_name(), cfg.eval_dataset()) & wanted, answered(other, other_ds) & wanted
    common = mine & theirs
    if common == wanted:
        return questions, None
    table = questions.table.filter(pc.is_in(questions.table.column("qa_id"), pa.array(sorted(common), pa.string())))
    note = (f"Compared on the {len(common)} of {len(wanted)} questions both models answered "
            f"({cfg.resolved_model_name()}: {len(mine)}, {other}: {len(theirs)}).")
    return Questions(table, questions.inputs), note


def render_markdown(store: ArtifactStore, cfg: EvalConfig, questions: Questions, table: pa.Table, *,
                    judge_model: str | None, comparison: pa.Table | None = None, compare_with: str | None = None,
                    note: str | None = None, files: dict[str, Any] | None = None, pope: pa.Table | None = None) -> str:
    """The report in Markdown: what was evaluated and how, Table 2, the judge-free POPE scores,
    breakdowns, comparison."""
    from medhall.evaluate.pope import markdown_section

    preds = read_predictions(store, cfg, questions.qa_ids)
    parts = [_header(cfg, questions, preds), _judge_section(store, cfg, questions, judge_model), _metrics_section(cfg)]
    parts.append("## Table 2 (P = non-hallucination, N = hallucination questions)\n\n" + markdown_pn(table))
    parts.append("## Overall, with bootstrap 95 % intervals\n\n" + markdown_table(table, "overall"))
    parts.append(markdown_section(pope))
    for breakdown in ("category", "modality"):
        if any(r == breakdown for r in table.column("breakdown").to_pylist()):
            parts.append(f"## By {breakdown}\n\n" + markdown_table(table, breakdown))
    if comparison is not None:
        parts.append(f"## {compare_with} vs {cfg.resolved_model_name()} (Δ = this run − {compare_with})\n\n"
                     + (f"{note}\n\n" if note else "")
                     + markdown_compare(comparison, labels=(compare_with or "a", cfg.resolved_model_name())))
    elif note:
        parts.append(f"## Comparison\n\n{note}\n")
    parts.append(_files_section(cfg, files or {}))
    return "\n".join(parts)


def _header(cfg: EvalConfig, questions: Questions, preds: pa.Table) -> str:
    kinds = Counter(r["kind"] for r in questions.rows())
    rows = preds.to_pylist()
    failed = [r for r in rows if r["status"] != "ok"]
    truncated = sum(1 for r in rows if r["meta"] and json.loads(r["meta"]).get("truncated"))
    lines = [f"# Evaluation: {cfg.resolved_model_name()} on {cfg.dataset} ({cfg.split or 'all'} split)", ""]
    if cfg.text_only():
        lines += ["**Text-only baseline: this model did not see the image** (nor the caption). It answered "
                  "from the question alone, so its scores measure language priors, not image understanding.", ""]
    lines += [
        f"- Model: `{cfg.resolved_model_name()}` ({_model_words(cfg)})",
        f"- Questions: {questions.table.num_rows} (P {kinds.get('positive', 0)}, N {kinds.get('negative', 0)})"
        + (f", a seeded sample of {cfg.max_questions}" if cfg.max_questions else ""),
        f"- Answers: {len(rows) - len(failed)} ok, {len(failed)} failed"
        + (f" ({_reasons(r['error'] for r in failed)})" if failed else "")
        + (f"; {truncated} cut at the token limit (kept)" if truncated else ""),
    ]
    missing = questions.table.num_rows - len(rows)
    if missing:
        lines.append(f"- Not answered yet: {missing} (an unfinished run; re-run to complete)")
    return "\n".join(lines) + "\n"


def _model_words(cfg: EvalConfig) -> str:
    spec = cfg.model
    if spec.kind == "local_vlm":
        return f"local VLM `{spec.path}`" + (f" + adapter `{spec.adapter}`" if spec.adapter else "") + ", greedy"
    if spec.kind == "import":
        return f"answers imported from {len(spec.paths)} file(s)"
    where = "embedded local model" if spec.llm.backend == "transformers" else f"OpenAI-compatible endpoint ({spec.llm.base_url or 'MEDHALL_LLM_BASE_URL'})"
    return f"{where}, temperature 0, at most {spec.max_tokens} tokens"


def _reasons(errors: Any) -> str:
    counts = Counter((e or "unknown").split(":", 1)[0] for e in errors)
    return ", ".join(f"{k}: {v}" for k, v in counts.most_common())


def _judge_section(store: ArtifactStore, cfg: EvalConfig, questions: Questions, judge_model: str | None) -> str:
    if judge_model is None:
        return ("## Clinical judge: not run\n\n**The judge scores need a judge endpoint** and were not computed: "
                "Clinical Accuracy, Clinical Relevance, Detail Level and Risk Level (the paper's GPT-4o judge). "
                f"To add them, {JUDGE_ENV_HELP}.\n")
    from medhall.evaluate.judge import load_rubric

    judgments, _ = _model_tables(store, cfg, cfg.resolved_model_name(), cfg.eval_dataset(), questions.qa_ids,
                                 judge_model, load_rubric(cfg.rubric_version).hash)
    rows = judgments.to_pylist() if judgments is not None else []
    failed = [r for r in rows if r["status"] != "ok"]
    anchored = sum(1 for r in rows if r["anchor_model"])
    lines = [
        "## Clinical judge", "",
        f"- Judge: `{judge_model}`, temperature 0, rubric {cfg.rubric_version} (hash `{load_rubric(cfg.rubric_version).hash}`), "
        f"up to {cfg.judge_attempts} calls per answer",
        f"- Anchor: {anchored} of {len(rows)} judgments anchored on `{cfg.baseline_model}`'s judged answer"
        if cfg.baseline_model else "- Anchor: none (judged without a sample answer; `anchor_model` is null)",
        f"- Judgments: {len(rows) - len(failed)} ok, **{len(failed)} failed**"
        + (f" ({_reasons(_judge_reason(r) for r in failed)}); failed judgments are counted in the tables' "
           "`failed` column and never averaged in (raw replies in `judgments.raw`)" if failed else ""),
    ]
    return "\n".join(lines) + "\n"


def _judge_reason(row: dict[str, Any]) -> str:
    error = row.get("error") or ""
    return error.removeprefix("parse failed: ") or "unknown"


def _metrics_section(cfg: EvalConfig) -> str:
    from medhall.evaluate.text_metrics import bertscore_params

    names = cfg.metric_names()
    labels = {"meteor": "METEOR", "bertscore_f1": "BERTScore F1"}
    shown = ", ".join(labels.get(n, MEASURE_LABELS.get(n, n)) for n in names)
    lines = ["## Reference-based metrics (no judge needed)", "", f"- Computed: {shown}"]
    if "bertscore_f1" in names:
        p = bertscore_params(cfg.bertscore_encoder, cfg.bertscore_layers)
        lines.append(f"- BERTScore encoder: `{p['encoder']}` (layer {p['num_layers']}, {p['encoder_origin']}); "
                     "values from different encoders are not comparable (the paper used roberta-large)")
    return "\n".join(lines) + "\n"


def _files_section(cfg: EvalConfig, files: dict[str, Any]) -> str:
    view = re.sub(r"[^A-Za-z0-9_]", "_", cfg.eval_dataset())
    lines = ["## Files and queries", ""] + [f"- {k}: `{v}`" for k, v in files.items()]
    lines += [f"- Rows: `medhall sql \"select * from scores__{view}\"` (also `predictions__{view}`, `judgments__{view}`, "
              f"`pope_scores__{view}`)"]
    return "\n".join(lines) + "\n"


__all__ = [
    "ReportFiles",
    "build_report_table",
    "markdown_compare",
    "markdown_pn",
    "markdown_table",
    "plot_report",
    "render_markdown",
    "reports_dir",
    "write_csv",
    "write_report",
]
