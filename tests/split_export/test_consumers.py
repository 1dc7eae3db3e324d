"""Every export of the demo build loads in the tool it is for, by that tool's own rules.

The rules (LLaVA's ``LazySupervisedDataset`` / ``preprocess``, LLaMA-Factory's sharegpt
``dataset_info.json`` + converter + ``mm_plugin`` checks, ``datasets.load_dataset`` for Parquet
and JSON lines, LLaVA-Med's ``os.path.join(image_folder, image)`` for the release format) are
spelled out in :mod:`tests.split_export.consumers`. The demo build (the embedded sample corpus:
15 of its 28 images are DICOM) is built once per session by ``built_template``; its exports are
written with ``image_root`` unset, so a relative path is relative to the corpus folder (the
folder of ``captions.jsonl``), which is what ``image_folder`` / ``media_dir`` point at here,
and the release format's bare file names are relative to the corpus's ``images/`` folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medhall.export import export_all, write_llava
from medhall.export.render import PNG, dicom_pngs, png_name, with_pngs
from medhall.export.sql import export_stored
from medhall.images import dicom_image, load_rgb
from medhall.split import split_by_image

from .consumers import check_image_column, check_llamafactory, check_llava, load_with_datasets
from .synthetic import Dataset

DATASET = "sample-instruct"
SOURCE = "sample"


def _export_dir(root: Path) -> Path:
    versions = sorted((root / "exports" / DATASET).glob("v*"))
    assert versions, f"the demo build wrote no exports under {root / 'exports' / DATASET}"
    return versions[-1]


def _images(root: Path) -> pa.Table:
    [path] = sorted((root / "store" / SOURCE / "images").glob("v*/data.parquet"))[-1:]
    return pq.read_table(path)


@pytest.fixture(scope="module")
def demo(built_template: Path) -> dict:
    root = built_template
    images = _images(root)
    dicom = images.filter(pc.equal(images.column("format"), "DICOM"))
    assert dicom.num_rows > 0, "the sample corpus has DICOM images"
    return {"root": root, "exports": _export_dir(root), "corpus": root / "sample_corpus", "images": images, "dicom": dicom}


def test_every_export_of_the_demo_loads_in_its_consumer(demo: dict, tmp_path: Path) -> None:
    pytest.importorskip("datasets", reason="Hugging Face `datasets` is not installed (dev extra)")
    exports, corpus = demo["exports"], demo["corpus"]
    filtered = exports / "filtered"
    problems: list[str] = []
    counts: dict[str, int] = {}

    for path in sorted((filtered / "llava").glob("*.json")):
        problems += check_llava(path, image_folder=corpus)
        counts[f"llava/{path.stem}"] = len(json.loads(path.read_text(encoding="utf-8")))
        rows, why = load_with_datasets("json", path, tmp_path / "cache")
        problems += [f"llava/{path.name}: {why}"] if why else []

    lf_problems, lf_rows = check_llamafactory(filtered / "llamafactory", media_dir=corpus, cache_dir=tmp_path / "cache")
    problems += lf_problems
    assert set(lf_rows) == {f"{DATASET}_train", f"{DATASET}_test"}

    release_folder = corpus / "images"  # the release names images by file name
    for path in sorted((filtered / "medhalltune").glob("*.jsonl")):
        rows, why = load_with_datasets("json", path, tmp_path / "cache")
        problems += [f"{path.name}: {why}"] if why else []
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        problems += check_image_column(records, release_folder, label=f"{path.name}/")
        problems += [f"{path.name}/{r['question_id']}: text {r['text'][-20:]!r}" for r in records if not r["text"].endswith("\n<image>") or r["text"].count("<image>") != 1]

    parquet_files = sorted(exports.rglob("*.parquet"))
    for path in parquet_files:
        rows, why = load_with_datasets("parquet", path, tmp_path / "cache")
        if why:
            problems.append(f"{path.relative_to(exports)}: {why}")
            continue
        assert rows == pq.read_metadata(path).num_rows
        problems += check_image_column(pq.read_table(path).to_pylist(), corpus, label=f"{path.name}/")

    assert problems == [], f"{len(problems)} record(s) / file(s) the consumers reject, e.g. {problems[:3]}"
    assert counts[f"llava/{DATASET}_train"] == lf_rows[f"{DATASET}_train"] > 0
    assert counts[f"llava/{DATASET}_test"] == lf_rows[f"{DATASET}_test"] > 0
    # the documented two-split call works for the filtered set
    import datasets

    both = datasets.load_dataset("parquet", cache_dir=str(tmp_path / "cache"), data_files={
        "train": str(filtered / "parquet" / f"{DATASET}_train.parquet"), "test": str(filtered / "parquet" / f"{DATASET}_test.parquet")})
    assert both["train"].num_rows and both["test"].num_rows


def test_dicom_records_point_at_the_rendered_png_in_every_format(demo: dict) -> None:
    """A DICOM image's records name ``<home>/images/<source>/<sha256>.png`` (absolute); the others
    keep the path the source wrote (the release: its file name)."""
    exports, dicom, images = demo["exports"], demo["dicom"], demo["images"]
    folder = demo["root"] / "images" / SOURCE
    png_of = {r["image_id"]: str(folder / png_name(r["sha256"])) for r in dicom.to_pylist()}
    ref_of = {r["image_id"]: r["image_ref"] for r in images.to_pylist()}
    train = pq.read_table(exports / "filtered" / "parquet" / f"{DATASET}_train.parquet").to_pylist()
    assert {r["image"] for r in train if r["image_id"] in png_of} <= set(png_of.values())
    assert any(r["image_id"] in png_of for r in train) and any(r["image_id"] not in png_of for r in train)
    for r in train:
        assert r["image"] == png_of.get(r["image_id"], ref_of[r["image_id"]])
    by_qa = {r["qa_id"]: r["image"] for r in train}
    for rec in json.loads((exports / "filtered" / "llava" / f"{DATASET}_train.json").read_text()):
        assert rec["image"] == by_qa[rec["id"]]
    for rec in json.loads((exports / "filtered" / "llamafactory" / f"{DATASET}_train.json").read_text()):
        assert rec["images"] == [by_qa[rec["id"]]]
    release = [json.loads(line) for line in (exports / "filtered" / "medhalltune" / f"{DATASET}_train_positive_qa.jsonl").read_text().splitlines()]
    names = {Path(r).name for r in ref_of.values() if not r.endswith(".dcm")}
    assert {r["image"] for r in release} <= names | set(png_of.values())
    assert any(os.path.isabs(r["image"]) for r in release) and any(r["image"] in names for r in release)
    assert not any(str(r["image"]).endswith(".dcm") for r in release)


def test_the_png_is_the_ingest_rendering(demo: dict) -> None:
    folder = demo["root"] / "images" / SOURCE
    for r in demo["dicom"].to_pylist():
        png = folder / png_name(r["sha256"])
        with Image.open(png) as im:
            assert im.format == "PNG"
            assert np.array_equal(np.asarray(im), np.asarray(dicom_image(r["image_path"])))
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(load_rgb(r["image_path"])))
    assert not [p for p in folder.iterdir() if p.suffix != ".png"], "no temp file is left behind"


def test_a_rebuild_neither_renders_nor_writes_again(demo: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Content-addressed: the PNGs there are used as they are (the renderer is not even called)."""
    folder = tmp_path / "pngs"
    first = dicom_pngs(demo["images"], folder, workers=2)
    assert first.num_rows == demo["dicom"].num_rows
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}

    def boom(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("rendered again")

    monkeypatch.setattr("medhall.images.dicom_to_png", boom)
    again = dicom_pngs(demo["images"], folder)
    assert again.equals(first)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()} == stamps


def test_a_dicom_that_cannot_be_rendered_keeps_its_path(demo: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    one = demo["dicom"].slice(0, 1)
    gone = one.set_column(one.schema.get_field_index("image_path"), "image_path", pa.array([str(tmp_path / "gone.dcm")]))
    gone = gone.set_column(gone.schema.get_field_index("sha256"), "sha256", pa.array(["0" * 64]))
    table = with_pngs(gone, tmp_path / "pngs")
    assert table.column(PNG).to_pylist() == [None]
    assert "could not be rendered" in caplog.text


def test_export_all_and_export_stored_render_into_png_dir(demo: dict, tmp_path: Path) -> None:
    """The in-memory writers and the build's DuckDB path give the same files, DICOM included."""
    images = demo["images"]
    instr = pq.read_table(sorted((demo["root"] / "store" / DATASET / "instructions").glob("v*/data.parquet"))[-1])
    splits = split_by_image(images, test_images=6, seed=0)
    pngs = tmp_path / "pngs"
    export_all(instr, images, splits, tmp_path / "mem" / "filtered", name="d", png_dir=pngs, image_root=demo["corpus"])
    pq.write_table(images, tmp_path / "g.parquet")
    pq.write_table(instr, tmp_path / "i.parquet")
    written = export_stored(tmp_path / "i.parquet", tmp_path / "g.parquet", splits, tmp_path / "sql", name="d", png_dir=pngs, image_root=demo["corpus"], fractions=())
    for fmt, paths in written["filtered"].items():
        for p in paths:
            assert p.read_bytes() == (tmp_path / "mem" / "filtered" / fmt / p.name).read_bytes(), p.name
    records = json.loads((tmp_path / "sql" / "filtered" / "llava" / "d_train.json").read_text())
    dicom_paths = {str(pngs / png_name(s)) for s in demo["dicom"].column("sha256").to_pylist()}
    assert {r["image"] for r in records} & dicom_paths, "absolute PNG paths (outside image_root)"
    assert all(not os.path.isabs(r["image"]) for r in records if r["image"] not in dicom_paths), "relative to image_root"


# ----------------------------------------------------------------------------- empty files


def test_no_empty_file_the_subsets_have_no_test_file(data: Dataset, splits: pa.Table, tmp_path: Path) -> None:
    pytest.importorskip("datasets", reason="Hugging Face `datasets` is not installed (dev extra)")
    for name, table in (("i", data.instructions), ("g", data.images), ("v", data.verdicts)):
        pq.write_table(table, tmp_path / f"{name}.parquet")
    written = export_stored(tmp_path / "i.parquet", tmp_path / "g.parquet", splits, tmp_path / "out", verdicts=tmp_path / "v.parquet", name="mh")
    for subset, by_format in written.items():
        if subset != "filtered":
            assert [p.name for p in by_format["parquet"]] == [f"mh_{subset}_train.parquet"]
    on_disk = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert on_disk == sorted(p for by_format in written.values() for paths in by_format.values() for p in paths)
    assert not [p for p in on_disk if p.name.endswith("_test.parquet") and "subsets" in p.parts]
    for p in on_disk:
        if p.suffix == ".parquet":
            assert pq.read_metadata(p).num_rows > 0, p


def test_a_split_with_no_pair_writes_no_file(data: Dataset, tmp_path: Path) -> None:
    """export_all leaves out a file that would be empty (and its dataset_info entry); a single
    writer asked for one file still writes it (tests/split_export/test_exports.py)."""
    s = split_by_image(data.images, test_images=10, seed=1)
    test_ids = s.filter(pc.equal(s.column("split"), "test")).column("image_id")
    train_only = data.instructions.filter(pc.invert(pc.is_in(data.instructions.column("image_id"), value_set=test_ids.combine_chunks())))
    written = export_all(train_only, data.images, s, tmp_path, name="e")
    assert {fmt: [p.name for p in paths] for fmt, paths in written.items()} == {
        "llava": ["e_train.json"],
        "llamafactory": ["e_train.json", "dataset_info.json"],
        "medhalltune": ["e_train_positive_qa.jsonl", "e_train_negative_qa.jsonl"],
        "parquet": ["e_train.parquet"],
    }
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        p.relative_to(tmp_path) for paths in written.values() for p in paths
    )
    assert set(json.loads((tmp_path / "llamafactory" / "dataset_info.json").read_text())) == {"e_train"}
    [alone] = write_llava(train_only.slice(0, 0), data.images, tmp_path / "single", name="x", split="test")
    assert json.loads(alone.read_text()) == []


def test_which_images_are_rendered() -> None:
    """``format`` DICOM on disk; an unchecked image (no format) by its ``.dcm`` / ``.dicom`` name."""
    from medhall.export.render import dicom_rows

    table = pa.table({
        "image_id": list("abcdef"),
        "image_path": ["/x/a.dcm", "/x/b.png", "/x/c.DCM", "/x/d.jpg", None, "/x/f.dicom"],
        "format": ["DICOM", "PNG", None, None, "DICOM", None],
    })
    assert dicom_rows(table).to_pylist() == [True, False, True, False, False, True]
    assert dicom_rows(table.drop_columns(["format"])).to_pylist() == [True, False, True, False, False, True]
