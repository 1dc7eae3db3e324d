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
:func:`export_all` writes train and test for each format. docs/exports.md has examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from medhall.export.base import Exporter, PathLike, image_paths
from medhall.export.llamafactory import write_llamafactory
from medhall.export.llava import write_llava
from medhall.export.medhalltune import question_ids, with_question_ids, write_medhalltune
from medhall.export.parquet import write_parquet
from medhall.schema import SPLITS
from medhall.split import check_no_leak, in_split

EXPORTERS: dict[str, Exporter] = {
    "llava": write_llava,
    "llamafactory": write_llamafactory,
    "medhalltune": write_medhalltune,
    "parquet": write_parquet,
}
#: Options every writer that writes image paths understands.
PATH_FORMATS = ("llava", "llamafactory", "parquet")


def _formats(formats: Sequence[str] | None) -> list[str]:
    chosen = list(EXPORTERS) if formats is None else list(formats)
    unknown = [f for f in chosen if f not in EXPORTERS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; known: {', '.join(EXPORTERS)}")
    return chosen


def _options(fmt: str, image_root: PathLike | None, format_options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    opts: dict[str, Any] = {"image_root": image_root} if fmt in PATH_FORMATS else {}
    opts.update((format_options or {}).get(fmt, {}))
    return opts


def export_all(
    instructions: pa.Table,
    images: pa.Table,
    splits: pa.Table,
    out_dir: PathLike,
    formats: Sequence[str] | None = None,
    name: str = "medhall",
    *,
    image_root: PathLike | None = None,
    format_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, list[Path]]:
    """Write train and test files of ``instructions`` in each format under ``out_dir/<format>/``.

    ``instructions`` is exported as given: pass :func:`medhall.split.filtered` output for the
    QC-filtered dataset. The split is checked first (:func:`medhall.split.check_no_leak`
    raises on a leak or a pair whose image has no split). Release ``question_id`` values
    are assigned once over all splits. ``format_options``: extra keyword arguments per
    format, e.g. ``{"llava": {"multi_turn": True}}``. Returns ``{format: [paths]}``.
    """
    chosen = _formats(formats)
    check_no_leak(splits, instructions, images)
    table = with_question_ids(instructions) if "medhalltune" in chosen else instructions
    parts = {split: in_split(table, splits, split) for split in SPLITS}
    written: dict[str, list[Path]] = {}
    for fmt in chosen:
        opts = _options(fmt, image_root, format_options)
        folder = Path(out_dir) / fmt
        paths: list[Path] = []
        for split, part in parts.items():
            paths += EXPORTERS[fmt](part, images, folder, name=name, split=split, **opts)
        written[fmt] = list(dict.fromkeys(paths))  # a shared file (dataset_info.json) once
    return written


__all__ = [
    "EXPORTERS",
    "Exporter",
    "export_all",
    "image_paths",
    "question_ids",
    "with_question_ids",
    "write_llamafactory",
    "write_llava",
    "write_medhalltune",
    "write_parquet",
]
