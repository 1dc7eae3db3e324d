"""The embedded sample corpus: entries, labels, captions, rendering and materialisation."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from medhall.sample import (
    BODY_PARTS,
    MODALITIES,
    load_entries,
    materialize,
    render,
)

ENTRIES = load_entries()
IDS = [e["sample_id"] for e in ENTRIES]
KEBAB = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
PACKAGES = {"pydicom", "pydicom-data", "scikit-image", "nibabel", "nilearn"}
LLAVA_KEYS = ["pair_id", "pmid", "fig_id", "fig_label", "fig_caption", "in_text_mention", "domain"]

#: Words that name each modality in a caption (case-insensitive substrings).
MODALITY_WORDS: dict[str, tuple[str, ...]] = {
    "CT": ("CT", "computed tomograph"),
    "MR": ("MR", "magnetic resonance"),
    "ultrasound": ("ultrasound", "sonograph", "echocardiog", "doppler"),
    "radiograph": ("radiograph", "x-ray"),
    "nuclear_medicine": ("scintigra", "nuclear medicine"),
    "PET": ("PET", "positron"),
    "fundus": ("fundus",),
    "histology": ("histolog", "immunohistochem", "stain"),
    "microscopy": ("microscop",),
    "phantom": ("phantom",),
    "other": (),
}


def sentences(text: str) -> list[str]:
    """Sentences of a caption: split after . ! ? followed by space and a capital or digit."""
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9'\"(])", text.strip()) if s]


def mentions_modality(caption: str, modality: str) -> bool:
    for word in MODALITY_WORDS[modality]:
        if word.isupper():  # an acronym: match as a whole word, case-sensitive
            if re.search(rf"\b{re.escape(word)}\b", caption):
                return True
        elif word.lower() in caption.lower():
            return True
    return False


# --------------------------------------------------------------------------- entries


def test_corpus_size_and_ids() -> None:
    assert len(ENTRIES) >= 24
    assert len(set(IDS)) == len(IDS), "sample_ids must be unique"
    for sample_id in IDS:
        assert KEBAB.match(sample_id), sample_id


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_entry_fields(entry: dict) -> None:
    assert entry["package"] in PACKAGES
    assert isinstance(entry["locator"], str) and entry["locator"]
    assert entry["frame"] is None or isinstance(entry["frame"], int)
    assert entry["modality"] in MODALITIES
    assert entry["body_part"] in BODY_PARTS
    assert entry["view"] is None or isinstance(entry["view"], str)
    findings = entry["findings"]
    assert isinstance(findings, list) and findings
    for finding in findings:
        assert isinstance(finding, str) and finding.strip() and finding == finding.lower(), finding
    assert isinstance(entry["license_note"], str) and entry["license_note"].strip()
    assert isinstance(entry.get("requires", []), list)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_caption(entry: dict) -> None:
    caption = entry["caption"]
    assert isinstance(caption, str) and caption.strip()
    assert len(sentences(caption)) >= 2, caption
    assert mentions_modality(caption, entry["modality"]), (entry["modality"], caption)


def test_modality_variety() -> None:
    modalities = {e["modality"] for e in ENTRIES}
    assert len(modalities) >= 6, modalities
    assert {"CT", "MR", "ultrasound", "radiograph", "fundus", "histology"} <= modalities


# --------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The corpus written twice into two fresh directories."""
    first = materialize(tmp_path_factory.mktemp("sample_a"))
    second = materialize(tmp_path_factory.mktemp("sample_b"))
    return first, second


def decode(path: Path) -> np.ndarray:
    """Pixels of a written image: pydicom for .dcm, Pillow for .png."""
    if path.suffix == ".dcm":
        import pydicom

        ds = pydicom.dcmread(path)
        assert int(ds.get("NumberOfFrames", 1) or 1) == 1
        return np.asarray(ds.pixel_array)
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode in ("L", "RGB")
        return np.asarray(image)


def records(captions: Path) -> list[dict]:
    return [json.loads(line) for line in captions.read_text(encoding="utf-8").splitlines()]


def test_captions_jsonl_layout(materialized: tuple[Path, Path]) -> None:
    captions, _ = materialized
    rows = records(captions)
    assert [r["pair_id"] for r in rows] == IDS
    by_id = {e["sample_id"]: e for e in ENTRIES}
    for row in rows:
        assert list(row)[: len(LLAVA_KEYS)] == LLAVA_KEYS
        entry = by_id[row["pair_id"]]
        assert row["fig_id"] == entry["sample_id"]
        assert row["pmid"] is None and row["in_text_mention"] is None
        assert row["fig_caption"] == entry["caption"]
        assert row["fig_label"] == f"{entry['modality']} {entry['body_part']}"
        assert set(row["domain"]) == {"chest_xray", "mri", "histology", "gross", "ct_scan"}
        assert row["domain"]["ct_scan"] == (entry["modality"] == "CT")
        assert row["domain"]["mri"] == (entry["modality"] == "MR")
        assert (row["modality"], row["body_part"], row["findings"]) == (
            entry["modality"],
            entry["body_part"],
            entry["findings"],
        )
        assert re.fullmatch(rf"images/{re.escape(entry['sample_id'])}\.(dcm|png)", row["image"])
        assert (captions.parent / row["image"]).is_file()


def test_every_image_decodes_to_a_real_picture(materialized: tuple[Path, Path]) -> None:
    captions, _ = materialized
    for row in records(captions):
        pixels = decode(captions.parent / row["image"])
        assert pixels.ndim in (2, 3), (row["pair_id"], pixels.shape)
        height, width = pixels.shape[:2]
        assert height >= 64 and width >= 64, (row["pair_id"], pixels.shape)
        assert pixels.std() > 0, f"{row['pair_id']} is a constant image"


def test_materialize_is_deterministic(materialized: tuple[Path, Path]) -> None:
    first, second = materialized
    names = sorted(p.name for p in (first.parent / "images").iterdir())
    assert names == sorted(p.name for p in (second.parent / "images").iterdir())
    assert len(names) == len(ENTRIES)
    assert first.read_bytes() == second.read_bytes()
    for name in names:
        a = (first.parent / "images" / name).read_bytes()
        b = (second.parent / "images" / name).read_bytes()
        assert a == b, name


def test_materialize_rerun_in_place_is_identical(materialized: tuple[Path, Path]) -> None:
    captions, _ = materialized
    root = captions.parent
    before = {p.name: p.read_bytes() for p in (root / "images").iterdir()}
    jsonl = captions.read_bytes()
    assert materialize(root) == captions
    assert captions.read_bytes() == jsonl
    assert {p.name: p.read_bytes() for p in (root / "images").iterdir()} == before


def test_render_dicom_returns_original_file_bytes() -> None:
    from pydicom.data import get_testdata_file

    entry = next(e for e in ENTRIES if e["locator"] == "CT_small.dcm")
    data, fmt = render(entry)
    assert fmt == "DICOM"
    assert data == Path(get_testdata_file("CT_small.dcm")).read_bytes()


def test_render_multiframe_dicom_gives_png_of_the_frame() -> None:
    from PIL import Image

    entry = next(e for e in ENTRIES if e["locator"] == "emri_small.dcm")
    data, fmt = render(entry)
    assert fmt == "PNG"
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (64, 64) and image.mode == "L"


def test_render_skimage_is_lossless() -> None:
    import skimage.data
    from PIL import Image

    entry = next(e for e in ENTRIES if e["locator"] == "retina")
    data, fmt = render(entry)
    assert fmt == "PNG"
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), skimage.data.retina())
