"""Training examples: a build's train split (or an ablation subset) from the store, or a LLaVA /
ShareGPT file made elsewhere; every image checked once before training starts.

An :class:`Example` is one image and its conversation (one QA pair, or with
``pack_per_image`` every pair of the image as a multi-turn conversation, LLaVA's practice).
Images are decoded up front with :func:`medhall.images.load_rgb` (DICOM through the same
windowing ingest uses for its PNGs), so a missing or undecodable image is skipped with its
reason counted here, never a crash mid-epoch.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from medhall import schema
from medhall.ids import canonical_json, file_sha256, sha256_hex
from medhall.store import ArtifactStore


class DataError(ValueError):
    """The training data cannot be had as asked, explained."""


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str
    qa_id: str | None = None


@dataclass(frozen=True)
class Example:
    """One training conversation about one image."""

    image: str  # path
    turns: tuple[Turn, ...]
    key: str  # the image id (store) or the record id (file)


@dataclass
class TrainData:
    """The examples, what was skipped and why, and the data's identity."""

    examples: list[Example]
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> QA pairs left out
    fingerprint: str = ""
    source: dict[str, Any] = field(default_factory=dict)  # dataset, subset, build run id / file hash

    @property
    def pairs(self) -> int:
        return sum(len(e.turns) for e in self.examples)


SUBSETS = ("full", "no_qc", "positive_only", "negative_only")


def _group(rows: Iterable[dict[str, Any]], pack: bool) -> list[Example]:
    """One example per pair, or (``pack``) per image with its pairs in order."""
    if not pack:
        return [Example(r["image"], (Turn(r["question"], r["answer"], r.get("qa_id")),), r["key"]) for r in rows]
    by_image: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_image.setdefault(r["image"], []).append(r)
    return [Example(img, tuple(Turn(r["question"], r["answer"], r.get("qa_id")) for r in rs), rs[0]["key"])
            for img, rs in by_image.items()]


def check_images(examples: Sequence[Example]) -> tuple[list[Example], Counter[str]]:
    """The examples whose image decodes; the QA pairs of the others counted by reason."""
    from medhall.images import ImageProblem, load_rgb

    verdict: dict[str, str | None] = {}
    kept, skipped = [], Counter()
    for ex in examples:
        if ex.image not in verdict:
            try:
                if not ex.image or not Path(ex.image).is_file():
                    raise ImageProblem("missing_image", f"no such file: {ex.image}")
                load_rgb(ex.image)
                verdict[ex.image] = None
            except ImageProblem as e:
                verdict[ex.image] = e.reason
        if verdict[ex.image] is None:
            kept.append(ex)
        else:
            skipped[verdict[ex.image]] += len(ex.turns)
    return kept, skipped


def store_rows(store: ArtifactStore, dataset: str, subset: str = "full",
               columns: Sequence[str] = ()) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """The build ``dataset``'s train pairs of ``subset`` (the build's own ablation subsets, drawn
    with its seed and fractions) as rows with their image path, in ``qa_id`` order; the data's
    source (dataset, subset, build run id, instructions fingerprint) and the pairs' ids."""
    from medhall.split import ablation_subsets

    instr_art = store.latest("instructions", dataset)
    splits_art = store.latest("splits", dataset)
    if instr_art is None:
        raise DataError(f"no dataset {dataset!r} in the store ({store.root}): build one first (medhall build)")
    if splits_art is None:
        raise DataError(f"{dataset!r} has no train split: it is not a build (medhall build -s {dataset} -d NAME)")
    build = instr_art.manifest.get("config", {}).get("build", {})
    fractions, seed = tuple(build.get("fractions", (0.25, 0.5, 0.75, 1.0))), int(build.get("seed", 0))
    verdicts = store.latest("qc_verdicts", dataset)
    wanted = ["qa_id", "image_id", "question", "answer", "kind", "category", *columns]
    instr = instr_art.read(columns=list(dict.fromkeys(wanted)))
    subsets = ablation_subsets(instr, verdicts.read() if verdicts else schema.empty("qc_verdicts"),
                               splits_art.read(columns=["image_id", "split"]), fractions=fractions, seed=seed)
    if subset not in subsets:
        raise DataError(f"unknown subset {subset!r}; {dataset} has: {', '.join(subsets)}")
    pairs = subsets[subset].sort_by("qa_id")
    if pairs.num_rows == 0:
        raise DataError(f"{dataset}/{subset} has no training pairs (an empty train split?)")
    images = store.get("images", store.images_source(dataset)).read(columns=["image_id", "image_path"])
    paths = dict(zip(images.column("image_id").to_pylist(), images.column("image_path").to_pylist(), strict=True))
    rows = [{**r, "image": paths.get(r["image_id"]) or "", "answer": r["answer"] or "", "key": r["image_id"]}
            for r in pairs.to_pylist()]
    source = {"dataset": dataset, "subset": subset, "build_run_id": instr_art.manifest.get("run_id"),
              "instructions": instr_art.fingerprint}
    return rows, source, pc.unique(pairs.column("qa_id")).to_pylist()


def from_store(store: ArtifactStore, dataset: str, subset: str = "full", *, pack: bool = False) -> TrainData:
    """The build ``dataset``'s train pairs of ``subset`` with their images (:func:`store_rows`)."""
    rows, source, ids = store_rows(store, dataset, subset)
    unanswered = sum(1 for r in rows if not r["answer"].strip())
    rows = [r for r in rows if r["answer"].strip()]
    examples, skipped = check_images(_group(rows, pack))
    if unanswered:
        skipped["no_answer"] += unanswered
    fingerprint = sha256_hex(canonical_json([source, sorted(ids), pack]))
    return TrainData(examples, skipped, fingerprint, source)


def _turns_of(messages: list[dict[str, Any]], where: str) -> list[tuple[str, str]]:
    """(question, answer) pairs from ShareGPT ``from/value`` or OpenAI ``role/content`` turns."""
    roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
    flat = [(roles.get(m.get("from") or m.get("role"), "?"), m.get("value", m.get("content"))) for m in messages]
    flat = [t for t in flat if t[0] != "system"]
    if len(flat) % 2 or any(r != ("user" if i % 2 == 0 else "assistant") or not isinstance(v, str)
                            for i, (r, v) in enumerate(flat)):
        raise DataError(f"{where}: turns must alternate user, assistant with text")
    return [(flat[i][1], flat[i + 1][1]) for i in range(0, len(flat), 2)]


def read_records(path: Path, what: str) -> list[Any]:
    """The records of a JSON array file, or of a JSON-lines file (``.jsonl``); a short
    :class:`DataError` when it cannot be read or is not a list of records."""
    try:
        text = path.read_text()
        records = ([json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl"
                   else json.loads(text))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of records ({what})")
    return records


def from_file(path: str | Path, *, image_root: str | Path | None = None, pack: bool = False) -> TrainData:
    """Examples from a LLaVA JSON (``image`` + ``conversations``) or a ShareGPT / LLaMA-Factory
    JSON (``images`` + ``conversations`` or ``messages``) file; a record that does not parse is
    counted under ``malformed_record``."""
    path = Path(path)
    records = read_records(path, "LLaVA or ShareGPT")
    root = Path(image_root) if image_root else path.parent
    rows, skipped = [], Counter()
    for i, rec in enumerate(records):
        try:
            image = rec.get("image") or (rec.get("images") or [None])[0]
            if not isinstance(image, str):
                raise DataError(f"{path}#{i}: one image per record is supported")
            turns = _turns_of(rec.get("conversations") or rec.get("messages") or [], f"{path}#{i}")
        except (DataError, AttributeError, TypeError):
            skipped["malformed_record"] += 1
            continue
        img = image if Path(image).is_absolute() else str(root / image)
        key = str(rec.get("id", i))
        if pack:
            rows.append({"image": img, "turns": turns, "key": key})
        else:
            rows += [{"image": img, "turns": [t], "key": key} for t in turns]
    examples = [Example(r["image"], tuple(Turn(q, a) for q, a in r["turns"]), r["key"]) for r in rows]
    if pack:  # records of one image merged into one conversation
        merged: dict[str, list[Turn]] = {}
        for ex in examples:
            merged.setdefault(ex.image, []).extend(ex.turns)
        examples = [Example(img, tuple(ts), img) for img, ts in merged.items()]
    examples, bad = check_images(examples)
    skipped.update(bad)
    if not examples:
        raise DataError(f"{path}: no usable training examples ({dict(skipped) or 'the file is empty'})")
    source = {"dataset": path.name, "subset": "file", "file_sha256": file_sha256(path)}
    return TrainData(examples, skipped, sha256_hex(canonical_json([source, pack, str(root)])), source)


def load_data(store: ArtifactStore, dataset: str, subset: str = "full", *, image_root: str | None = None,
              pack: bool = False) -> TrainData:
    """A file when ``dataset`` names one (``.json``), else a build in the store."""
    if dataset.endswith(".json") or Path(dataset).is_file():
        return from_file(dataset, image_root=image_root, pack=pack)
    return from_store(store, dataset, subset, pack=pack)


__all__ = ["DataError", "Example", "SUBSETS", "TrainData", "Turn", "check_images", "from_file", "read_records", "from_store", "load_data",
           "store_rows"]
