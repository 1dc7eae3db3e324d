"""The loading rules of the tools that read the exports, applied to exported files.

Each ``check_<format>`` returns the problems it found, one string per record (or file) that
the consumer would reject or fail on; an empty list means every record loads. The rules are
those of the consumers' own loaders:

LLaVA (``llava/train/train.py``, ``LazySupervisedDataset`` and ``preprocess``):
  the file is one JSON array (``json.load``); a record with an ``image`` opens
  ``Image.open(os.path.join(image_folder, record["image"])).convert("RGB")`` (``os.path.join``
  keeps an absolute path as is); ``conversations`` is a list of ``{"from", "value"}`` turns,
  ``from`` alternating ``human`` / ``gpt`` starting with ``human`` (``preprocess`` drops a
  first turn that is not ``human`` and asserts the alternation); the ``<image>`` tokens in the
  conversation equal the images of the record (one with ``image``, none without), or the
  model's image features and tokens do not match.

LLaMA-Factory (``data/README.md``, sharegpt format; ``data/loader.py``, ``data/converter.py``,
``data/mm_plugin.py``):
  ``dataset_dir/dataset_info.json`` names each dataset: ``file_name`` (relative to
  ``dataset_dir``, loaded with ``datasets.load_dataset("json", data_files=...)``),
  ``formatting: sharegpt``, ``columns`` ``messages`` / ``images`` naming the record's fields,
  ``tags`` ``role_tag`` / ``content_tag`` / ``user_tag`` / ``assistant_tag``; messages
  alternate user / assistant starting with the user, an even number of them (else "Invalid
  role tag" / "Invalid message count" and the record is dropped); the ``<image>`` tokens over
  all messages equal ``len(images)`` (``mm_plugin`` raises otherwise); each image is
  ``os.path.join(media_dir, path)`` when that is a file, else the path as written, and must
  open with PIL.

Parquet / the release JSONL (``datasets.load_dataset("parquet" / "json")``; the release's
readers, LLaVA-Med's ``model_vqa.py``, open ``os.path.join(image_folder, image)``): every file
loads with ``datasets`` (an empty file does not: "corresponds to no data"), and every
``image`` resolved against the image folder opens with PIL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_TOKEN = "<image>"
LLAMAFACTORY_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}


def opens(path: str) -> str | None:
    """None when PIL decodes the file, else why not."""
    try:
        with Image.open(path) as im:
            im.convert("RGB")
    except Exception as e:  # noqa: BLE001 - any failure is the consumer's failure
        return f"{type(e).__name__}: {e}"
    return None


def load_with_datasets(kind: str, path: Path, cache_dir: Path) -> tuple[int | None, str | None]:
    """``(rows, None)`` when ``datasets.load_dataset(kind, data_files=path)`` loads it, else ``(None, why)``."""
    import datasets

    try:
        ds = datasets.load_dataset(kind, data_files={"train": str(path)}, cache_dir=str(cache_dir))
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"
    return ds["train"].num_rows, None


def _alternates(turns: list[dict[str, Any]], role: str, user: str, assistant: str) -> bool:
    return bool(turns) and len(turns) % 2 == 0 and all(t.get(role) == (user if i % 2 == 0 else assistant) for i, t in enumerate(turns))


def check_llava(path: Path, image_folder: Path) -> list[str]:
    problems = []
    records = json.loads(path.read_text(encoding="utf-8"))  # LLaVA: json.load, one array
    if not isinstance(records, list):
        return [f"{path.name}: not a JSON array"]
    for r in records:
        turns = r.get("conversations")
        if not isinstance(turns, list) or not all(isinstance(t, dict) and set(t) >= {"from", "value"} for t in turns):
            problems.append(f"{r.get('id')}: conversations are not from/value turns")
            continue
        if not _alternates(turns, "from", "human", "gpt"):
            problems.append(f"{r.get('id')}: turns do not alternate human/gpt from human")
        tokens = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
        if tokens != (1 if "image" in r else 0):
            problems.append(f"{r.get('id')}: {tokens} <image> token(s) for {int('image' in r)} image(s)")
        if "image" in r and (why := opens(os.path.join(image_folder, r["image"]))):
            problems.append(f"{r.get('id')}: image {r['image']}: {why}")
    return problems


def check_llamafactory(dataset_dir: Path, media_dir: Path, cache_dir: Path) -> tuple[list[str], dict[str, int]]:
    """Problems, and the rows of each dataset of ``dataset_info.json`` as ``datasets`` loads them."""
    problems, rows = [], {}
    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    for name, entry in info.items():
        if entry.get("formatting") != "sharegpt":
            problems.append(f"{name}: formatting {entry.get('formatting')!r}")
        columns, tags = entry.get("columns", {}), entry.get("tags", {})
        if set(tags) != set(LLAMAFACTORY_TAGS):
            problems.append(f"{name}: tags {sorted(tags)}")
        role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
        user, assistant = tags.get("user_tag", "human"), tags.get("assistant_tag", "gpt")
        file = dataset_dir / entry["file_name"]
        n, why = load_with_datasets("json", file, cache_dir)
        if why:
            problems.append(f"{name}: datasets cannot load {entry['file_name']}: {why}")
            continue
        rows[name] = n
        for r in json.loads(file.read_text(encoding="utf-8")):
            messages, images = r.get(columns.get("messages", "conversations")), r.get(columns.get("images", "images")) or []
            if not isinstance(messages, list) or not _alternates(messages, role, user, assistant):
                problems.append(f"{name}/{r.get('id')}: invalid role tags or message count")
                continue
            tokens = sum(m[content].count(IMAGE_TOKEN) for m in messages)
            if tokens != len(images):
                problems.append(f"{name}/{r.get('id')}: {tokens} <image> token(s) for {len(images)} image(s)")
            for image in images:
                joined = os.path.join(media_dir, image)
                if why := opens(joined if os.path.isfile(joined) else image):
                    problems.append(f"{name}/{r.get('id')}: image {image}: {why}")
    return problems, rows


def check_image_column(records: list[dict[str, Any]], image_folder: Path, *, key: str = "image", label: str = "") -> list[str]:
    return [
        f"{label}{r.get('qa_id', r.get('question_id'))}: image {r[key]}: {why}"
        for r in records
        if (why := opens(os.path.join(image_folder, r[key])))
    ]
