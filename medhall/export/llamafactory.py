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

Other entries in an existing ``dataset_info.json`` are kept. Point LLaMA-Factory's
``dataset_dir`` at ``out_dir`` and its ``media_dir`` at the images root when paths are
relative (see :func:`medhall.export.base.image_paths`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from medhall.export.base import (
    PathLike,
    iter_records,
    output_path,
    read_json,
    write_json_file,
    write_json_records,
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


def write_llamafactory(
    instructions: pa.Table,
    images: pa.Table,
    out_dir: PathLike,
    *,
    name: str,
    split: str | None = None,
    image_root: PathLike | None = None,
    multi_turn: bool = False,
) -> list[Path]:
    """Write ``<name>_<split>.json`` and its ``dataset_info.json`` entry; returns both paths."""
    path = output_path(out_dir, name, split, ".json")
    rows = iter_records(instructions, images, image_root=image_root, answered_only=True)
    write_json_records(path, sharegpt_records(rows, multi_turn=multi_turn))
    info = update_dataset_info(out_dir, {path.stem: dataset_info_entry(path.name)})
    return [path, info]
