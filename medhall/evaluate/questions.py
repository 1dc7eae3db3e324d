"""The questions of an evaluation: the dataset's QC-filtered pairs on one split's images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from medhall.evaluate.config import EvalConfig, EvalError
from medhall.ids import sha256_hex
from medhall.store import ArtifactStore


@dataclass(frozen=True)
class Questions:
    """The questions of an evaluation, with what the judge and the report need, and the
    fingerprints of the artifacts they came from."""

    table: pa.Table  # qa_id, image_id, question, answer, kind, category, source_qa_id, image_path, caption, modality
    inputs: tuple[str, ...]

    @property
    def qa_ids(self) -> list[str]:
        return self.table.column("qa_id").to_pylist()

    def rows(self, qa_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        t = self.table if qa_ids is None else self.table.filter(pc.is_in(self.table.column("qa_id"), pa.array(list(qa_ids), pa.string())))
        return t.to_pylist()


def load_questions(store: ArtifactStore, cfg: EvalConfig) -> Questions:
    """The dataset's QC-filtered instructions on ``cfg.split``'s images (a seeded sample of
    ``max_questions``), joined with image path, caption and modality; ordered by qa_id."""
    from medhall.split import filtered

    instr_art = store.get("instructions", cfg.dataset)
    instr = instr_art.read(columns=["qa_id", "image_id", "question", "answer", "kind", "category", "source_qa_id"])
    inputs = [instr_art.fingerprint]
    if (qc := store.latest("qc_verdicts", cfg.dataset)) is not None:
        instr, inputs = filtered(instr, qc.read()), [*inputs, qc.fingerprint]
    if cfg.split is not None:
        instr, split_fp = _on_split(store, cfg, instr)
        inputs.append(split_fp)
    images_art = store.get("images", store.images_source(cfg.dataset))
    images = images_art.read(columns=["image_id", "image_path", "caption", "modality"])
    table = instr.join(images, "image_id", join_type="left outer")
    table = _ordered(table, cfg)
    if table.num_rows == 0:
        raise EvalError(f"{cfg.dataset} has no questions to evaluate on split {cfg.split!r}")
    return Questions(table, (*inputs, images_art.fingerprint))


def _on_split(store: ArtifactStore, cfg: EvalConfig, instr: pa.Table) -> tuple[pa.Table, str]:
    splits_art = store.latest("splits", cfg.dataset)
    if splits_art is None:
        raise EvalError(f"{cfg.dataset} has no splits table: build it (medhall.build) or evaluate with split=None")
    splits = splits_art.read(columns=["image_id", "split"])
    ids = splits.filter(pc.equal(splits.column("split"), cfg.split)).column("image_id")
    return instr.filter(pc.is_in(instr.column("image_id"), ids)), splits_art.fingerprint


def _ordered(table: pa.Table, cfg: EvalConfig) -> pa.Table:
    """By qa_id; with ``max_questions``, the first of a seeded order (stable as data grows)."""
    ids = table.column("qa_id").to_pylist()
    if cfg.max_questions is not None and cfg.max_questions < len(ids):
        rank = sorted(range(len(ids)), key=lambda i: sha256_hex(f"{cfg.seed}:{ids[i]}"))[: cfg.max_questions]
        table = table.take(pa.array(rank))
    return table.sort_by("qa_id")


def eval_run_id(cfg: EvalConfig, questions: Questions) -> str:
    """Run id: the config and the fingerprints of the questions' artifacts."""
    from medhall.ids import run_id

    return run_id("evaluate", cfg.model_dump(mode="json"), list(questions.inputs))


