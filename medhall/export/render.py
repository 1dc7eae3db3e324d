"""DICOM images as PNG for the exports: LLaVA, LLaMA-Factory, ``datasets`` and PIL open no DICOM.

:func:`dicom_pngs` writes each DICOM image of an images table once as a windowed 8-bit PNG,
rendered by :func:`medhall.images.dicom_to_png` (the rendering every later stage sees through
:func:`medhall.images.load_rgb`: modality LUT, the header's window or the 1st-99th
percentile, MONOCHROME1 inverted, middle frame). The PNG is named by the DICOM's content,
``<png_dir>/<sha256 of the DICOM file>.r<RENDER_VERSION>.png``, and written atomically (temp file + rename):
a rebuild, or a second export of the same images, finds it and neither renders nor writes
again, and a reader never sees half a file. :func:`with_pngs` adds the PNG paths to an images
table as the column :data:`PNG` (null for every other image), which the exporters write in
place of the DICOM's path (:func:`medhall.export.base.image_paths`).

A DICOM is an image whose ``format`` is ``DICOM`` (what ingest decoded), or, when ``format``
is unknown (not checked at ingest), whose path ends in ``.dcm`` / ``.dicom``; it must be on
disk (``image_path``). One that cannot be rendered now (moved, unreadable) keeps its own path
in the exports and is logged with the count.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from medhall.atomic import write_bytes
from medhall.ids import file_sha256

log = logging.getLogger(__name__)

#: The images-table column holding the rendered PNG's absolute path (null: not a DICOM).
PNG = "png_path"
#: The columns :func:`dicom_pngs` reads (those present).
COLUMNS = ("image_id", "image_path", "format", "sha256")
DICOM_SUFFIXES = (".dcm", ".dicom")

PathLike = str | os.PathLike[str]


def dicom_rows(images: pa.Table) -> pa.Array:
    """A boolean mask: the images that are DICOM files on disk (see the module docstring)."""
    n = images.num_rows
    if "image_path" not in images.column_names or n == 0:
        return pa.array([False] * n)
    path = images.column("image_path")
    fmt = images.column("format") if "format" in images.column_names else pa.nulls(n, pa.string())
    named = pc.or_(*(pc.ends_with(pc.utf8_lower(path), s) for s in DICOM_SUFFIXES))
    dicom = pc.if_else(pc.is_valid(fmt), pc.equal(pc.utf8_upper(fmt), "DICOM"), named)
    flat = pc.and_(pc.fill_null(dicom, False), pc.is_valid(path))
    return flat.combine_chunks() if isinstance(flat, pa.ChunkedArray) else flat


#: Bumped whenever the rendering (``medhall.images.dicom_to_png``) changes its pixels, so PNGs
#: rendered before are not reused.
RENDER_VERSION = 1


def png_name(sha256: str) -> str:
    return f"{sha256}.r{RENDER_VERSION}.png"


def render_png(source: PathLike, target: PathLike) -> Path:
    """``source`` (a DICOM) rendered to ``target`` unless ``target`` exists; atomically."""
    from medhall.images import dicom_to_png

    target = Path(target)
    if not target.is_file():
        write_bytes(target, dicom_to_png(source))
    return target


def dicom_pngs(images: pa.Table, png_dir: PathLike, *, workers: int | None = None) -> pa.Table:
    """``(image_id, png_path)`` for each DICOM image of ``images``, its PNG under ``png_dir``
    rendered now unless it is there already (by content). Images that fail are left out
    (logged). ``workers``: rendering threads (default up to 4)."""
    picked = images.filter(dicom_rows(images)).select([c for c in COLUMNS if c in images.column_names])
    if picked.num_rows == 0:
        return pa.table({"image_id": pa.array([], pa.string()), PNG: pa.array([], pa.string())})
    folder = Path(os.path.abspath(png_dir))
    rows = picked.to_pylist()
    failed: list[str] = []

    def one(r: dict) -> tuple[str, str | None]:
        try:
            sha = r.get("sha256") or file_sha256(r["image_path"])
            return r["image_id"], str(render_png(r["image_path"], folder / png_name(sha)))
        except Exception as e:  # noqa: BLE001 - the image keeps its own path, and the count is logged
            failed.append(f"{r['image_path']}: {type(e).__name__}: {e}")
            return r["image_id"], None

    threads = max(1, min(workers or min(4, os.cpu_count() or 1), len(rows)))
    if threads == 1:
        done = [one(r) for r in rows]
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            done = list(pool.map(one, rows))
    if failed:
        log.warning("export: %d DICOM image(s) could not be rendered to PNG and keep their own path, e.g. %s", len(failed), failed[0])
    rendered = dict(sorted((i, p) for i, p in done if p is not None))  # one row per image id
    return pa.table({"image_id": pa.array(list(rendered), pa.string()), PNG: pa.array(list(rendered.values()), pa.string())})


def with_pngs(images: pa.Table, png_dir: PathLike | None, *, workers: int | None = None) -> pa.Table:
    """``images`` with the column :data:`PNG`: the rendered PNG of each DICOM image (null for
    the others); unchanged when ``png_dir`` is None or the column is there already."""
    if png_dir is None or PNG in images.column_names:
        return images
    pngs = dicom_pngs(images, png_dir, workers=workers)
    lookup = pc.index_in(images.column("image_id"), value_set=pngs.column("image_id").combine_chunks())
    column = pngs.column(PNG).combine_chunks().take(lookup.combine_chunks() if isinstance(lookup, pa.ChunkedArray) else lookup)
    return images.append_column(PNG, column)


def png_column(images: pa.Table) -> pa.ChunkedArray | pa.Array | None:
    """The :data:`PNG` column of a view or images table, or None."""
    return images.column(PNG) if PNG in images.column_names else None


__all__ = ["PNG", "dicom_pngs", "dicom_rows", "png_column", "render_png", "with_pngs"]
