"""Stable content-hash identifiers.

Every id is ``<prefix>_<16 hex>``: the first 64 bits of a SHA-256 over a canonical JSON
encoding of the parts that define the thing. The same content gives the same id in every
run and on every machine, so resuming is a set difference and joins are exact.

- ``image_id``: the image's bytes when they could be read, else its reference (path as the
  source wrote it); see :func:`image_id`.
- ``qa_id``: image_id + question + answer.
- ``run_id``: the stage name, its config and the fingerprints of its inputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

ID_HEX = 16


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the input of every content hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def content_id(prefix: str, *parts: Any) -> str:
    """``prefix_`` + 16 hex chars of the SHA-256 of the canonical JSON of ``parts``."""
    return f"{prefix}_{sha256_hex(canonical_json(list(parts)))[:ID_HEX]}"


def image_id(*, sha256: str | None = None, ref: str | None = None) -> str:
    """Id of an image: from its content hash when the bytes were read, else from its reference.

    Two files with the same bytes get the same id (that is how duplicates are found). An
    image known only by name (e.g. the MedHallTune release, whose images live on the hub)
    gets an id from the bare file name, so the positive and negative files of one release
    agree on it.
    """
    if sha256:
        return f"img_{sha256[:ID_HEX]}"
    if not ref:
        raise ValueError("image_id needs the image's sha256 or its reference")
    return content_id("img", "ref", ref.replace("\\", "/").rsplit("/", 1)[-1])


def qa_id(image_id_: str, question: str, answer: str | None) -> str:
    return content_id("qa", image_id_, question.strip(), (answer or "").strip())


def run_id(stage: str, config: Any, inputs: list[str] | tuple[str, ...] = ()) -> str:
    return content_id("run", stage, config, sorted(inputs))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_fingerprint(path: str | Path, *, absent: str | None = None) -> str:
    """A file's SHA-256; a directory's listing (names, sizes, mtimes) hashed; for a path that
    is neither, ``absent`` (default: ``name:<path>``, the name standing for a hub model)."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    if p.is_dir():
        listing = sorted((str(c.relative_to(p)), c.stat().st_size, c.stat().st_mtime_ns) for c in p.rglob("*") if c.is_file())
        return sha256_hex(canonical_json(listing))
    return f"name:{path}" if absent is None else absent
