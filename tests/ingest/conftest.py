"""Fixtures for the ingest tests: real-format files and real images, written into tmp_path.

``make`` (a :class:`Maker`) writes the files: real PNG/JPEG images with Pillow, a real DICOM
(pydicom's ``CT_small.dcm``), a truncated PNG, a text file named ``.jpg``, JSON / JSONL with
raw (malformed or non-UTF-8) lines.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
RELEASE_DIR = REPO / ".." / "shared" / "data" / "medhalltune"


class Maker:
    """Writes fixture files under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def image(self, name: str, seed: int = 0, size: tuple[int, int] = (32, 24)) -> Path:
        """A small real image (distinct bytes per seed); format from the extension."""
        rng = np.random.default_rng(seed)
        arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        p = self.path(name)
        Image.fromarray(arr).save(p)
        return p

    def copy(self, src: Path, name: str) -> Path:
        p = self.path(name)
        shutil.copyfile(src, p)
        return p

    def truncated_png(self, name: str) -> Path:
        full = self.image(name + ".full.png", seed=99, size=(64, 64))
        data = full.read_bytes()
        full.unlink()
        p = self.path(name)
        p.write_bytes(data[: len(data) // 2])
        return p

    def text(self, name: str, content: str | bytes) -> Path:
        p = self.path(name)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
        return p

    def dicom(self, name: str = "ct.dcm", testfile: str = "CT_small.dcm") -> Path:
        from pydicom.data import get_testdata_file

        return self.copy(Path(get_testdata_file(testfile)), name)

    def jsonl(self, name: str, rows: Iterable[Any]) -> Path:
        """JSONL; a ``bytes`` item is written as a raw line (malformed / undecodable lines)."""
        p = self.path(name)
        with p.open("wb") as f:
            for r in rows:
                f.write(r if isinstance(r, bytes) else json.dumps(r).encode())
                f.write(b"\n")
        return p

    def json(self, name: str, obj: Any) -> Path:
        p = self.path(name)
        p.write_text(json.dumps(obj, indent=1), encoding="utf-8")
        return p


@pytest.fixture
def make(tmp_path: Path) -> Maker:
    return Maker(tmp_path)


def reasons_of(result: Any) -> dict[str, list[str]]:
    """Quarantine reason -> record_refs, from an IngestResult."""
    out: dict[str, list[str]] = {}
    for r in result.quarantine.to_pylist():
        out.setdefault(r["reason"], []).append(r["record_ref"])
    return out


@pytest.fixture
def reasons():
    return reasons_of


@pytest.fixture
def release_dir() -> Path:
    d = RELEASE_DIR.resolve()
    if not (d / "val_positive_qa-filtered.jsonl").exists():
        pytest.skip(f"../shared/data/medhalltune not present (a user's own clone): {d}")
    return d
