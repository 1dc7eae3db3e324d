"""A judged model's row of Table 2 from files made elsewhere: answers plus the judge's outputs.

The MedHallTune release ships LLaVA-Med-v1.5-7B's answers with GPT-4o's judge output for each
(``llava-med-prediction-{postive,negative}-GPT4o-eval-filtered.jsonl``: the val fields plus
``answer`` and ``result``). :func:`import_judged` brings such files into the store (the answers
as ``predictions``, each ``result`` parsed into ``judgments``; the dataset
``<dataset>-baseline-<model>``, which can then anchor the judge with ``baseline_model``), scores
the reference-based metrics asked for (METEOR by default, as the release's ``eval.py``), and
writes Table 2: the published row, reproduced by one command::

    medhall import-judgments ../shared/data/medhalltune/llava-med-prediction-*-GPT4o-eval-filtered.jsonl
    # | llava-med-v1.5-7b | 6.28&5.03 | 6.78&5.39 | 5.48&4.84 | 7.39&5.89 | 0.38&0.23 |

Any files in that layout work (another model's answers judged by another judge: ``model`` and
``judge_model`` name them); the kind (P or N) comes from each file's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from medhall import atomic
from medhall.store import ArtifactStore


@dataclass
class ImportedRow:
    """What :func:`import_judged` wrote and computed."""

    dataset: str
    model: str
    judge_model: str
    table: pa.Table  # Table 2 rows (medhall.evaluate.table2.REPORT_SCHEMA)
    row: str  # the P&N row in Markdown (header and one line)
    markdown: str
    paths: dict[str, Path]
    questions: int
    failed_judgments: int
    notes: list[str] = field(default_factory=list)


def import_judged(store: ArtifactStore, files: Sequence[str | Path], *, dataset: str = "medhalltune",
                  model: str | None = None, judge_model: str | None = None, metrics: Sequence[str] = ("meteor",),
                  n_boot: int = 1000, seed: int = 0) -> ImportedRow:
    """Import answers + judge outputs (release prediction layout), score ``metrics`` (text
    metric names: meteor, rouge1, rouge2, rougeL, bertscore_f1), and write Table 2 (Markdown,
    CSV, PNG under ``<home>/reports/<dataset>-baseline-<model>/``). METEOR without WordNet is
    skipped with a note, never a crash."""
    from medhall.evaluate.metric_cache import MetricCache, cache_path
    from medhall.evaluate.pipeline import import_baseline
    from medhall.evaluate.predictions import (
        RELEASE_JUDGE,
        RELEASE_MODEL,
        kinds_of,
        release_questions,
    )
    from medhall.evaluate.report import markdown_pn, markdown_table, plot_report, write_csv
    from medhall.evaluate.table2 import table2
    from medhall.evaluate.text_metrics import score_predictions
    from medhall.evaluate.wordnet import WordNetMissing
    from medhall.ids import file_sha256

    files = [Path(f) for f in files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"not found: {', '.join(missing)}")
    model, judge_model = model or RELEASE_MODEL, judge_model or RELEASE_JUDGE
    target = import_baseline(store, dataset, files, model=model, judge_model=judge_model)
    predictions, judgments = store.read("predictions", target), store.read("judgments", target)
    questions = [q for f in files for q in release_questions(f)[0]]
    kinds = kinds_of(questions)
    notes: list[str] = []
    scores = None
    if metrics:
        refs = {q.qa_id: q.ground_truth for q in questions}
        try:
            scores, _ = score_predictions(predictions, refs, list(metrics), wordnet_cache=store.root / "cache",
                                          cache=MetricCache(cache_path(store.root)))
        except WordNetMissing as e:
            kept = [m for m in metrics if m != "meteor"]
            notes.append(f"METEOR skipped: {e}")
            scores = score_predictions(predictions, refs, kept, cache=MetricCache(cache_path(store.root)))[0] if kept else None
        if scores is not None:
            store.write("scores", scores, dataset=target, config={"files": [str(f) for f in files], "metrics": list(metrics)},
                        inputs=[file_sha256(f) for f in files])
    table = table2(judgments, scores, kinds, n_boot=n_boot, seed=seed)
    failed = sum(1 for s in judgments.column("status").to_pylist() if s != "ok")
    out = store.root / "reports" / target
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": write_csv(table, out / "report.csv"),
             "png": plot_report(table, out / "report.png", title=f"{model} judged by {judge_model} (imported)")}
    row = markdown_pn(table)
    unknown = sum(1 for q in questions if q.kind is None)
    if unknown:
        notes.append(f"{unknown} questions come from files whose names say neither positive nor negative: kind unknown")
    markdown = "\n".join([
        f"# {model} judged by {judge_model} (imported)", "",
        f"- Files: {', '.join(f'`{f}`' for f in files)}",
        f"- Questions: {len(questions)} (P {sum(1 for q in questions if q.kind == 'positive')}, "
        f"N {sum(1 for q in questions if q.kind == 'negative')}); judgments that did not parse: {failed} "
        "(counted, never averaged in)",
        f"- Stored as dataset `{target}` (predictions, judgments, scores); evaluate another model with "
        f"`--baseline {model}` to anchor the judge on these judged answers", *(f"- Note: {n}" for n in notes), "",
        "## Table 2 (P = non-hallucination, N = hallucination questions)", "", row,
        "## Overall, with bootstrap 95 % intervals", "", markdown_table(table, "overall"),
        "## Files", "", *(f"- {k}: `{v}`" for k, v in paths.items()), "",
    ])
    paths["markdown"] = out / "report.md"
    atomic.write_bytes(paths["markdown"], markdown.encode())
    return ImportedRow(target, model, judge_model, table, row, markdown, paths, len(questions), failed, notes)


__all__ = ["ImportedRow", "import_judged"]
