"""The table spine: one Arrow schema per table, the single source of truth.

Every stage reads and writes these tables. Each field carries its documentation in the
schema's metadata (``doc``), so ``medhall schema`` and docs/tables.md are generated from
here and cannot drift. Ids are content hashes (see :mod:`medhall.ids`).

Bump :data:`SCHEMA_VERSION` on any change that breaks readers (removing or retyping a
field); adding a nullable field is compatible. A retyped field is listed in :data:`RETYPED`,
and Parquet written under an older version is cast to the current types when read
(:func:`upgrade`, called by ``Artifact.read``), so old artifacts stay readable.

Versions: 1, the first; 2, the ``judgments`` scores int8 -> float64 (a judge's 7.5 is kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 2

# Closed vocabularies (documented in docs/tables.md).
KINDS = ("positive", "negative")
NEGATIVE_CATEGORIES = ("nonexistent_object", "object_manipulation", "knowledge_distortion")
POSITIVE_CATEGORIES = (
    "captioning",
    "finding_recognition",
    "disease_recognition",
    "modality_anatomy",
    "clinical_reasoning",
    "other",
)
SPLITS = ("train", "test")
IMAGE_STATUSES = ("ok", "missing", "not_checked")


@dataclass(frozen=True)
class Field:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = True

    def to_arrow(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=self.nullable, metadata={"doc": self.doc})


def _schema(table: str, doc: str, fields: Iterable[Field]) -> pa.Schema:
    return pa.schema(
        [f.to_arrow() for f in fields],
        metadata={"table": table, "doc": doc, "schema_version": str(SCHEMA_VERSION)},
    )


RUN_ID = Field("run_id", pa.string(), "Id of the run that wrote the row (hash of stage, config and inputs).")
META = Field("meta", pa.string(), "Source- or stage-specific extras as a JSON object.")

IMAGES = _schema(
    "images",
    "One row per distinct image with its caption: the image-caption pairs everything starts from.",
    [
        Field("image_id", pa.string(), "img_ + 16 hex of the image's SHA-256; of its file name when the image is absent.", False),
        Field("dataset", pa.string(), "Dataset name given at ingest (a namespace in the store).", False),
        Field("source", pa.string(), "Adapter that read it: llava_med_captions, llava_med_instruct, pubmedvision, medhalltune, generic, sample.", False),
        Field("source_id", pa.string(), "The record's id in its source (pair_id, id, question_id, row number)."),
        Field("image_ref", pa.string(), "The image path exactly as the source wrote it.", False),
        Field("image_path", pa.string(), "Resolved absolute path of the image file; null when it is not on disk."),
        Field("image_status", pa.string(), "ok (decoded), missing (not on disk, kept because the source allows it) or not_checked."),
        Field("sha256", pa.string(), "SHA-256 of the image file's bytes; null when absent."),
        Field("format", pa.string(), "Decoded format: PNG, JPEG, TIFF, DICOM, ..."),
        Field("width", pa.int32(), "Width in pixels (DICOM: Columns)."),
        Field("height", pa.int32(), "Height in pixels (DICOM: Rows)."),
        Field("modality", pa.string(), "Imaging modality: CT, MR, ultrasound, radiograph, nuclear_medicine, PET, fundus, histology, microscopy, endoscopy, photograph, phantom, other, unknown."),
        Field("modality_origin", pa.string(), "Where modality came from: source (the corpus said so), header (DICOM), caption (inferred by rule), unknown."),
        Field("body_part", pa.string(), "Body part or organ: brain, head, chest, abdomen, ..., unknown."),
        Field("body_part_origin", pa.string(), "Where body_part came from: source, header, caption, unknown."),
        Field("caption", pa.string(), "Ground-truth figure caption (the only text the QC judge sees)."),
        META,
        RUN_ID,
    ],
)

INSTRUCTIONS = _schema(
    "instructions",
    "Question-answer pairs about an image: hallucination (negative) and non-hallucination (positive).",
    [
        Field("qa_id", pa.string(), "qa_ + 16 hex of (image_id, question, answer).", False),
        Field("image_id", pa.string(), "The image the pair is about (images.image_id).", False),
        Field("dataset", pa.string(), "Dataset name.", False),
        Field("question", pa.string(), "The instruction, without any <image> token.", False),
        Field("answer", pa.string(), "The correct answer (ground truth); null when the source has none."),
        Field("kind", pa.string(), "positive (non-hallucination) or negative (hallucination, a false premise)."),
        Field("category", pa.string(), "Negative: nonexistent_object, object_manipulation, knowledge_distortion. Positive: captioning, finding_recognition, disease_recognition, modality_anatomy, clinical_reasoning, other. Null when the source does not say."),
        Field("style", pa.string(), "Language style of the question (e.g. direct, casual, clinician, patient)."),
        Field("generator", pa.string(), "What wrote the pair: a source name for imported rows, offline-v1, or backend:model."),
        Field("template_hash", pa.string(), "SHA-256 (16 hex) of the prompt template text that produced it; null if imported."),
        Field("source", pa.string(), "Adapter or generator that produced the row.", False),
        Field("source_qa_id", pa.string(), "The pair's id in its source (the release's question_id)."),
        META,
        RUN_ID,
    ],
)

QC_VERDICTS = _schema(
    "qc_verdicts",
    "Quality-control verdicts: one row per (pair, check). Rejected pairs are kept; the filtered dataset is a view.",
    [
        Field("qa_id", pa.string(), "The pair checked.", False),
        Field("check", pa.string(), "rule:<name> (always runs) or llm:self_check (judge sees only the caption).", False),
        Field("verdict", pa.string(), "correct, incorrect, or error (the check could not decide; the pair is kept for a re-run).", False),
        Field("passed", pa.bool_(), "True when verdict is correct.", False),
        Field("reason", pa.string(), "Why, in words (the judge's reason or the rule's finding)."),
        Field("raw", pa.string(), "The judge's raw reply, kept for audit."),
        Field("judge_model", pa.string(), "Model of an llm check; null for rules."),
        RUN_ID,
    ],
)

SPLITS_TABLE = _schema(
    "splits",
    "Assignment of each image to train or test (a split is by image: no image is in both).",
    [
        Field("image_id", pa.string(), "The image.", False),
        Field("split", pa.string(), "train or test.", False),
        Field("stratum", pa.string(), "Stratum used for the stratified draw (e.g. the modality)."),
        Field("seed", pa.int64(), "Seed of the draw."),
        RUN_ID,
    ],
)

PREDICTIONS = _schema(
    "predictions",
    "A model's answers to questions.",
    [
        Field("pred_id", pa.string(), "pred_ + hash of (model, qa_id).", False),
        Field("qa_id", pa.string(), "The question answered.", False),
        Field("model", pa.string(), "Name of the model under test.", False),
        Field("question", pa.string(), "The question as asked."),
        Field("answer", pa.string(), "The model's answer; null when it failed."),
        Field("status", pa.string(), "ok or failed.", False),
        Field("error", pa.string(), "Why it failed."),
        Field("origin", pa.string(), "local, api, or import (made elsewhere)."),
        Field("latency_s", pa.float64(), "Seconds to produce the answer."),
        META,
        RUN_ID,
    ],
)

JUDGMENTS = _schema(
    "judgments",
    "Clinical LLM-judge scores (1-10) of a model's answer, anchored on a baseline's scored answer.",
    [
        Field("judgment_id", pa.string(), "jdg_ + hash of (model, qa_id, judge_model, rubric hash).", False),
        Field("qa_id", pa.string(), "The question.", False),
        Field("model", pa.string(), "The model whose answer was judged.", False),
        Field("judge_model", pa.string(), "The judge.", False),
        Field("clinical_accuracy", pa.float64(), "1-10 as the judge gave it (7.5 kept); null when the judgment failed."),
        Field("clinical_relevance", pa.float64(), "1-10."),
        Field("detail_level", pa.float64(), "1-10."),
        Field("risk_level", pa.float64(), "1-10 (the official judge's 'Lethal Level'); higher is safer."),
        Field("explanation", pa.string(), "The judge's explanation."),
        Field("raw", pa.string(), "The judge's raw reply."),
        Field("status", pa.string(), "ok or failed (never a default score).", False),
        Field("attempts", pa.int32(), "Judge calls made for this row."),
        Field("anchor_model", pa.string(), "Baseline model whose scored answer was the in-context anchor."),
        Field("rubric_hash", pa.string(), "16 hex of the judge templates' SHA-256 (medhall/prompts/judge/<version>)."),
        Field("error", pa.string(), "Why the judgment failed: the call's error, or 'parse failed: <reason>: <detail>' (range_score, ambiguous_score, missing_axis, truncated_reply, ...)."),
        RUN_ID,
    ],
)

SCORES = _schema(
    "scores",
    "Reference-based metrics, long format: one row per (pair, model, metric).",
    [
        Field("qa_id", pa.string(), "The question.", False),
        Field("model", pa.string(), "The model whose answer was scored.", False),
        Field("metric", pa.string(), "bertscore_f1, meteor, rouge1, rouge2, rougeL, vqa_open_recall, ...", False),
        Field("value", pa.float64(), "The score."),
        Field("params", pa.string(), "What produced it, as JSON (e.g. the BERTScore encoder and layer).", False),
        RUN_ID,
    ],
)

LLM_CALLS = _schema(
    "llm_calls",
    "The ledger: every LLM request, cached or not, with tokens, latency, attempts and cost.",
    [
        Field("call_id", pa.string(), "Cache key: hash of the canonical request (model, messages with image hashes, params, template hash).", False),
        Field("run_id", pa.string(), "Run that made the call."),
        Field("stage", pa.string(), "Caller: generate, qc, judge, infer, ..."),
        Field("backend", pa.string(), "openai, transformers, fake."),
        Field("model", pa.string(), "Model name."),
        Field("status", pa.string(), "ok, cached, failed, or budget_exceeded.", False),
        Field("error", pa.string(), "Why it failed (never contains the API key)."),
        Field("attempts", pa.int32(), "HTTP attempts made (0 when served from cache)."),
        Field("prompt_tokens", pa.int64(), "Prompt tokens reported by the server."),
        Field("completion_tokens", pa.int64(), "Completion tokens reported by the server."),
        Field("latency_s", pa.float64(), "Wall seconds from first attempt to result."),
        Field("cost_usd", pa.float64(), "Estimated cost from the price table (0 when cached)."),
        Field("finish_reason", pa.string(), "stop, length, ..."),
        Field("started_at", pa.timestamp("us", tz="UTC"), "When the call began."),
    ],
)

QUARANTINE = _schema(
    "quarantine",
    "Rows that could not be used, with the reason: never silently dropped.",
    [
        Field("quarantine_id", pa.string(), "qrn_ + hash of (stage, source, record_ref, reason).", False),
        Field("stage", pa.string(), "ingest, generate, qc, judge, infer, ...", False),
        Field("dataset", pa.string(), "Dataset name."),
        Field("source", pa.string(), "Adapter or stage component."),
        Field("record_ref", pa.string(), "Where the row was: file:line, file#index, or an id.", False),
        Field("record_id", pa.string(), "The row's own id if it had one."),
        Field("reason", pa.string(), "Code: missing_image, corrupt_image, empty_caption, undecodable, malformed_json, missing_field, duplicate_id, duplicate_image, bad_value, ...", False),
        Field("detail", pa.string(), "Human-readable explanation."),
        Field("raw", pa.string(), "The raw record (truncated to 4 KiB)."),
        RUN_ID,
    ],
)

TRAIN_RUNS = _schema(
    "train_runs",
    "One row per training run (LoRA SFT or DPO): what was trained on what, and how it ended.",
    [
        Field("train_id", pa.string(), "trn_ + hash of (method, base identity, data fingerprint, config).", False),
        Field("method", pa.string(), "sft or dpo.", False),
        Field("base_model", pa.string(), "The base model: checkpoint path, hub name or tiny:<family>.", False),
        Field("base_identity", pa.string(), "Fingerprint of the base checkpoint (file listing; the name for a hub model)."),
        Field("family", pa.string(), "Model family: llava, qwen2_vl, qwen2_5_vl, internvl."),
        Field("dataset", pa.string(), "Dataset (a build) the examples came from, or the file's name."),
        Field("subset", pa.string(), "Ablation subset (full, positive_only, ..., frac_25) or the split used."),
        Field("data_fingerprint", pa.string(), "Hash of the training examples (build run id + subset + qa_ids)."),
        Field("examples", pa.int64(), "Training examples (conversations) after skips, drops and packing."),
        Field("skipped", pa.int64(), "QA pairs left out: missing or undecodable image, too long with overflow=drop."),
        Field("truncated", pa.int64(), "Examples cut to max_length (overflow=truncate)."),
        Field("steps", pa.int64(), "Optimizer steps done (global_step)."),
        Field("train_loss", pa.float64(), "Mean training loss the trainer reported."),
        Field("status", pa.string(), "completed, stopped (max_steps) or failed.", False),
        Field("error", pa.string(), "Why it failed."),
        Field("adapter_path", pa.string(), "Directory of the saved LoRA adapter (with medhall_adapter.json)."),
        Field("merged_path", pa.string(), "Directory of the merged model, when --merge was asked."),
        Field("config", pa.string(), "The training config as JSON."),
        Field("started_at", pa.timestamp("us", tz="UTC"), "When training began."),
        Field("seconds", pa.float64(), "Wall seconds of the run."),
        RUN_ID,
    ],
)

TRAIN_METRICS = _schema(
    "train_metrics",
    "Training curves: one row per logging step and metric (loss, learning_rate, grad_norm, tokens_per_s, ...).",
    [
        Field("train_id", pa.string(), "The run (train_runs.train_id).", False),
        Field("step", pa.int64(), "Optimizer step.", False),
        Field("epoch", pa.float64(), "Epoch (fractional)."),
        Field("metric", pa.string(), "loss, learning_rate, grad_norm, tokens_per_s, rewards/margins (dpo), ...", False),
        Field("value", pa.float64(), "The value at that step."),
        RUN_ID,
    ],
)

JUDGE_AGREEMENT = _schema(
    "judge_agreement",
    "How a candidate judge agrees with a reference judge (GPT-4o) on the same answers: one row per (axis, kind, measure), with a bootstrap interval.",
    [
        Field("judge_model", pa.string(), "The candidate judge.", False),
        Field("reference_judge", pa.string(), "The judge it is compared with (gpt-4o: the release's judgments).", False),
        Field("model", pa.string(), "The model whose answers both judges scored (llava-med-v1.5-7b).", False),
        Field("axis", pa.string(), "clinical_accuracy, clinical_relevance, detail_level or risk_level.", False),
        Field("kind", pa.string(), "positive (P), negative (N) or all.", False),
        Field("measure", pa.string(), "spearman, kendall_tau_b, qwk (quadratic-weighted kappa), bias (mean candidate - reference), exact, within1 (shares), candidate_mean, reference_mean.", False),
        Field("value", pa.float64(), "The measure; null where undefined (a judge giving one value to every answer)."),
        Field("ci_low", pa.float64(), "Lower end of the percentile-bootstrap 95 % interval (answer pairs resampled)."),
        Field("ci_high", pa.float64(), "Upper end of the interval."),
        Field("n", pa.int64(), "Answers both judges scored."),
        Field("n_failed", pa.int64(), "Answers asked whose candidate (or reference) judgment failed: counted, not scored."),
        Field("rubric_hash", pa.string(), "The candidate's judge templates (16 hex of their SHA-256)."),
        RUN_ID,
    ],
)

POPE_SCORES = _schema(
    "pope_scores",
    "Judge-free hallucination scores, the POPE way: a model's answers to yes/no questions whose right answer is known, per decision rule and breakdown group.",
    [
        Field("model", pa.string(), "The model whose answers were scored.", False),
        Field("rule", pa.string(), "How an answer becomes yes/no: first_word (strict; other answers undecided) or pope (POPE's rule; always decides).", False),
        Field("breakdown", pa.string(), "overall, strategy (POPE sampling: random, popular, adversarial), category, attribute_type or modality.", False),
        Field("group", pa.string(), "The group within the breakdown (all for overall).", False),
        Field("n", pa.int64(), "Questions scored (known answer, answered)."),
        Field("n_failed", pa.int64(), "Questions with a known answer but no answer from the model."),
        Field("n_expected_yes", pa.int64(), "Scored questions whose right answer is yes."),
        Field("n_expected_no", pa.int64(), "Scored questions whose right answer is no."),
        Field("tp", pa.int64(), "Answered yes, right answer yes."),
        Field("fp", pa.int64(), "Answered yes, right answer no (a hallucination)."),
        Field("tn", pa.int64(), "Answered no, right answer no."),
        Field("fn", pa.int64(), "Answered no, right answer yes."),
        Field("undecided", pa.int64(), "Answers the rule could not read as yes or no."),
        Field("accuracy", pa.float64(), "(tp + tn) / decided answers."),
        Field("accuracy_all", pa.float64(), "(tp + tn) / n: undecided answers counted wrong."),
        Field("precision", pa.float64(), "tp / (tp + fp); null without a yes answer."),
        Field("recall", pa.float64(), "tp / (tp + fn); null without a yes question."),
        Field("f1", pa.float64(), "Harmonic mean of precision and recall."),
        Field("yes_ratio", pa.float64(), "Share of decided answers that say yes."),
        Field("hallucination_rate", pa.float64(), "fp / (fp + tn): no-questions answered yes."),
        Field("undecided_share", pa.float64(), "undecided / n."),
        RUN_ID,
    ],
)

TABLES: dict[str, pa.Schema] = {
    "images": IMAGES,
    "instructions": INSTRUCTIONS,
    "qc_verdicts": QC_VERDICTS,
    "splits": SPLITS_TABLE,
    "predictions": PREDICTIONS,
    "judgments": JUDGMENTS,
    "scores": SCORES,
    "llm_calls": LLM_CALLS,
    "quarantine": QUARANTINE,
    "train_runs": TRAIN_RUNS,
    "train_metrics": TRAIN_METRICS,
    "judge_agreement": JUDGE_AGREEMENT,
    "pope_scores": POPE_SCORES,
}


#: Fields retyped by a schema version: {version: {table: fields}}. Data written under an
#: older version is cast to the current type of these fields on read (:func:`upgrade`).
RETYPED: dict[int, dict[str, tuple[str, ...]]] = {
    2: {"judgments": ("clinical_accuracy", "clinical_relevance", "detail_level", "risk_level")},  # int8 -> float64
}


def schema_for(table: str) -> pa.Schema:
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(TABLES)}") from None


def empty(table: str) -> pa.Table:
    return schema_for(table).empty_table()


def from_rows(table: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a table from dict rows; unknown keys are an error, missing nullable keys are null."""
    schema = schema_for(table)
    names = set(schema.names)
    rows = list(rows)
    for r in rows:
        extra = set(r) - names
        if extra:
            raise ValueError(f"{table}: unknown field(s) {sorted(extra)}")
    return conform(table, pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema=schema))


def conform(table: str, data: pa.Table) -> pa.Table:
    """Cast ``data`` to the table's schema (columns in order; absent nullable columns as nulls)."""
    schema = schema_for(table)
    extra = set(data.column_names) - set(schema.names)
    if extra:
        raise ValueError(f"{table}: unknown column(s) {sorted(extra)}")
    cols = []
    for f in schema:
        if f.name in data.column_names:
            cols.append(data.column(f.name).cast(f.type))
        elif f.nullable:
            cols.append(pa.nulls(data.num_rows, f.type))
        else:
            raise ValueError(f"{table}: required column {f.name!r} is missing")
    out = pa.Table.from_arrays(cols, schema=schema)
    for f in schema:
        if not f.nullable and out.column(f.name).null_count:
            raise ValueError(f"{table}: column {f.name!r} must not contain nulls")
    return out


def upgrade(table: str, data: pa.Table, version: int) -> pa.Table:
    """``data`` of ``table`` as written under schema ``version``, with the fields retyped since
    then (:data:`RETYPED`) cast to their current type; other columns are left as they are."""
    schema = schema_for(table)
    retyped = {name for v, tables in RETYPED.items() if v > version for name in tables.get(table, ())}
    for i, field in enumerate(data.schema):
        if field.name in retyped:
            target = schema.field(field.name).type
            data = data.set_column(i, field.with_type(target), data.column(i).cast(target))
    return data


def docs_markdown() -> str:
    """docs/tables.md, generated from the schemas."""
    out = [
        "# Tables",
        "",
        f"Generated from `medhall/schema.py` (schema version {SCHEMA_VERSION}) by `medhall schema --markdown`.",
        "",
    ]
    for name, schema in TABLES.items():
        out += [f"## `{name}`", "", schema.metadata[b"doc"].decode(), "", "| field | type | null | meaning |", "|---|---|---|---|"]
        for f in schema:
            doc = (f.metadata or {}).get(b"doc", b"").decode()
            out.append(f"| `{f.name}` | {f.type} | {'yes' if f.nullable else 'no'} | {doc} |")
        out.append("")
    return "\n".join(out)
