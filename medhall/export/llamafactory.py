"""LLaMA-Factory ShareGPT (multimodal) JSON plus its ``dataset_info.json`` entry.

Layout as LLaMA-Factory's ``data/README.md`` documents it ("Multimodal Image Dataset",
sharegpt format): a JSON array of::

    {"id": "<qa_id>",
     "conversations": [{"from": "human", "value": "<image><question>"},
                       {"from": "gpt", "value": "<answer>"}],
     "images": ["<path>"]}

One ``<image>`` token per entry of ``images`` (one image per record). ``id`` is extra: the
loader ignores unmapped columns, and it ties a record back to its pair. With
``multi_turn=True`` one record per image holds all its pairs.

``dataset_info.json`` in ``out_dir`` gets (or updates) the entry ``<name>_<split>``::

    {"file_name": "<name>_<split>.json", "formatting": "sharegpt",
     "columns": {"messages": "conversations", "images": "images"},
     "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}

Other entries in an existing ``dataset_info.json`` are kept. A file left out because it would
be empty (``omit_empty``, see :class:`medhall.export.base.Sink`) gets no entry. Point LLaMA-Factory's
``dataset_dir`` at ``out_dir`` and its ``media_dir`` at the images root when paths are
relative (see :func:`medhall.export.base.image_paths`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa

from medhall.export.base import (
    Job,
    JsonSink,
    PathLike,
    RowSource,
    output_path,
    read_json,
    run_exports,
    write_json_file,
)
from medhall.export.llava import by_image, conversation

FORMAT = "llamafactory"
DATASET_INFO = "dataset_info.json"
MESSAGES = "conversations"
IMAGES = "images"
TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}


def sharegpt_records(rows: Iterable[dict[str, Any]], *, multi_turn: bool = False) -> Iterator[dict[str, Any]]:
    """ShareGPT records from view rows; ``<image>`` directly before the first question."""
    groups = by_image(rows) if multi_turn else ([r] for r in rows)
    for group in groups:
        first = group[0]
        yield {
            "id": first["image_id"] if multi_turn else first["qa_id"],
            MESSAGES: conversation(group, sep=""),
            IMAGES: [first["image"]],
        }


def dataset_info_entry(file_name: str) -> dict[str, Any]:
    """The ``dataset_info.json`` description of one exported file."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": MESSAGES, "images": IMAGES},
        "tags": dict(TAGS),
    }


def update_dataset_info(out_dir: PathLike, entries: dict[str, dict[str, Any]]) -> Path:
    """Add or replace ``entries`` in ``out_dir/dataset_info.json`` (atomically), keeping others."""
    path = Path(out_dir) / DATASET_INFO
    info = dict(read_json(path))
    info.update(entries)
    return write_json_file(path, dict(sorted(info.items())))


class LlamaFactorySink(JsonSink):
    """A ShareGPT JSON file; its ``dataset_info.json`` entry is added once the file is written."""

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        super().__exit__(exc_type, exc, tb)
        if exc is None and self._writer.written:
            path = self._writer.path
            update_dataset_info(path.parent, {path.stem: dataset_info_entry(path.name)})
        elif exc is None:  # an omitted empty file has no entry
            self.paths = [p for p in self.paths if p.name != DATASET_INFO]


def llamafactory_sink(
    out_dir: PathLike,
    *,
    name: str,
    split: str | None = None,
    image_root: PathLike | None = None,
    multi_turn: bool = False,
) -> LlamaFactorySink:
    """The sink that writes ``<name>_<split>.json`` and its ``dataset_info.json`` entry."""
    path = output_path(out_dir, name, split, ".json")
    records = functools.partial(sharegpt_records, multi_turn=multi_turn)
    sink = LlamaFactorySink(path, records, answered_only=True, by_image=multi_turn, image_root=image_root)
    sink.paths.append(Path(out_dir) / DATASET_INFO)
    return sink


def write_llamafactory(
    instructions: pa.Table | RowSource,
    images: pa.Table,
    out_dir: PathLike,
    *,
    name: str,
    split: str | None = None,
    image_root: PathLike | None = None,
    multi_turn: bool = False,
) -> list[Path]:
    """Write ``<name>_<split>.json`` and its ``dataset_info.json`` entry; returns both paths."""
    sink = llamafactory_sink(out_dir, name=name, split=split, image_root=image_root, multi_turn=multi_turn)
    return run_exports(instructions, images, [Job(sink)])
