"""Medical VQA items and the reading they share: the item model, rows of any file a benchmark
comes in (JSON(L), CSV/TSV, Parquet, plain pickles), the loading loop, the field helpers that
build open/closed and multiple-choice items, and what a model is shown (:func:`prompt_for`,
:func:`read_image_bytes`). The per-benchmark loaders are in :mod:`medhall.vqa.loaders`.

A loader returns a :class:`VQALoad`: the :class:`VQAItem` records it could read, the rows it
could not (``problems``: :class:`~medhall.sources.base.Rejected` with ``record_ref``,
``reason``, ``detail``, the project's quarantine shape) and the rows it left out on purpose
(``skipped``: a count per reason, e.g. SLAKE's non-English questions). A bad row never stops
a load; a path that does not exist raises :class:`FileNotFoundError`.

``item_id`` is ``"<benchmark>/<native id>"``: the dataset's own question id where it has one,
else ``h`` + 16 hex of a SHA-256 over (image, question, answer). Repeats of one id in a load
get ``~2``, ``~3``... so ids stay unique (and stable for the same file).

Parquet images (the hub's ``{"bytes", "path"}`` struct) are not loaded with the rows: the
item's ``image_ref`` is ``"<file>#<row>"`` and :func:`read_image_bytes` fetches the bytes.
"""

from __future__ import annotations

import io
import pickle
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
    "AnswerType",
    "EmbeddedImage",
    "VQAItem",
    "VQALoad",
    "prompt_for",
    "read_image_bytes",
]
