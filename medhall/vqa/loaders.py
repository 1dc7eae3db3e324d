"""Medical VQA benchmarks, read from a local path in the form their authors publish them.

Every loader returns a :class:`~medhall.vqa.data.VQALoad` (items, problems, skips; see
:mod:`medhall.vqa.data`, which holds the reading they share).

=================  ==========================================================================
benchmark          what is read (``docs/vqa.md`` has the field tables and where to get them)
=================  ==========================================================================
``vqa_rad``        ``VQA_RAD Dataset Public.json`` (``qid``, ``image_name``, ``question``,
                   ``answer``, ``answer_type`` OPEN/CLOSED, ``phrase_type``, ...); only the
                   test questions (``phrase_type`` ``test_*``) unless ``split=None``. The hub
                   Parquet export (``image``, ``question``, ``answer``) has no answer type:
                   a yes/no answer is closed, anything else open.
``pathvqa``        ``qas/<split>/<split>_qa.pkl`` (a list of ``{image, question, answer}``),
                   or the hub Parquet / a JSON(L) copy with those columns; yes/no is closed.
``slake``          ``Slake1.0/<split>.json`` (``qid``, ``img_name``, ``question``, ``answer``,
                   ``answer_type``, ``q_lang``, ``content_type``, ``modality``, ``location``);
                   English only (``q_lang == "en"``). Parquet copies with the same columns.
``pmc_vqa``        ``test.csv`` / ``test_clean.csv`` (``Figure_path``, ``Question``, ``Answer``,
                   ``Choice A`` .. ``Choice D``, ``Answer_label``); also the ``*_2.csv`` form
                   whose ``Answer`` is the letter. Parquet copies with the same columns.
``omnimedvqa``     ``QA_information/<access>/<dataset>.json`` (``question_id``, ``question``,
                   ``gt_answer``, ``option_A`` .. ``option_D``, ``image_path``,
                   ``modality_type``, ``question_type``, ``dataset``); a directory is read whole.
``llava_med_test`` LLaVA-Med's ``test.json`` (``id``, ``image``, ``conversations`` or its
                   misspelling ``conversatons``, ``answer_type`` OPEN/CLOSED).
=================  ==========================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medhall.sources.reading import Row, missing, text_or_none
from medhall.vqa.data import (
    CSV_SUFFIXES,
    JSON_SUFFIXES,
    PARQUET_SUFFIXES,
    PICKLE_SUFFIXES,
    Converted,
    Skip,
    VQALoad,
    _choice_item,
    _first,
    _image_field,
    _load,
    _meta,
    _open_closed_item,
    _yes_no_type,
)

_OPTION_PREFIX = re.compile(r"^\s*([A-Z])\s*[:.)]\s*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def load_vqa_rad(path: str | Path, *, split: str | None = "test") -> VQALoad:
    """VQA-RAD: the authors' ``VQA_RAD Dataset Public.json`` or the hub Parquet export.

    The public JSON holds every question; its test set is the rows whose ``phrase_type``
    starts with ``test`` (``test_freeform``, ``test_para``). With ``split="test"`` the others
    are skipped (counted as ``not_test_split``); ``split=None`` keeps all. Rows without a
    ``phrase_type`` (the hub copy, already split by file) are always kept. ``answer_type``
    (OPEN/CLOSED, any case) decides open/closed; without it, yes/no answers are closed.
    """

    def convert(row: Row) -> Converted:
        d = row.data
        phrase = text_or_none(d.get("phrase_type"))
        if split == "test" and phrase is not None and not phrase.lower().startswith("test"):
            return Skip("not_test_split")
        return _open_closed_item(
            row,
            "vqa_rad",
            native_id=d.get("qid"),
            image=_image_field(d, "image_name", "image"),
            question=d.get("question"),
            answer=d.get("answer"),
            answer_type=d.get("answer_type"),
            meta=_meta(d, ("question_type", "image_organ", "phrase_type", "qid_linked_id")),
        )

    return _load(path, JSON_SUFFIXES | PARQUET_SUFFIXES, convert)


def load_pathvqa(path: str | Path) -> VQALoad:
    """PathVQA: the authors' ``*_qa.pkl`` (list of ``{image, question, answer}``), the hub
    Parquet export or a JSON(L) copy. Yes/no answers are closed, all others open. The pkl's
    ``image`` is a bare name (``test_0262``); ``.jpg`` is appended as in ``images/<split>/``.
    """

    def convert(row: Row) -> Converted:
        d = row.data
        image = _image_field(d, "image")
        if isinstance(image, str) and image.strip() and not Path(image).suffix:
            image = f"{image.strip()}.jpg"
        answer = text_or_none(d.get("answer"))
        kind = None if answer is None else _yes_no_type(answer).upper()  # PathVQA's own rule
        return _open_closed_item(
            row, "pathvqa", native_id=_first(d, "qid", "id"), image=image, question=d.get("question"), answer=answer, answer_type=kind
        )

    return _load(path, PICKLE_SUFFIXES | PARQUET_SUFFIXES | JSON_SUFFIXES, convert)


def load_slake(path: str | Path) -> VQALoad:
    """SLAKE 1.0 (``train/validate/test.json`` or a Parquet copy), English questions only.

    A row whose ``q_lang`` is not ``en`` is skipped (``non_english``); a row without
    ``q_lang`` is kept unless its question has CJK characters.
    """

    def convert(row: Row) -> Converted:
        d = row.data
        lang = text_or_none(d.get("q_lang"))
        question = text_or_none(d.get("question")) or ""
        if (lang is not None and lang.lower() != "en") or (lang is None and _CJK.search(question)):
            return Skip("non_english")
        return _open_closed_item(
            row,
            "slake",
            native_id=d.get("qid"),
            image=_image_field(d, "img_name", "image"),
            question=d.get("question"),
            answer=d.get("answer"),
            answer_type=d.get("answer_type"),
            meta=_meta(d, ("img_id", "content_type", "modality", "location", "base_type")),
        )

    return _load(path, JSON_SUFFIXES | PARQUET_SUFFIXES, convert)


def _strip_option_prefix(letter: str, text: str) -> str:
    """``"A:CT scan "`` -> ``"CT scan"`` (PMC-VQA writes each choice with its own letter)."""
    m = _OPTION_PREFIX.match(text)
    return text[m.end() :].strip() if m and m.group(1) == letter else text.strip()


def load_pmc_vqa(path: str | Path) -> VQALoad:
    """PMC-VQA: ``test.csv`` / ``test_clean.csv`` (or a Parquet copy with their columns).

    Options are ``Choice A`` .. ``Choice D`` with their ``"A:"`` prefix removed. The answer
    letter is ``Answer_label``; in the ``*_2.csv`` form (no ``Answer_label``) ``Answer`` is the
    letter itself; otherwise ``Answer`` (the text) is matched to an option.
    """

    def convert(row: Row) -> Converted:
        d = row.data
        options = {}
        for letter in "ABCD":
            t = text_or_none(d.get(f"Choice {letter}"))
            if t is not None:
                options[letter] = _strip_option_prefix(letter, t)
        answer = text_or_none(d.get("Answer"))
        label = text_or_none(d.get("Answer_label"))
        if label is None and answer is not None and answer.upper() in options:
            label = answer.upper()
        return _choice_item(
            row,
            "pmc_vqa",
            native_id=d.get("index"),
            image=_image_field(d, "Figure_path", "image"),
            question=d.get("Question"),
            options=options,
            label=label.upper() if label else None,
            answer=answer,
            meta=_meta(d, ("split",)),
        )

    return _load(path, CSV_SUFFIXES | PARQUET_SUFFIXES, convert)


def load_omnimedvqa(path: str | Path) -> VQALoad:
    """OmniMedVQA: one ``QA_information/<access>/<dataset>.json`` or a directory of them.

    Options are ``option_A`` .. ``option_D`` (two to four are present); the label is the
    option equal to ``gt_answer``. ``modality_type`` (or the stray ``modality``),
    ``question_type`` and ``dataset`` go into ``meta``.
    """

    def convert(row: Row) -> Converted:
        d = row.data
        options = {k: t for k in "ABCD" if (t := text_or_none(d.get(f"option_{k}"))) is not None}
        meta = _meta(d, ("dataset", "question_type"))
        modality = _first(d, "modality_type", "modality")
        if modality is not None:
            meta["modality_type"] = modality
        return _choice_item(
            row,
            "omnimedvqa",
            native_id=d.get("question_id"),
            image=_image_field(d, "image_path", "image"),
            question=d.get("question"),
            options=options,
            label=None,
            answer=text_or_none(d.get("gt_answer")),
            meta=meta,
        )

    return _load(path, JSON_SUFFIXES | PARQUET_SUFFIXES, convert)


def load_llava_med_test(path: str | Path, *, benchmark: str = "llava_med_test") -> VQALoad:
    """LLaVA-Med's evaluation ``test.json``: ``id``, ``image``, ``answer_type`` and the turns.

    The turns are ``conversations`` or, as in some of LLaVA-Med's files, ``conversatons``.
    As LLaVA-Med's ``run_eval.py`` does, the question is turn 0 (``<image>`` removed) and the
    reference answer is turn 1. ``benchmark`` names the dataset the file holds (e.g. load
    LLaVA-Med's ``data_RAD/test.json`` with ``benchmark="vqa_rad"``).
    """

    def convert(row: Row) -> Converted:
        d = row.data
        turns = _first(d, "conversations", "conversatons")
        if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) for t in turns[:2]):
            return missing(row, "conversations")
        if text_or_none(d.get("answer_type")) is None:
            return missing(row, "answer_type")
        meta = {"turns_key": "conversatons"} if "conversations" not in d else {}
        return _open_closed_item(
            row,
            benchmark,
            native_id=d.get("id"),
            image=d.get("image"),
            question=turns[0].get("value"),
            answer=turns[1].get("value"),
            answer_type=d.get("answer_type"),
            meta=meta,
        )

    return _load(path, JSON_SUFFIXES, convert)


LOADERS: dict[str, Callable[[str | Path], VQALoad]] = {
    "vqa_rad": load_vqa_rad,
    "pathvqa": load_pathvqa,
    "slake": load_slake,
    "pmc_vqa": load_pmc_vqa,
    "omnimedvqa": load_omnimedvqa,
    "llava_med_test": load_llava_med_test,
}

_ALIASES = {"vqarad": "vqa_rad", "path_vqa": "pathvqa", "pvqa": "pathvqa", "slake1.0": "slake", "pmcvqa": "pmc_vqa", "omnimed_vqa": "omnimedvqa"}


def benchmark_key(name: str) -> str:
    """The :data:`LOADERS` key of benchmark ``name`` (any case, ``-`` for ``_``, common aliases
    such as ``vqarad`` or ``path-vqa``); ``ValueError`` for an unknown name."""
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in LOADERS:
        raise ValueError(f"unknown VQA benchmark {name!r}; known: {', '.join(LOADERS)}")
    return key


def load_benchmark(name: str, path: str | Path, **options: Any) -> VQALoad:
    """Load benchmark ``name`` (see :func:`benchmark_key`) from ``path``."""
    return LOADERS[benchmark_key(name)](path, **options)


__all__ = [
    "LOADERS",
    "benchmark_key",
    "load_benchmark",
    "load_llava_med_test",
    "load_omnimedvqa",
    "load_pathvqa",
    "load_pmc_vqa",
    "load_slake",
    "load_vqa_rad",
]
