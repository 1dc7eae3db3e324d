"""Exports of an instruction dataset for training and release: one module per format.

=================  ==========================================================  ==============
format             files (per split)                                            module
=================  ==========================================================  ==============
``llava``          ``<name>_<split>.json``                                      :mod:`.llava`
``llamafactory``   ``<name>_<split>.json`` + ``dataset_info.json``              :mod:`.llamafactory`
``medhalltune``    ``<name>_<split>_positive_qa.jsonl``, ``..._negative_...``   :mod:`.medhalltune`
``parquet``        ``<name>_<split>.parquet``                                   :mod:`.parquet`
=================  ==========================================================  ==============

Every writer has the signature ``write_<format>(instructions, images, out_dir, *, name,
split=None, ...) -> list[Path]``, streams batch by batch, and writes atomically.
:func:`export_all` writes train and test for each format, leaves out a file that would be
empty, and points DICOM images at a PNG rendering (:mod:`.render`). docs/exports.md has
examples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medhall.export.base import (
    Exporter,
    Job,
    PathLike,
    Sink,
    image_paths,
    run_exports,
)
from medhall.export.llamafactory import llamafactory_sink, write_llamafactory
from medhall.export.llava import llava_sink, write_llava
from medhall.export.medhalltune import (
    MedHallTuneSink,
    question_ids,
    release_keys,
    with_question_ids,
    write_medhalltune,
)
from medhall.export.parquet import parquet_sink, write_parquet
from medhall.export.render import dicom_pngs, with_pngs
from medhall.export.rows import ParquetSource, RowSource, TableSource, as_source
from medhall.schema import SPLITS
from medhall.split import check_no_leak, check_question_leak, leak_suspects, split_mask

EXPORTERS: dict[str, Exporter] = {
    "llava": write_llava,
    "llamafactory": write_llamafactory,
    "medhalltune": write_medhalltune,
    "parquet": write_parquet,
}
#: The sink behind each writer: ``<format>_sink(out_dir, *, name, split, **options) -> Sink``.
SINKS: dict[str, Callable[..., Sink]] = {
    "llava": llava_sink,
    "llamafactory": llamafactory_sink,
    "medhalltune": MedHallTuneSink,
    "parquet": parquet_sink,
}
#: Options every writer that writes image paths understands.
PATH_FORMATS = ("llava", "llamafactory", "parquet")


def chosen_formats(formats: Sequence[str] | None) -> list[str]:
    """``formats`` checked against :data:`EXPORTERS` (None: every format)."""
    chosen = list(EXPORTERS) if formats is None else list(formats)
    unknown = [f for f in chosen if f not in EXPORTERS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; known: {', '.join(EXPORTERS)}")
    return chosen


def sink_options(fmt: str, image_root: PathLike | None, format_options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """The keyword arguments of ``fmt``'s sink: ``image_root`` where it writes paths, plus its ``format_options``."""
    opts: dict[str, Any] = {"image_root": image_root} if fmt in PATH_FORMATS else {}
    opts.update((format_options or {}).get(fmt, {}))
    return opts


@dataclass
class ExportPlan:
    """What :func:`plan_exports` decided: the jobs for :func:`run_exports`, the extra
    ``question_id`` column they need, and each format's sinks."""

    jobs: list[Job] = field(default_factory=list)
    extra: dict[str, pa.Array] = field(default_factory=dict)
    sinks: dict[str, list[Sink]] = field(default_factory=dict)

    @property
    def written(self) -> dict[str, list[Path]]:
        """``{format: [paths]}``: the files the sinks will write; once run, those they wrote
        (a file that would be empty is left out)."""
        return {fmt: list(dict.fromkeys(p for s in sinks for p in s.paths)) for fmt, sinks in self.sinks.items()}


def _check_source_leaks(source: RowSource, keys: pa.Table, splits: pa.Table, images: pa.Table) -> None:
    """:func:`medhall.split.check_no_leak` over a source: keys for the id checks, questions
    read only for the pairs of images whose file name is in both splits."""
    check_no_leak(splits, keys)
    suspects = leak_suspects(splits, images)
    if suspects is not None:
        ids = suspects.column("image_id").combine_chunks()
        pairs = source.where_image(ids, ["image_id", "question", "qa_id"])
        if "qa_id" in keys.column_names and keys.num_rows < source.num_rows:  # only the exported pairs
            pairs = pairs.filter(pc.is_in(pairs.column("qa_id"), value_set=keys.column("qa_id").combine_chunks()))
        check_question_leak(pairs, suspects)


def plan_exports(
    source: pa.Table | RowSource,
    images: pa.Table,
    splits: pa.Table,
    out_dir: PathLike,
    formats: Sequence[str] | None = None,
    name: str = "medhall",
    *,
    image_root: PathLike | None = None,
    format_options: Mapping[str, Mapping[str, Any]] | None = None,
    mask: np.ndarray | None = None,
    keys: pa.Table | None = None,
    omit_empty: bool = True,
) -> ExportPlan:
    """:func:`export_all` without writing: check the split, number the release questions and
    return the jobs. ``mask`` selects the exported rows of ``source`` (None: all), so several
    plans over one source (the QC-filtered set, each ablation subset) run in one
    :func:`run_exports` and share its passes over the data. ``keys``: the source's key
    columns (``qa_id``, ``image_id``, and ``kind``, ``source_qa_id`` for the release format)
    when the caller has them already (read from the source otherwise). ``omit_empty``: a file
    that gets no row is not written (:class:`medhall.export.base.Sink`). DICOM images are
    written as the PNG in ``images``' ``png_path`` column when it has one
    (:func:`medhall.export.render.with_pngs`; :func:`export_all` adds it)."""
    chosen = chosen_formats(formats)
    source = as_source(source)
    if keys is None:
        keys = source.read([c for c in ("qa_id", "image_id", "kind", "source_qa_id", "question_id") if c in source.column_names])
    chosen_keys = keys if mask is None else keys.filter(mask)
    _check_source_leaks(source, chosen_keys, splits, images)
    plan = ExportPlan()
    if "medhalltune" in chosen:
        plan.extra = release_keys(source, mask, keys=keys)
    split_masks = {split: split_mask(keys, splits, split) for split in SPLITS}
    if mask is not None:
        split_masks = {split: m & mask for split, m in split_masks.items()}
    for fmt in chosen:
        opts = sink_options(fmt, image_root, format_options)
        folder = Path(out_dir) / fmt
        plan.sinks[fmt] = []
        for split, m in split_masks.items():
            sink = SINKS[fmt](folder, name=name, split=split, **opts)
            sink.omit_empty = omit_empty
            plan.jobs.append(Job(sink, m))
            plan.sinks[fmt].append(sink)
    return plan


def export_all(
    instructions: pa.Table | RowSource,
    images: pa.Table,
    splits: pa.Table,
    out_dir: PathLike,
    formats: Sequence[str] | None = None,
    name: str = "medhall",
    *,
    image_root: PathLike | None = None,
    format_options: Mapping[str, Mapping[str, Any]] | None = None,
    png_dir: PathLike | None = None,
) -> dict[str, list[Path]]:
    """Write train and test files of ``instructions`` in each format under ``out_dir/<format>/``.

    ``instructions`` is exported as given: pass :func:`medhall.split.filtered` output for the
    QC-filtered dataset (or a :class:`medhall.export.base.ParquetSource` to stream a file).
    The split is checked first (:func:`medhall.split.check_no_leak` raises on a leak or a pair
    whose image has no split). Release ``question_id`` values are assigned once over all
    splits. ``format_options``: extra keyword arguments per format, e.g.
    ``{"llava": {"multi_turn": True}}``. Returns ``{format: [paths]}``: the files written; a
    file that would hold no row (a split with no pair) is not written, since
    ``datasets.load_dataset`` refuses an empty file. Every file is streamed: one pass over the
    pairs per output order, all files committed together. DICOM images are rendered once to
    PNG under ``png_dir`` (default ``out_dir/images``; see :mod:`medhall.export.render`) and
    every format points at the PNG.
    """
    source = as_source(instructions)
    images = with_pngs(images, png_dir if png_dir is not None else Path(out_dir) / "images")
    plan = plan_exports(source, images, splits, out_dir, formats, name, image_root=image_root, format_options=format_options)
    run_exports(source, images, plan.jobs, extra=plan.extra)
    return plan.written


__all__ = [
    "EXPORTERS",
    "SINKS",
    "ExportPlan",
    "Exporter",
    "Job",
    "ParquetSource",
    "Sink",
    "TableSource",
    "export_all",
    "plan_exports",
    "run_exports",
    "image_paths",
    "question_ids",
    "with_question_ids",
    "write_llamafactory",
    "write_llava",
    "write_medhalltune",
    "write_parquet",
    "dicom_pngs",
    "with_pngs",
]
