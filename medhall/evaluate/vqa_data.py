"""Medical VQA benchmarks, read from a local path in the form their authors publish them.

Every loader returns a :class:`VQALoad`: the :class:`VQAItem` records it could read, the
rows it could not (``problems``: :class:`~medhall.sources.base.Rejected` with ``record_ref``,
``reason``, ``detail``, the project's quarantine shape) and the rows it left out on purpose
(``skipped``: a count per reason, e.g. SLAKE's non-English questions). A bad row never stops
a load; a path that does not exist raises :class:`FileNotFoundError`.

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

``item_id`` is ``"<benchmark>/<native id>"``: the dataset's own question id where it has one,
else ``h`` + 16 hex of a SHA-256 over (image, question, answer). Repeats of one id in a load
get ``~2``, ``~3``... so ids stay unique (and stable for the same file).

Parquet images (the hub's ``{"bytes", "path"}`` struct) are not loaded with the rows: the
item's ``image_ref`` is ``"<file>#<row>"`` and :func:`read_image_bytes` fetches the bytes.
"""

from __future__ import annotations

import io
import pickle
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

from medhall.ids import content_id
from medhall.sources.base import Rejected
from medhall.sources.reading import (
    Row,
    file_label,
    id_or_none,
    iter_json_rows,
    missing,
    raw_of,
    strip_image_token,
    text_or_none,
)

AnswerType = Literal["open", "closed", "choice"]
ANSWER_TYPES: tuple[AnswerType, ...] = ("open", "closed", "choice")

JSON_SUFFIXES = frozenset({".json", ".jsonl"})
CSV_SUFFIXES = frozenset({".csv", ".tsv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle"})

#: Appended to a multiple-choice prompt after the lettered options (LLaVA-1.5's wording for
#: its multiple-choice benchmarks; PMC-VQA's own evaluation also lists the lettered options).
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."

YES_NO = frozenset({"yes", "no"})
_OPTION_PREFIX = re.compile(r"^\s*([A-Z])\s*[:.)]\s*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


@dataclass(frozen=True)
class VQAItem:
    """One benchmark question with its reference answer.

    ``answer_type`` is ``open``, ``closed`` or ``choice``. For ``choice`` items ``options``
    maps option letters (``"A"``...) to their text, ``answer_label`` is the correct letter
    and ``answer`` the correct option's text. ``image_ref`` is the image path as the dataset
    writes it (relative to the dataset's image folder) or ``"<parquet file>#<row>"``.
    ``meta`` keeps the dataset's other fields (modality, organ, question type...).
    """

    benchmark: str
    item_id: str
    image_ref: str
    question: str
    answer: str
    answer_type: AnswerType
    options: dict[str, str] | None = None
    answer_label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class VQALoad(NamedTuple):
    """What a loader read: items, rows it could not read, and rows it left out (by reason)."""

    items: list[VQAItem]
    problems: list[Rejected]
    skipped: dict[str, int]


@dataclass(frozen=True)
class Skip:
    """A row left out on purpose (not an error): counted in :attr:`VQALoad.skipped`."""

    reason: str


@dataclass(frozen=True)
class EmbeddedImage:
    """An image stored inside a Parquet file (the hub's ``{"bytes", "path"}`` struct)."""

    file: str  # absolute path of the Parquet file
    row: int  # 0-based row in the file
    column: str  # the struct column holding the bytes
    name: str | None  # the struct's ``path`` (often just a file name)

    @property
    def ref(self) -> str:
        return f"{self.file}#{self.row}"


Converted = VQAItem | Rejected | Skip
Converter = Callable[[Row], Converted]


# --------------------------------------------------------------------------------------------
# Reading rows of any supported file


def _files(path: Path, suffixes: frozenset[str]) -> list[Path]:
    """The file itself, or every file with an accepted suffix under a directory (sorted)."""
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise FileNotFoundError(f"{path} holds no file ending in {', '.join(sorted(suffixes))}")
    return found


def _rows(path: Path) -> Iterator[Row | Rejected]:
    """Rows of one file, by its suffix; unreadable content becomes a ``Rejected``."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        from medhall.sources.generic import iter_csv_rows

        return iter_csv_rows(path, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix in PARQUET_SUFFIXES:
        return _iter_parquet_rows(path)
    if suffix in PICKLE_SUFFIXES:
        return _iter_pickle_rows(path)
    return iter_json_rows(path)


def _image_columns(schema: Any) -> list[str]:
    """Struct columns with a binary ``bytes`` child: images embedded in a Parquet file."""
    import pyarrow as pa

    cols = []
    for f in schema:
        if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0:
            cols.append(f.name)
    return cols


def _iter_parquet_rows(path: Path) -> Iterator[Row | Rejected]:
    """Rows of a Parquet file without image bytes: an image struct becomes an EmbeddedImage."""
    import pyarrow.parquet as pq

    label = file_label(path)
    try:
        pf = pq.ParquetFile(path)
        images = _image_columns(pf.schema_arrow)
        has_path = {c: pf.schema_arrow.field(c).type.get_field_index("path") >= 0 for c in images}
        columns = [f.name for f in pf.schema_arrow if f.name not in images]
        columns += [f"{c}.path" for c in images if has_path[c]]
        batches = pf.iter_batches(columns=columns)
    except Exception as e:  # noqa: BLE001 - an unreadable file is one problem
        yield Rejected(label, "unreadable", f"cannot read Parquet {path}: {e}")
        return
    n = 0
    for batch in batches:
        for values in batch.to_pylist():
            for c in images:
                struct = values.get(c) or {}
                values[c] = EmbeddedImage(str(path.resolve()), n, c, text_or_none(struct.get("path")))
            yield Row(f"{label}#{n}", values, None)
            n += 1


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers only: a pickle naming any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain lists/dicts of text are read")


def _iter_pickle_rows(path: Path) -> Iterator[Row | Rejected]:
    """Rows of a pickled list of dicts (PathVQA's ``*_qa.pkl``), read without running code."""
    label = file_label(path)
    try:
        data = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as e:  # noqa: BLE001 - unreadable pickle is one problem
        yield Rejected(label, "unreadable", f"cannot read pickle {path}: {e}")
        return
    if not isinstance(data, list):
        yield Rejected(label, "bad_value", f"{path}: expected a list of records, got {type(data).__name__}")
        return
    for i, rec in enumerate(data):
        ref = f"{label}#{i}"
        if isinstance(rec, dict):
            yield Row(ref, rec, None)
        else:
            yield Rejected(ref, "bad_value", f"expected a dict, got {type(rec).__name__}")


# --------------------------------------------------------------------------------------------
# The loading loop shared by every benchmark


def _load(path: str | Path, suffixes: frozenset[str], convert: Converter) -> VQALoad:
    """Convert every row of every file; collect problems and skips; make ids unique."""
    items: list[VQAItem] = []
    problems: list[Rejected] = []
    skipped: Counter[str] = Counter()
    for file in _files(Path(path), suffixes):
        for row in _rows(file):
            out = row if isinstance(row, Rejected) else _convert_guarded(convert, row)
            if isinstance(out, VQAItem):
                items.append(out)
            elif isinstance(out, Skip):
                skipped[out.reason] += 1
            else:
                problems.append(out)
    return VQALoad(_unique_ids(items), problems, dict(skipped))


def _convert_guarded(convert: Converter, row: Row) -> Converted:
    try:
        return convert(row)
    except Exception as e:  # noqa: BLE001 - one bad row must not stop a load
        return Rejected(row.ref, "bad_value", f"{type(e).__name__}: {e}", raw=raw_of(row))


def _unique_ids(items: list[VQAItem]) -> list[VQAItem]:
    """Suffix repeats of an id with ``~2``, ``~3``... (first occurrence keeps the bare id)."""
    seen: Counter[str] = Counter()
    out = []
    for item in items:
        seen[item.item_id] += 1
        k = seen[item.item_id]
        out.append(item if k == 1 else replace(item, item_id=f"{item.item_id}~{k}", meta={**item.meta, "duplicate_of": item.item_id}))
    return out


# --------------------------------------------------------------------------------------------
# Field helpers


def _item_id(benchmark: str, native: Any, image_ref: str, question: str, answer: str) -> str:
    """``benchmark/<native id>``, or ``benchmark/h<hash>`` of the content when there is none."""
    nid = id_or_none(native)
    if nid is None:
        nid = "h" + content_id("vqa", image_ref, question, answer).split("_", 1)[1]
    return f"{benchmark}/{nid}"


def _image(value: Any) -> tuple[str | None, dict[str, Any]]:
    """The image reference of a row's image field and the meta it adds."""
    if isinstance(value, EmbeddedImage):
        meta = {"image_parquet": {"file": value.file, "row": value.row, "column": value.column}}
        if value.name:
            meta["image_name"] = value.name
        return value.ref, meta
    if isinstance(value, dict):  # a struct read some other way
        return text_or_none(value.get("path")), {}
    return text_or_none(value), {}


def _first(d: Mapping[str, Any], *keys: str) -> Any:
    """The value of the first key present (and not None) in ``d``."""
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def _image_field(d: Mapping[str, Any], *keys: str) -> Any:
    """An image embedded in the row (Parquet) if there is one, else the first of ``keys``."""
    embedded = next((v for v in d.values() if isinstance(v, EmbeddedImage)), None)
    return embedded if embedded is not None else _first(d, *keys)


def _meta(d: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: d[k] for k in keys if d.get(k) is not None}


def _yes_no_type(answer: str) -> AnswerType:
    """``closed`` for a yes/no answer, else ``open`` (PathVQA's rule, and the hub copies')."""
    return "closed" if answer.strip().lower() in YES_NO else "open"


def _declared_type(value: Any) -> AnswerType | None:
    """OPEN / CLOSED as the datasets write them (any case, stray spaces); None otherwise."""
    s = (text_or_none(value) or "").upper()
    if s in ("OPEN", "OTHER", "NUMBER"):
        return "open"
    if s in ("CLOSED", "CLOSE", "YES/NO"):
        return "closed"
    return None


def _required(row: Row, **fields: Any) -> Rejected | None:
    """A ``missing_field`` problem naming the first empty field, or None."""
    for name, value in fields.items():
        if value is None:
            return missing(row, name)
    return None


def _open_closed_item(
    row: Row,
    benchmark: str,
    *,
    native_id: Any,
    image: Any,
    question: Any,
    answer: Any,
    answer_type: Any = None,
    meta: dict[str, Any] | None = None,
) -> VQAItem | Rejected:
    """An open/closed item; the type from ``answer_type`` when given, else yes/no -> closed."""
    image_ref, image_meta = _image(image)
    q = strip_image_token(question) if isinstance(question, str) else text_or_none(question)
    a = text_or_none(answer)
    problem = _required(row, image=image_ref, question=q or None, answer=a)
    if problem is not None:
        return problem
    assert image_ref is not None and q and a is not None
    extra = dict(meta or {})
    if answer_type is None:
        kind = _yes_no_type(a)
        extra["answer_type_inferred"] = True
    else:
        declared = _declared_type(answer_type)
        if declared is None:
            return Rejected(row.ref, "bad_value", f"answer_type {answer_type!r} is not OPEN or CLOSED", raw=raw_of(row))
        kind = declared
    return VQAItem(benchmark, _item_id(benchmark, native_id, image_ref, q, a), image_ref, q, a, kind, meta={**extra, **image_meta})


# --------------------------------------------------------------------------------------------
# Benchmarks


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


def _choice_item(
    row: Row,
    benchmark: str,
    *,
    native_id: Any,
    image: Any,
    question: Any,
    options: dict[str, str],
    label: str | None,
    answer: str | None,
    meta: dict[str, Any],
) -> VQAItem | Rejected:
    """A multiple-choice item; the label from ``label``, else the option equal to ``answer``."""
    image_ref, image_meta = _image(image)
    q = text_or_none(question)
    problem = _required(row, image=image_ref, question=q, options=options or None)
    if problem is not None:
        return problem
    assert image_ref is not None and q is not None
    if label is None and answer is not None:
        label = _label_of(answer, options)
    if label not in options:
        what = f"answer label {label!r}" if label is not None else f"answer {answer!r}"
        return Rejected(row.ref, "bad_value", f"{what} matches none of the options {sorted(options)}", raw=raw_of(row))
    text = options[label]
    item_id = _item_id(benchmark, native_id, image_ref, q, text)
    return VQAItem(benchmark, item_id, image_ref, q, text, "choice", dict(options), label, {**meta, **image_meta})


def _label_of(answer: str, options: Mapping[str, str]) -> str | None:
    """The letter whose option text equals ``answer`` (exactly, then ignoring case)."""
    a = answer.strip()
    for match in (lambda t: t == a, lambda t: t.casefold() == a.casefold()):
        hits = [k for k, t in options.items() if match(t)]
        if len(hits) == 1:
            return hits[0]
    return None


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


# --------------------------------------------------------------------------------------------
# What a model is asked, and its image


def prompt_for(item: VQAItem, *, choice_instruction: str = CHOICE_INSTRUCTION) -> str:
    """The text a model is asked: the question; for multiple choice, the question, then one
    ``"A. <option>"`` line per option, then ``choice_instruction`` (empty string: none)."""
    if item.answer_type != "choice" or not item.options:
        return item.question
    lines = [item.question, *(f"{k}. {t}" for k, t in item.options.items())]
    if choice_instruction:
        lines.append(choice_instruction)
    return "\n".join(lines)


def read_image_bytes(item: VQAItem, image_root: str | Path | None = None) -> bytes:
    """The item's image bytes: from its Parquet row, or the file ``image_root / image_ref``."""
    embedded = item.meta.get("image_parquet")
    if embedded:
        return _parquet_image_bytes(embedded["file"], int(embedded["row"]), embedded["column"])
    p = Path(item.image_ref)
    if image_root is not None and not p.is_absolute():
        p = Path(image_root) / p
    return p.read_bytes()


def _parquet_image_bytes(file: str, row: int, column: str) -> bytes:
    """Bytes of one embedded image, reading only the row group that holds it."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(file)
    start = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if row < start + n:
            struct = pf.read_row_group(g, columns=[f"{column}.bytes"]).column(column)[row - start].as_py()
            data = (struct or {}).get("bytes")
            if data is None:
                raise ValueError(f"{file} row {row}: no image bytes in column {column!r}")
            return data
        start += n
    raise IndexError(f"{file} has {start} rows; no row {row}")


__all__ = [
    "ANSWER_TYPES",
    "CHOICE_INSTRUCTION",
    "LOADERS",
    "AnswerType",
    "EmbeddedImage",
    "VQAItem",
    "VQALoad",
    "benchmark_key",
    "load_benchmark",
    "load_llava_med_test",
    "load_omnimedvqa",
    "load_pathvqa",
    "load_pmc_vqa",
    "load_slake",
    "load_vqa_rad",
    "prompt_for",
    "read_image_bytes",
]
