"""LLaVA conversation JSON (the LLaVA / LLaVA-Med fine-tuning format).

One JSON array; by default one record per pair::

    {"id": "<qa_id>", "image": "<path>",
     "conversations": [{"from": "human", "value": "<image>\\n<question>"},
                       {"from": "gpt", "value": "<answer>"}]}

With ``multi_turn=True``, one record per image (``id`` = ``image_id``) whose conversation
holds all its pairs in ``qa_id`` order; only the first human turn carries ``<image>``.
Pairs without an answer are left out (nothing to learn; the count is logged).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from medhall.export.base import (
    Job,
    JsonSink,
    PathLike,
    RowSource,
    human_turn,
    output_path,
    run_exports,
)

FORMAT = "llava"


def conversation(rows: Iterable[dict[str, Any]], *, sep: str = "\n") -> list[dict[str, str]]:
    """ShareGPT-style turns (``from`` human / gpt) for one image's pairs; ``<image>`` leads the first."""
    turns: list[dict[str, str]] = []
    for i, r in enumerate(rows):
        turns.append({"from": "human", "value": human_turn(r["question"], first=i == 0, sep=sep)})
        turns.append({"from": "gpt", "value": r["answer"]})
    return turns


def by_image(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive rows of one image as a list (the view is ordered by image)."""
    for _, group in itertools.groupby(rows, key=lambda r: r["image_id"]):
        yield list(group)


def llava_records(rows: Iterable[dict[str, Any]], *, multi_turn: bool = False) -> Iterator[dict[str, Any]]:
    """LLaVA records from view rows (:func:`medhall.export.base.view_batches`)."""
    if multi_turn:
        for group in by_image(rows):
            yield {"id": group[0]["image_id"], "image": group[0]["image"], "conversations": conversation(group)}
    else:
        for r in rows:
            yield {"id": r["qa_id"], "image": r["image"], "conversations": conversation([r])}


def llava_sink(
    out_dir: PathLike,
    *,
    name: str,
    split: str | None = None,
    image_root: PathLike | None = None,
    multi_turn: bool = False,
) -> JsonSink:
    """The sink that writes ``<out_dir>/<name>_<split>.json`` (for :func:`medhall.export.base.run_exports`)."""
    path = output_path(out_dir, name, split, ".json")
    records = functools.partial(llava_records, multi_turn=multi_turn)
    return JsonSink(path, records, answered_only=True, by_image=multi_turn, image_root=image_root)


def write_llava(
    instructions: pa.Table | RowSource,
    images: pa.Table,
    out_dir: PathLike,
    *,
    name: str,
    split: str | None = None,
    image_root: PathLike | None = None,
    multi_turn: bool = False,
) -> list[Path]:
    """Write ``<out_dir>/<name>_<split>.json`` (a JSON array, streamed); returns ``[path]``."""
    sink = llava_sink(out_dir, name=name, split=split, image_root=image_root, multi_turn=multi_turn)
    return run_exports(instructions, images, [Job(sink)])
