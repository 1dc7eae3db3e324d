"""The ingest pipeline: one path from any adapter to the ``images``, ``instructions`` and
``quarantine`` tables.

Steps (docs/ingest.md has the full rules):

1. Read every file with the adapter. A :class:`~medhall.sources.base.Rejected` becomes a
   quarantine row. A record whose source id repeats within one file is dropped when it is
   identical to the first (counted) and quarantined as ``duplicate_id`` when it differs. A QA
   pair with an empty question is quarantined (``missing_field``); a caption-only record with
   an empty caption is quarantined (``empty_caption``). A record whose caption addresses a
   model (:func:`medhall.qc.rules.find_injection`: "ignore previous instructions", role tags,
   ...) is quarantined (``prompt_injection``), and so is a QA pair whose question or answer
   does (the rest of its record is kept).
2. Resolve each ``image_ref`` against ``images_dir`` (default: the input file's folder). A ref
   that resolves (symlinks followed) outside that root is quarantined (``outside_root``)
   unless ``allow_outside_root``. Records naming the same file merge: QA pairs concatenated,
   the first non-empty caption, modality and body part win.
3. Check every distinct file once, concurrently (:func:`medhall.images.check_image`: read,
   hash, full decode), within the limits: regular files only (``special_file``), at most
   ``max_image_bytes`` (``file_too_large``), at most ``max_image_pixels`` declared by the
   header, checked before decoding (``too_many_pixels``). A corrupt image quarantines its
   records (``corrupt_image``). A missing one quarantines them (``missing_image``) unless the
   adapter has ``images_optional`` (or ``require_images=False``): then the image row is kept
   with ``image_status = "missing"``, no path, and an id from the file name.
4. ``image_id`` comes from the bytes' SHA-256. A later file with the same bytes as a kept one
   is quarantined as ``duplicate_image`` (the detail names the kept id) and its QA pairs move
   to the kept image, so nothing is lost.
5. Modality and body part: the source's words normalised, else the DICOM header, else the
   caption keyword rule (:mod:`medhall.sources.infer`), else ``unknown``.
6. Instructions get ``qa_id = hash(image_id, question, answer)``. Identical pairs collapse to
   one (counted). A pair without an answer is dropped (counted) when the same image has the
   same question with an answer (e.g. the MedHallTune bare ``*_qa.jsonl`` files read together
   with the ``val_*`` files that carry the ground truth).

One module on purpose (about 780 lines): the six steps are one pass over one shared state (the
groups of records per image file, the quarantine, the summary counters), and each rule above
is easier to check against its neighbours when they sit together.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from medhall import schema
from medhall.ids import content_id, image_id, qa_id
from medhall.ids import run_id as make_run_id
from medhall.images import (
    FILE_TOO_LARGE,
    SPECIAL_FILE,
    TOO_MANY_PIXELS,
    ImageInfo,
    ImageProblem,
    check_image,
    file_problem,
    limits,
)
from medhall.qc.rules import find_injection
from medhall.sources.base import QA, Adapter, Rejected, SourceRecord, clip_raw
from medhall.sources.infer import resolve_body_part, resolve_modality

try:  # a dependency of prefect; the standard library is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

STAGE = "ingest"
OUTSIDE_ROOT = "outside_root"
PROMPT_INJECTION = "prompt_injection"
CHECK_CHUNK = 64  # files per worker task: keeps thread overhead small on 100k images


@dataclass
class IngestSummary:
    """Counts of one ingest run (what the CLI prints and the manifest can keep)."""

    source: str
    dataset: str
    files: int = 0
    records_read: int = 0  # items the adapter yielded: records and rejects
    records_ok: int = 0  # records that reached an image (possibly merged)
    duplicate_records: int = 0  # same id, identical content, within a file: dropped
    images: int = 0  # rows in the images table
    images_ok: int = 0
    images_missing: int = 0  # distinct files not on disk (kept or quarantined)
    missing_kept: bool = False  # True: missing images kept as image_status=missing
    images_corrupt: int = 0
    images_refused: int = 0  # files over a limit or not regular files (never decoded)
    duplicate_images: int = 0  # files with the bytes of an earlier file
    instructions: int = 0
    qa_duplicates: int = 0  # identical (image, question, answer) pairs collapsed
    qa_unanswered_merged: int = 0  # answerless pairs superseded by the same question with an answer
    quarantined: dict[str, int] = field(default_factory=dict)  # by reason
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when at least one valid row was read."""
        return self.images > 0 or self.instructions > 0

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "quarantined_total": self.quarantined_total}


@dataclass
class IngestResult:
    """The three tables of one ingest run (spine schemas) and its summary."""

    images: pa.Table
    instructions: pa.Table
    quarantine: pa.Table
    summary: IngestSummary
    run_id: str

    @property
    def ok(self) -> bool:
        return self.summary.ok


# --------------------------------------------------------------------------- collection


@dataclass(slots=True)
class _Group:
    """All records naming one image file (one resolved path)."""

    key: str  # absolute path the ref resolves to
    image_ref: str
    records: list[SourceRecord] = field(default_factory=list)
    caption: str | None = None
    modality: str | None = None
    body_part: str | None = None
    qa: list[tuple[QA, str]] = field(default_factory=list)  # (pair, record_ref)
    extra_refs: list[str] = field(default_factory=list)  # refs of merged duplicate files

    def add(self, rec: SourceRecord) -> None:
        self.records.append(rec)
        self.caption = self.caption or _clean_text(rec.caption)
        self.modality = self.modality or rec.modality
        self.body_part = self.body_part or rec.body_part
        self.qa.extend((q, rec.record_ref) for q in rec.qa)

    def absorb(self, other: _Group) -> None:
        """Take another group's records (same image): QA appended, gaps filled."""
        self.caption = self.caption or other.caption
        self.modality = self.modality or other.modality
        self.body_part = self.body_part or other.body_part
        self.qa.extend(other.qa)
        self.records.extend(other.records)
        if other.image_ref != self.image_ref:
            self.extra_refs.append(other.image_ref)


class _Quarantine:
    """Collects quarantine rows (as columns) and counts them by reason."""

    def __init__(self, source: str, dataset: str, run_id: str) -> None:
        self.source, self.dataset, self.run_id = source, dataset, run_id
        self.rows: list[dict[str, Any]] = []
        self.by_reason: Counter[str] = Counter()

    def add(
        self,
        record_ref: str,
        reason: str,
        detail: str,
        record_id: str | None = None,
        raw: str | None = None,
    ) -> None:
        self.by_reason[reason] += 1
        self.rows.append(
            {
                "quarantine_id": content_id("qrn", STAGE, self.source, record_ref, reason),
                "stage": STAGE,
                "dataset": self.dataset,
                "source": self.source,
                "record_ref": record_ref,
                "record_id": record_id,
                "reason": reason,
                "detail": detail,
                "raw": clip_raw(raw),
                "run_id": self.run_id,
            }
        )

    def rejected(self, r: Rejected) -> None:
        self.add(r.record_ref, r.reason, r.detail, r.record_id, r.raw)

    def record(self, rec: SourceRecord, reason: str, detail: str) -> None:
        self.add(
            rec.record_ref,
            reason,
            detail,
            rec.source_id,
            rec.raw if rec.raw is not None else _serialise(rec),
        )


def _clean_text(value: str | None) -> str | None:
    if value is None:
        return None
    s = value.strip()
    return s or None


def _serialise(rec: SourceRecord) -> str:
    """A record without raw text (JSON-list item, CSV row) as JSON, for the quarantine."""
    doc = {
        "source_id": rec.source_id,
        "image_ref": rec.image_ref,
        "caption": rec.caption,
        "modality": rec.modality,
        "body_part": rec.body_part,
        "qa": [{"question": q.question, "answer": q.answer, "kind": q.kind} for q in rec.qa],
    }
    return json.dumps(doc, ensure_ascii=False, default=str)


def _fingerprint(rec: SourceRecord) -> int:
    """What makes two records with the same id 'the same record'."""
    qa = tuple((q.question, q.answer, q.kind, q.category) for q in rec.qa)
    return hash((rec.image_ref, rec.caption, rec.modality, rec.body_part, qa))


def _resolve(base: str, ref: str) -> str:
    return os.path.abspath(ref if os.path.isabs(ref) else os.path.join(base, ref))


def _within(real: str, root: str) -> bool:
    """Whether the resolved path ``real`` is ``root`` or under it (both resolved)."""
    return real == root or real.startswith(root if root.endswith(os.sep) else root + os.sep)


def _injection_detail(field: str, text: str | None) -> str | None:
    hit = find_injection(text)
    return None if hit is None else f"the {field} addresses a model: {hit[1]!r} ({hit[0]})"


class _Reader:
    """Step 1-2: adapter items -> groups of records per image file, quarantining bad input."""

    def __init__(
        self,
        q: _Quarantine,
        summary: IngestSummary,
        *,
        allow_outside_root: bool = False,
        screen_injection: bool = True,
    ) -> None:
        self.q, self.summary = q, summary
        self.groups: dict[str, _Group] = {}
        self.allow_outside_root, self.screen_injection = allow_outside_root, screen_injection
        self._real: dict[str, str] = {}  # abspath -> realpath (symlinks resolved), per run

    def read(self, adapter: Adapter, path: Path, images_dir: Path | None) -> None:
        base = os.path.abspath(images_dir if images_dir is not None else path.parent)
        root = os.path.realpath(base)
        seen: dict[str, tuple[int, str]] = {}  # source id -> (fingerprint, first record_ref)
        self.summary.files += 1
        try:
            for item in adapter.read(path):
                self.summary.records_read += 1
                if isinstance(item, Rejected):
                    self.q.rejected(item)
                elif self._accept(item, seen):
                    self._group(base, root, item)
        except Exception as e:  # noqa: BLE001 - an adapter bug ends this file, not the run
            self.q.add(
                path.name,
                "unreadable",
                f"reading stopped after {self.summary.records_read} record(s): {type(e).__name__}: {e}",
            )

    def _group(self, base: str, root: str, rec: SourceRecord) -> None:
        key = _resolve(base, rec.image_ref)
        if not self.allow_outside_root:
            real = self._real.get(key)
            if real is None:
                real = self._real[key] = os.path.realpath(key)
            if not _within(real, root):
                how = "" if real == key else f" (resolves to {real})"
                self.q.record(
                    rec,
                    OUTSIDE_ROOT,
                    f"image ref {rec.image_ref!r} is {key}{how}, outside the images root {root}: "
                    "not read (allow_outside_root / --allow-outside-root to follow it)",
                )
                return
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(key, rec.image_ref)
        group.add(rec)

    def _accept(self, rec: SourceRecord, seen: dict[str, tuple[int, str]]) -> bool:
        if rec.source_id is not None and not self._first_of_id(rec, seen):
            return False
        if self.screen_injection:
            detail = _injection_detail("caption", rec.caption)
            if detail is not None:
                lost = f"; its {len(rec.qa)} QA pair(s) with it" if rec.qa else ""
                self.q.record(rec, PROMPT_INJECTION, f"{detail}: the record is not ingested{lost}")
                return False
        had_qa = bool(rec.qa)
        good: list[QA] = []
        for i, q in enumerate(rec.qa):
            if not (q.question and q.question.strip()):
                reason, detail = "missing_field", "QA pair has an empty question"
            elif self.screen_injection and (
                detail := _injection_detail("question", q.question)
                or _injection_detail("answer", q.answer)
            ):
                reason = PROMPT_INJECTION
            else:
                good.append(q)
                continue
            self.q.add(
                f"{rec.record_ref}#qa{i}",
                reason,
                detail,
                q.source_qa_id or rec.source_id,
                json.dumps({"question": q.question, "answer": q.answer}, ensure_ascii=False),
            )
        rec.qa = good
        if good or rec.group is not None or _clean_text(rec.caption):
            return True
        if not had_qa:
            self.q.record(rec, "empty_caption", "caption-only record with an empty caption")
        return False  # every QA pair quarantined and nothing else left

    def _first_of_id(self, rec: SourceRecord, seen: dict[str, tuple[int, str]]) -> bool:
        fp = _fingerprint(rec)
        first = seen.get(rec.source_id)  # type: ignore[arg-type]
        if first is None:
            seen[rec.source_id] = (fp, rec.record_ref)  # type: ignore[index]
            return True
        if first[0] == fp:
            self.summary.duplicate_records += 1
        else:
            self.q.record(
                rec,
                "duplicate_id",
                f"id {rec.source_id!r} already read at {first[1]} with different content; the first is kept",
            )
        return False


# --------------------------------------------------------------------------- images


REFUSED = frozenset({SPECIAL_FILE, FILE_TOO_LARGE, TOO_MANY_PIXELS})  # never decoded


def _check_chunk(
    paths: Sequence[str], max_bytes: int, max_pixels: int
) -> list[ImageInfo | ImageProblem]:
    out: list[ImageInfo | ImageProblem] = []
    for p in paths:
        try:
            out.append(check_image(p, max_bytes=max_bytes, max_pixels=max_pixels))
        except ImageProblem as e:
            out.append(e)
        except Exception as e:  # noqa: BLE001 - never let one file stop the run
            out.append(ImageProblem("corrupt_image", f"{type(e).__name__}: {e}"))
    return out


def _absent(path: str, max_bytes: int) -> ImageProblem | None:
    """A cheap stat first: files that are not there, directories, FIFOs and devices, and files
    over the size limit never reach the worker threads (which check again on the open file)."""
    try:
        st = os.stat(path)
    except OSError:
        return ImageProblem("missing_image", f"no such file: {path}")
    return file_problem(st, path, max_bytes)


def check_images(
    paths: Sequence[str],
    workers: int = 4,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
) -> dict[str, ImageInfo | ImageProblem]:
    """Check many files concurrently (threads; decoders and hashing release the GIL).

    Absent files are found with one ``stat`` each in the calling thread; the rest are read,
    hashed and decoded in chunks of :data:`CHECK_CHUNK` files per worker task. ``max_bytes``
    / ``max_pixels``: the limits of :func:`medhall.images.check_image` (default: the settings).
    """
    max_bytes, max_pixels = limits(max_bytes, max_pixels)
    out: dict[str, ImageInfo | ImageProblem] = {}
    present: list[str] = []
    for p in paths:
        problem = _absent(p, max_bytes)
        if problem is None:
            present.append(p)
        else:
            out[p] = problem
    chunks = [present[i : i + CHECK_CHUNK] for i in range(0, len(present), CHECK_CHUNK)]
    if workers <= 1 or len(chunks) <= 1:
        results = [r for c in chunks for r in _check_chunk(c, max_bytes, max_pixels)]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medhall-img") as pool:
            results = [
                r
                for rs in pool.map(
                    _check_chunk, chunks, [max_bytes] * len(chunks), [max_pixels] * len(chunks)
                )
                for r in rs
            ]
    out.update(zip(present, results, strict=True))
    return out


@dataclass(slots=True)
class _Image:
    """A kept image: its group (merged), id, status and check result."""

    group: _Group
    image_id: str
    status: str
    info: ImageInfo | None


def _keep_images(
    groups: Iterable[_Group],
    checks: dict[str, ImageInfo | ImageProblem],
    *,
    require: bool,
    q: _Quarantine,
    summary: IngestSummary,
) -> list[_Image]:
    """Step 3-4: apply the check results, merge same-id images, quarantine duplicates."""
    kept: dict[str, _Image] = {}
    for g in groups:
        res = checks[g.key]
        if isinstance(res, ImageProblem):
            if res.reason == "missing_image":
                summary.images_missing += 1
            elif res.reason in REFUSED:
                summary.images_refused += 1
            else:
                summary.images_corrupt += 1
            if res.reason != "missing_image" or require:
                lost = f"; {len(g.qa)} QA pair(s) not ingested" if g.qa else ""
                detail = f"{res.detail} (ref {g.image_ref!r}{lost})"
                for rec in g.records:
                    q.record(rec, res.reason, detail)
                continue
            iid, status, info = image_id(ref=g.image_ref), "missing", None
        else:
            iid, status, info = image_id(sha256=res.sha256), "ok", res
        first = kept.get(iid)
        if first is None:
            kept[iid] = _Image(g, iid, status, info)
            continue
        if status == "ok":
            summary.duplicate_images += 1
            rec = g.records[0]
            q.add(
                rec.record_ref,
                "duplicate_image",
                f"{g.image_ref!r} has the same bytes as {iid} ({first.group.image_ref!r}); its {len(g.qa)} QA pair(s) are attached to {iid}",
                rec.source_id,
                rec.raw if rec.raw is not None else _serialise(rec),
            )
        first.group.absorb(g)
    return list(kept.values())


# --------------------------------------------------------------------------- rows


def _meta_json(meta: dict[str, Any]) -> str | None:
    """A meta dict as canonical JSON text (sorted keys); None when empty."""
    if not meta:
        return None
    if _orjson is not None:
        try:
            return _orjson.dumps(
                meta, option=_orjson.OPT_SORT_KEYS | _orjson.OPT_NON_STR_KEYS, default=str
            ).decode()
        except TypeError:
            pass
    return json.dumps(meta, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building ~10^5 records (they hold no cycles); ~20% faster."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _image_columns(
    images: list[_Image], *, source: str, dataset: str, run_id: str
) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {name: [] for name in schema.IMAGES.names}
    for im in images:
        g, info = im.group, im.info
        first = g.records[0]
        modality, m_origin = resolve_modality(
            g.modality, info.header_modality if info else None, g.caption
        )
        body, b_origin = resolve_body_part(
            g.body_part, info.header_body_part if info else None, g.caption
        )
        meta = dict(first.meta)
        if g.modality:
            meta["source_modality"] = g.modality
        if g.body_part:
            meta["source_body_part"] = g.body_part
        if g.extra_refs:
            meta["duplicate_refs"] = g.extra_refs
        if len(g.records) > 1:
            meta["n_records"] = len(g.records)
        if first.group is not None:
            meta["group"] = first.group
        row = {
            "image_id": im.image_id, "dataset": dataset, "source": source, "source_id": first.source_id,
            "image_ref": g.image_ref, "image_path": g.key if im.status == "ok" else None,
            "image_status": im.status, "sha256": info.sha256 if info else None,
            "format": info.format if info else None, "width": info.width if info else None,
            "height": info.height if info else None, "modality": modality, "modality_origin": m_origin,
            "body_part": body, "body_part_origin": b_origin, "caption": g.caption,
            "meta": _meta_json(meta), "run_id": run_id,
        }  # fmt: skip
        for k, v in row.items():
            cols[k].append(v)
    return cols


def _instruction_rows(
    images: list[_Image], *, source: str, dataset: str, run_id: str, summary: IngestSummary
) -> list[dict[str, Any]]:
    """Step 6: one row per distinct (image, question, answer); answerless duplicates merged."""
    rows: dict[str, dict[str, Any]] = {}
    for im in images:
        for q, ref in im.group.qa:
            question = q.question.strip()
            answer = _clean_text(q.answer)
            qid = qa_id(im.image_id, question, answer)
            if qid in rows:
                summary.qa_duplicates += 1
                continue
            rows[qid] = {
                "qa_id": qid, "image_id": im.image_id, "dataset": dataset, "question": question,
                "answer": answer, "kind": q.kind, "category": q.category, "style": None,
                "generator": source, "template_hash": None, "source": source,
                "source_qa_id": q.source_qa_id, "meta": _meta_json({**q.meta, "record_ref": ref}),
                "run_id": run_id,
            }  # fmt: skip
    return _merge_unanswered(list(rows.values()), summary)


def _merge_unanswered(rows: list[dict[str, Any]], summary: IngestSummary) -> list[dict[str, Any]]:
    answered: dict[tuple[str, str], set[str | None]] = {}
    for r in rows:
        if r["answer"] is not None:
            answered.setdefault((r["image_id"], r["question"]), set()).add(r["kind"])
    out = []
    for r in rows:
        kinds = answered.get((r["image_id"], r["question"])) if r["answer"] is None else None
        if kinds and (r["kind"] is None or r["kind"] in kinds or None in kinds):
            summary.qa_unanswered_merged += 1
            continue
        out.append(r)
    return out


def _table(name: str, columns: dict[str, list[Any]]) -> pa.Table:
    """One Arrow table from columns, checked against the spine schema."""
    sch = schema.schema_for(name)
    n = len(next(iter(columns.values()), []))
    data = {f: columns.get(f, [None] * n) for f in sch.names}
    return schema.conform(name, pa.Table.from_pydict(data, schema=sch))


def _columns(rows: list[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    return {n: [r.get(n) for r in rows] for n in names}


# --------------------------------------------------------------------------- entry point


def _paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return f"unreadable:{path}"
    return h.hexdigest()


def _adapter(adapter: Adapter | str) -> Adapter:
    if isinstance(adapter, str):
        from medhall.sources import get_adapter

        return get_adapter(adapter)
    return adapter


def ingest(
    adapter: Adapter | str,
    paths: str | Path | Iterable[str | Path],
    *,
    dataset: str,
    images_dir: str | Path | None = None,
    require_images: bool | None = None,
    workers: int = 4,
    run_id: str | None = None,
    allow_outside_root: bool | None = None,
    max_image_bytes: int | None = None,
    max_image_pixels: int | None = None,
    screen_injection: bool | None = None,
) -> IngestResult:
    """Read ``paths`` with ``adapter`` into the images / instructions / quarantine tables.

    ``images_dir``: where image refs are relative to (default: each input file's folder); the
    images root: a ref resolving outside it is quarantined (``outside_root``) unless
    ``allow_outside_root``. ``require_images``: quarantine records whose image is missing
    (default: unless the adapter's ``images_optional``). ``max_image_bytes`` /
    ``max_image_pixels``: the limits of every image file (docs/ingest.md, "Limits").
    ``screen_injection``: quarantine text that addresses a model (``prompt_injection``).
    The four default to the settings (``MEDHALL_INGEST_ALLOW_OUTSIDE_ROOT``,
    ``MEDHALL_IMAGE_MAX_BYTES``, ``MEDHALL_IMAGE_MAX_PIXELS``, ``MEDHALL_INGEST_SCREEN_INJECTION``).
    Never raises on bad input; ``result.ok`` is False only when nothing valid was read.
    """
    from medhall.config import get_settings

    settings = get_settings()
    guard = _Guard(
        allow_outside_root=settings.ingest_allow_outside_root
        if allow_outside_root is None
        else bool(allow_outside_root),
        max_bytes=settings.image_max_bytes if max_image_bytes is None else int(max_image_bytes),
        max_pixels=settings.image_max_pixels if max_image_pixels is None else int(max_image_pixels),
        screen_injection=settings.ingest_screen_injection
        if screen_injection is None
        else bool(screen_injection),
    )
    with _gc_paused():
        return _ingest(
            _adapter(adapter), _paths(paths), dataset, images_dir, require_images, workers, run_id,
            guard,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Guard:
    """The limits and screens of one run (they change its output: part of its run id)."""

    allow_outside_root: bool
    max_bytes: int
    max_pixels: int
    screen_injection: bool


def _ingest(
    adapter: Adapter,
    files: list[Path],
    dataset: str,
    images_dir: str | Path | None,
    require_images: bool | None,
    workers: int,
    run_id: str | None,
    guard: _Guard,
) -> IngestResult:
    t0 = time.perf_counter()
    require = (
        (not getattr(adapter, "images_optional", False))
        if require_images is None
        else bool(require_images)
    )
    img_dir = Path(images_dir) if images_dir is not None else None
    if run_id is None:
        config = {
            "adapter": adapter.name,
            "dataset": dataset,
            "images_dir": str(img_dir) if img_dir else None,
            "require_images": require,
            **asdict(guard),
        }
        run_id = make_run_id(STAGE, config, [_file_fingerprint(p) for p in files])
    summary = IngestSummary(source=adapter.name, dataset=dataset, missing_kept=not require)
    q = _Quarantine(adapter.name, dataset, run_id)

    reader = _Reader(
        q, summary,
        allow_outside_root=guard.allow_outside_root, screen_injection=guard.screen_injection,
    )  # fmt: skip
    for path in files:
        reader.read(adapter, path, img_dir)
    groups = list(reader.groups.values())
    summary.records_ok = sum(len(g.records) for g in groups)

    checks = check_images(
        [g.key for g in groups], workers=workers, max_bytes=guard.max_bytes,
        max_pixels=guard.max_pixels,
    )  # fmt: skip
    kept = _keep_images(groups, checks, require=require, q=q, summary=summary)

    images = _table(
        "images", _image_columns(kept, source=adapter.name, dataset=dataset, run_id=run_id)
    )
    instr_rows = _instruction_rows(
        kept, source=adapter.name, dataset=dataset, run_id=run_id, summary=summary
    )
    instructions = _table("instructions", _columns(instr_rows, schema.INSTRUCTIONS.names))
    quarantine = _table("quarantine", _columns(q.rows, schema.QUARANTINE.names))

    summary.images = images.num_rows
    summary.images_ok = sum(1 for im in kept if im.status == "ok")
    summary.instructions = instructions.num_rows
    summary.quarantined = dict(sorted(q.by_reason.items()))
    summary.elapsed_s = round(time.perf_counter() - t0, 3)
    return IngestResult(images, instructions, quarantine, summary, run_id)


def iter_summary_lines(summary: IngestSummary | dict[str, Any]) -> Iterator[str]:
    """The summary as plain lines (see :func:`format_summary`)."""
    s = summary.to_dict() if isinstance(summary, IngestSummary) else dict(summary)
    yield f"ingest {s['source']} -> dataset {s['dataset']!r}: {s['files']} file(s), {s['records_read']} record(s) read in {s['elapsed_s']:.2f} s"
    img = f"  images        {s['images']:>7}  ok {s['images_ok']}"
    if s["images_missing"]:
        fate = (
            "kept with image_status=missing" if s["missing_kept"] else "quarantined (missing_image)"
        )
        img += f", {s['images_missing']} not on disk: {fate}"
    if s["images_corrupt"]:
        img += f", {s['images_corrupt']} corrupt"
    if s.get("images_refused"):
        img += f", {s['images_refused']} refused (not a regular file, or over a limit)"
    if s["duplicate_images"]:
        img += f", {s['duplicate_images']} duplicate file(s) merged"
    yield img
    ins = f"  instructions  {s['instructions']:>7}"
    extra = []
    if s["qa_duplicates"]:
        extra.append(f"{s['qa_duplicates']} identical pair(s) collapsed")
    if s["qa_unanswered_merged"]:
        extra.append(f"{s['qa_unanswered_merged']} unanswered pair(s) merged into the answered one")
    if s["duplicate_records"]:
        extra.append(f"{s['duplicate_records']} repeated record(s) dropped")
    yield ins + (f"  ({'; '.join(extra)})" if extra else "")
    quarantined = s["quarantined"]
    yield f"  quarantined   {sum(quarantined.values()):>7}"
    for reason, n in sorted(quarantined.items(), key=lambda kv: (-kv[1], kv[0])):
        yield f"    {reason:<16}{n:>7}"
    if not s["images"] and not s["instructions"]:
        yield "  nothing valid was read"


def format_summary(summary: IngestSummary | dict[str, Any]) -> str:
    """A short plain-text report of an ingest run for the CLI (rich prints it as is)."""
    return "\n".join(iter_summary_lines(summary))


__all__ = ["IngestResult", "IngestSummary", "check_images", "format_summary", "ingest"]
