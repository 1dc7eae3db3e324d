"""A realistic synthetic dataset for split / export tests and the export benchmark.

Images over several modalities with uneven shares, 2-6 pairs per image (positive and
negative, with categories), QC verdicts with rejects and errors. Deterministic for a seed.
Built column-wise so a million pairs take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medhall import ids, schema

MODALITIES = {"CT": 0.35, "MR": 0.25, "radiograph": 0.15, "ultrasound": 0.1, "histology": 0.1, "fundus": 0.05}
BODY_PARTS = ("chest", "brain", "abdomen", "knee", "eye", "liver")
IMAGE_ROOT = "/data/medhall/images"


@dataclass
class Dataset:
    images: pa.Table
    instructions: pa.Table
    verdicts: pa.Table


def make_images(n: int, rng: np.random.Generator) -> pa.Table:
    mods = rng.choice(list(MODALITIES), size=n, p=list(MODALITIES.values()))
    parts = rng.choice(BODY_PARTS, size=n)
    refs = [f"figs/PMC{1000 + i}_FIG{i % 7}.jpg" for i in range(n)]
    on_disk = rng.random(n) > 0.1
    return schema.conform("images", pa.table({
        "image_id": [ids.image_id(ref=r) for r in refs],
        "dataset": ["synthetic"] * n,
        "source": ["sample"] * n,
        "image_ref": refs,
        "image_path": [f"{IMAGE_ROOT}/{r}" if ok else None for r, ok in zip(refs, on_disk, strict=True)],
        "image_status": ["ok" if ok else "missing" for ok in on_disk],
        "modality": mods.tolist(),
        "body_part": parts.tolist(),
        "caption": [f"{m} of the {p} showing finding {i % 13}." for i, (m, p) in enumerate(zip(mods, parts, strict=True))],
    }))


def make_instructions(images: pa.Table, rng: np.random.Generator, pairs: tuple[int, int] = (2, 6)) -> pa.Table:
    image_ids = images.column("image_id").to_pylist()
    per = rng.integers(pairs[0], pairs[1] + 1, size=len(image_ids))
    img = np.repeat(np.arange(len(image_ids)), per)
    turn = np.concatenate([np.arange(k) for k in per]) if len(per) else np.zeros(0, int)
    negative = turn % 2 == 1
    pos_cat = rng.choice(schema.POSITIVE_CATEGORIES, size=len(img))
    neg_cat = rng.choice(schema.NEGATIVE_CATEGORIES, size=len(img))
    questions = [f"Question {t} about image {i}: is there a lesion in región {t}?" for i, t in zip(img, turn, strict=True)]
    answers = [f"Answer {t} for image {i}, with details." if t % 11 != 10 else None for i, t in zip(img, turn, strict=True)]
    iids = [image_ids[i] for i in img]
    return schema.conform("instructions", pa.table({
        "qa_id": [ids.qa_id(i, q, a) for i, q, a in zip(iids, questions, answers, strict=True)],
        "image_id": iids,
        "dataset": ["synthetic"] * len(img),
        "question": questions,
        "answer": answers,
        "kind": np.where(negative, "negative", "positive").tolist(),
        "category": np.where(negative, neg_cat, pos_cat).tolist(),
        "style": ["direct"] * len(img),
        "generator": ["offline-v1"] * len(img),
        "source": ["synthetic"] * len(img),
    }))


def make_verdicts(instructions: pa.Table, rng: np.random.Generator, reject: float = 0.1, error: float = 0.03) -> pa.Table:
    qa = instructions.column("qa_id").to_pylist()
    u = rng.random(len(qa))
    verdict = np.where(u < reject, "incorrect", np.where(u < reject + error, "error", "correct"))
    llm = {
        "qa_id": qa,
        "check": ["llm:self_check"] * len(qa),
        "verdict": verdict.tolist(),
        "passed": (verdict == "correct").tolist(),
    }
    rule = {"qa_id": qa, "check": ["rule:length"] * len(qa), "verdict": ["correct"] * len(qa), "passed": [True] * len(qa)}
    return pa.concat_tables([schema.conform("qc_verdicts", pa.table(t)) for t in (rule, llm)])


def make_dataset(n_images: int = 400, *, seed: int = 7, pairs: tuple[int, int] = (2, 6)) -> Dataset:
    rng = np.random.default_rng(seed)
    images = make_images(n_images, rng)
    instructions = make_instructions(images, rng, pairs)
    return Dataset(images, instructions, make_verdicts(instructions, rng))


def leaky_dataset() -> tuple[Dataset, pa.Table]:
    """A tiny dataset and its split where one picture is known under two ids (a train image
    with a test image's file name) and a pair ``qa_copy`` asks the test image's question
    (upper-cased) about the train copy: a leak only the file-name check can see."""
    from medhall.split import split_by_image

    small = make_dataset(4, seed=1, pairs=(2, 2))
    s = split_by_image(small.images, test_images=2, seed=0)
    split_of = dict(zip(s.column("image_id").to_pylist(), s.column("split").to_pylist(), strict=True))
    images = small.images.to_pylist()
    test_img = next(r for r in images if split_of[r["image_id"]] == "test")
    train_img = next(r for r in images if split_of[r["image_id"]] == "train")
    train_img["image_ref"] = "other/folder/" + test_img["image_ref"].rsplit("/", 1)[-1]
    question = next(r for r in small.instructions.to_pylist() if r["image_id"] == test_img["image_id"])
    copy = {**question, "qa_id": "qa_copy", "image_id": train_img["image_id"], "question": question["question"].upper()}
    leaky = pa.concat_tables([small.instructions, schema.from_rows("instructions", [copy])])
    return Dataset(schema.from_rows("images", images), leaky, small.verdicts), s


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), to compare two export trees."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def shuffled_file(table: pa.Table, path: Path, *, seed: int = 1, row_group_size: int = 97) -> Path:
    """``table`` in a random row order, written as Parquet with small row groups."""
    perm = np.random.default_rng(seed).permutation(table.num_rows)
    pq.write_table(table.take(pa.array(perm)), path, row_group_size=row_group_size)
    return path
