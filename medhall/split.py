"""Train/test split by image, the QC-filtered view, and the ablation subsets.

- :func:`split_by_image`: ``test_images`` images (default 200, as in the paper) drawn with
  :func:`medhall.sampling.stratified_sample` (stratified by modality, seeded); every other
  image is train. Each image is in exactly one split, so no pair can leak.
- :func:`filtered`: the pairs no QC check rejected (the DuckDB view ``filtered_instructions``).
- :func:`ablation_subsets`: the training subsets of the paper's ablations (Fig. 5).
- :func:`check_no_leak`: raises :class:`LeakError` when an image or a pair is in both splits.

Everything is vectorised over Arrow (``is_in``, ``sort_indices``, ``Table.join``); the only
per-row Python work is the seeded hash ranking of pairs for the fractions (about 1 s per
million pairs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medhall import schema
from medhall.ids import run_id as make_run_id
from medhall.ids import sha256_hex
from medhall.sampling import rank_key, strata, stratified_sample

log = logging.getLogger(__name__)

DEFAULT_TEST_IMAGES = 200
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
#: Strata of the nested fractions: each prefix keeps the kind / category mix.
FRACTION_STRATA = ("kind", "category")


class LeakError(ValueError):
    """An image, or an identical (image, question) pair, is in both splits."""


# --------------------------------------------------------------------------- split


def _unique_images(images: pa.Table, by: Sequence[str]) -> pa.Table:
    """``image_id`` and ``by``, one row per image (the first; an image listed twice is split once)."""
    images = images.select(["image_id", *by])
    if pc.count_distinct(images.column("image_id")).as_py() == images.num_rows:
        return images
    first = images.group_by("image_id", use_threads=False).aggregate([(c, "first") for c in by])
    return pa.table({"image_id": first.column("image_id"), **{c: first.column(f"{c}_first") for c in by}})


def _split_run_id(images: pa.Table, config: Mapping[str, object]) -> str:
    ids = pc.sort_indices(images.column("image_id"))
    fingerprint = sha256_hex("\n".join(images.column("image_id").take(ids).to_pylist()))
    return make_run_id("split", dict(config), [fingerprint])


def split_by_image(
    images: pa.Table,
    *,
    test_images: int = DEFAULT_TEST_IMAGES,
    seed: int = 0,
    by: Sequence[str] = ("modality",),
    run_id: str | None = None,
) -> pa.Table:
    """A ``splits`` table: ``test_images`` images in ``test`` (stratified by ``by``), the rest in ``train``.

    The draw is :func:`medhall.sampling.stratified_sample` (rank by ``sha256(seed, image_id)``
    within each stratum, proportional allocation, at least one image per stratum while
    ``test_images`` allows), so it does not depend on row order. Rows are sorted by
    ``image_id``; ``stratum`` is the ``|``-joined ``by`` values (``unknown`` for nulls).

    Raises ``ValueError`` when there are fewer distinct images than ``test_images``: a test set
    smaller than asked would make results silently incomparable. ``test_images`` equal to the
    number of images is allowed (everything is test; a warning is logged).
    """
    if test_images < 0:
        raise ValueError("test_images must be >= 0")
    missing = [c for c in ("image_id", *by) if c not in images.column_names]
    if missing:
        raise ValueError(f"cannot split: images has no column(s) {missing}")
    unique = _unique_images(images, by)
    if test_images > unique.num_rows:
        raise ValueError(
            f"cannot draw {test_images} test images from {unique.num_rows} distinct images; "
            "pass a smaller test_images"
        )
    if test_images == unique.num_rows:
        log.warning("split: all %d images go to test; the train split is empty", test_images)
    test_ids = stratified_sample(unique, test_images, seed=seed, by=by).column("image_id")
    is_test = pc.is_in(unique.column("image_id"), value_set=test_ids.combine_chunks())
    rid = run_id or _split_run_id(unique, {"test_images": test_images, "seed": seed, "by": list(by)})
    out = schema.conform(
        "splits",
        pa.table({
            "image_id": unique.column("image_id"),
            "split": pc.if_else(is_test, "test", "train"),
            "stratum": pa.array(strata(unique, by), pa.string()),
            "seed": pa.array(np.full(unique.num_rows, seed, dtype=np.int64)),
            "run_id": pa.array([rid] * unique.num_rows, pa.string()),
        }),
    )
    return out.take(pc.sort_indices(out, sort_keys=[("image_id", "ascending")]))


def split_ids(splits: pa.Table, split: str) -> pa.Array:
    """The distinct ``image_id`` values assigned to ``split``."""
    return pc.unique(splits.filter(pc.equal(splits.column("split"), split)).column("image_id"))


def split_mask(instructions: pa.Table, splits: pa.Table, split: str) -> np.ndarray:
    """A boolean per pair: is its image in ``split``? (Only ``image_id`` is read.)"""
    return _mask(pc.is_in(instructions.column("image_id"), value_set=split_ids(splits, split)))


def in_split(instructions: pa.Table, splits: pa.Table, split: str) -> pa.Table:
    """The pairs whose image is in ``split`` (train or test), in input order."""
    return instructions.filter(split_mask(instructions, splits, split))


def _mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array (nulls = False) as a numpy bool array."""
    filled = pc.fill_null(values, False)
    if isinstance(filled, pa.ChunkedArray):
        filled = filled.combine_chunks() if filled.num_chunks else pa.array([], pa.bool_())
    return filled.to_numpy(zero_copy_only=False).astype(bool, copy=False)


# --------------------------------------------------------------------------- QC view


def rejected_ids(verdicts: pa.Table | Iterable[pa.Table | pa.RecordBatch], *, drop_errors: bool = False) -> pa.Array:
    """qa_ids with at least one ``incorrect`` verdict (and ``error``, when ``drop_errors``).

    ``verdicts`` is a table or an iterable of batches (e.g. ``ParquetFile.iter_batches`` over
    ``qa_id`` and ``verdict``): only the rejecting rows are kept while reading.
    """
    bad = pa.array(["incorrect", "error"] if drop_errors else ["incorrect"])
    parts = [pa.array([], pa.string())]
    for chunk in [verdicts] if isinstance(verdicts, pa.Table) else verdicts:
        ids = chunk.filter(pc.is_in(chunk.column("verdict"), value_set=bad)).column("qa_id")
        parts.append(pc.unique(ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids).cast(pa.string()))
    return pc.unique(pa.concat_arrays(parts))


def kept_mask(instructions: pa.Table, rejected: pa.Array) -> np.ndarray:
    """A boolean per pair: not in ``rejected`` (:func:`rejected_ids`). Only ``qa_id`` is read."""
    return ~_mask(pc.is_in(instructions.column("qa_id"), value_set=rejected))


def filtered(instructions: pa.Table, verdicts: pa.Table, *, drop_errors: bool = False) -> pa.Table:
    """The pairs no QC check rejected: the DuckDB view ``filtered_instructions``.

    A pair is out when any of its verdicts is ``incorrect``. An ``error`` verdict (the check
    could not decide) keeps the pair by default, as the view does: it is waiting for a re-run,
    not rejected. ``drop_errors=True`` also leaves those out (a strict set). Pairs without
    verdicts are kept. Input order is kept.
    """
    return instructions.filter(kept_mask(instructions, rejected_ids(verdicts, drop_errors=drop_errors)))


# --------------------------------------------------------------------------- ablations


def _stratum_codes(table: pa.Table, by: Sequence[str]) -> np.ndarray:
    """An integer code per row for the combination of the ``by`` columns (nulls = 'unknown')."""
    cols = [pc.fill_null(table.column(c).cast(pa.string()), "unknown") for c in by]
    joined = pc.binary_join_element_wise(*cols, "|") if len(cols) > 1 else cols[0]
    encoded = pc.dictionary_encode(joined).combine_chunks()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def nested_order(table: pa.Table, *, seed: int = 0, by: Sequence[str] = FRACTION_STRATA, key: str = "qa_id") -> np.ndarray:
    """Row indices in the order the nested fractions take them.

    Within each stratum of ``by``, rows are ranked by ``sha256(seed, key)`` (the ranking of
    :mod:`medhall.sampling`). The row at rank ``p`` of a stratum of ``n`` rows gets the key
    ``(p + 0.5) / n``; the global order sorts by that key (ties by hash). Every prefix of this
    one order is therefore a subset of every longer prefix (nesting holds by construction) and
    keeps each stratum's share within one row, with no rounding paradox.
    """
    n = table.num_rows
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    hashes = _rank_keys(table.column(key), seed)
    codes = _stratum_codes(table, by)
    by_stratum = pc.sort_indices(
        pa.table({"c": codes, "h": hashes}), sort_keys=[("c", "ascending"), ("h", "ascending")]
    ).to_numpy()
    sorted_codes = codes[by_stratum]
    sizes = np.bincount(codes)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[by_stratum] = np.arange(n) - starts[sorted_codes]
    position = (rank + 0.5) / sizes[codes]
    return pc.sort_indices(
        pa.table({"p": position, "h": hashes}), sort_keys=[("p", "ascending"), ("h", "ascending")]
    ).to_numpy()


def _rank_keys(keys: pa.ChunkedArray | pa.Array, seed: int, chunk: int = 65536) -> pa.ChunkedArray:
    """``rank_key(seed, k)`` of each key, converted ``chunk`` keys at a time (few Python objects alive)."""
    parts = [
        pa.array([rank_key(seed, k) for k in keys.slice(start, chunk).to_pylist()], pa.string())
        for start in range(0, len(keys), chunk)
    ]
    return pa.chunked_array(parts, pa.string())


def fraction_name(fraction: float) -> str:
    """``frac_25`` for 0.25."""
    return f"frac_{round(fraction * 100):d}"


def check_fractions(fractions: Sequence[float]) -> None:
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ValueError(f"fractions must be in (0, 1], got {bad}")


def nested_fraction_rows(
    table: pa.Table, fractions: Sequence[float] = DEFAULT_FRACTIONS, *, seed: int = 0, by: Sequence[str] = FRACTION_STRATA
) -> dict[str, np.ndarray]:
    """``{frac_25: rows, ...}``: the sorted row indices of the first ``round(f * n)`` rows of :func:`nested_order`."""
    check_fractions(fractions)
    order = nested_order(table, seed=seed, by=by)
    return {fraction_name(f): np.sort(order[: int(f * table.num_rows + 0.5)]) for f in sorted(fractions)}


def nested_fractions(
    table: pa.Table, fractions: Sequence[float] = DEFAULT_FRACTIONS, *, seed: int = 0, by: Sequence[str] = FRACTION_STRATA
) -> dict[str, pa.Table]:
    """``{frac_25: ..., ...}``: the first ``round(f * n)`` rows of :func:`nested_order`, in input order."""
    rows = nested_fraction_rows(table, fractions, seed=seed, by=by)
    return {name: table.take(pa.array(take, pa.int64())) for name, take in rows.items()}


def ablation_masks(
    instructions: pa.Table,
    rejected: pa.Array,
    splits: pa.Table,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The rows of each ablation subset (:func:`ablation_subsets`) as boolean masks over ``instructions``.

    Reads only ``qa_id``, ``image_id``, ``kind`` and ``category``, so a key table of those
    columns gives the masks of the whole artifact; ``rejected`` is :func:`rejected_ids`.
    """
    check_fractions(fractions)
    train = split_mask(instructions, splits, "train")
    full = train & kept_mask(instructions, rejected)
    kind = instructions.column("kind")
    masks = {
        "full": full,
        "positive_only": full & _mask(pc.equal(kind, "positive")),
        "negative_only": full & _mask(pc.equal(kind, "negative")),
        "no_qc": train,
    }
    full_rows = np.flatnonzero(full)
    keys = instructions.select(["qa_id", *FRACTION_STRATA]).take(pa.array(full_rows, pa.int64()))
    for name, rows in nested_fraction_rows(keys, fractions, seed=seed).items():
        mask = np.zeros(instructions.num_rows, dtype=bool)
        mask[full_rows[rows]] = True
        masks[name] = mask
    return masks


def ablation_subsets(
    instructions: pa.Table,
    verdicts: pa.Table,
    splits: pa.Table,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    drop_errors: bool = False,
) -> dict[str, pa.Table]:
    """The training subsets of the paper's ablations; all drawn from the train split only.

    - ``no_qc``: every train pair, QC rejects included;
    - ``full``: the QC-filtered train pairs (:func:`filtered`);
    - ``positive_only`` / ``negative_only``: ``full`` restricted to one kind;
    - ``frac_25`` ... ``frac_100``: nested shares of ``full`` (25 ⊂ 50 ⊂ 75 ⊂ 100), drawn by
      pair with :func:`nested_order` (stratified by kind and category, seeded), so every
      fraction keeps the kind / category mix; ``frac_100`` equals ``full``.

    Each table keeps the input's columns and row order. :func:`ablation_masks` gives the
    same subsets as row masks (what the streaming build uses).
    """
    rejected = rejected_ids(verdicts, drop_errors=drop_errors)
    masks = ablation_masks(instructions, rejected, splits, fractions=fractions, seed=seed)
    return {name: instructions.filter(mask) for name, mask in masks.items()}


# --------------------------------------------------------------------------- leak check


def _normalised_question(instructions: pa.Table) -> pa.ChunkedArray:
    q = pc.utf8_lower(pc.utf8_trim_whitespace(instructions.column("question")))
    return pc.replace_substring_regex(q, r"\s+", " ")


def _examples(values: pa.Array, limit: int = 5) -> str:
    return ", ".join(str(v) for v in values.slice(0, limit).to_pylist())


def image_names(images: pa.Table) -> pa.ChunkedArray:
    """The file name of each image's ``image_ref`` (no folders), as the release writes it."""
    return pc.replace_substring_regex(images.column("image_ref"), r"^.*[/\\]", "")


def _both(table: pa.Table, keys: list[str]) -> pa.Table:
    """The ``keys`` groups of ``table`` that occur with more than one ``split``."""
    per = table.group_by(keys).aggregate([("split", "count_distinct")])
    return per.filter(pc.greater(per.column("split_count_distinct"), 1))


def check_no_leak(splits: pa.Table, instructions: pa.Table | None = None, images: pa.Table | None = None) -> None:
    """Raise :class:`LeakError` when the split leaks; pass silently otherwise.

    - every ``image_id`` has one split;
    - given ``instructions``: every pair's image has a split (an unassigned pair would be
      dropped from every export);
    - given ``images`` too: no identical question (case- and whitespace-insensitive) about an
      image with the same file name is in both splits. This catches one picture known under
      two ids (e.g. hashed from its bytes in one corpus, from its name in another); a leak by
      ``image_id`` is already caught by the first check.
    """
    both = _both(splits.select(["image_id", "split"]), ["image_id"]).column("image_id")
    if len(both):
        raise LeakError(f"{len(both)} image(s) are in both train and test, e.g. {_examples(both.combine_chunks())}")
    if instructions is None:
        return
    known = pc.is_in(instructions.column("image_id"), value_set=pc.unique(splits.column("image_id")))
    unassigned = instructions.filter(pc.invert(known)).column("qa_id")
    if len(unassigned):
        raise LeakError(f"{len(unassigned)} pair(s) have an image with no split, e.g. {_examples(unassigned.combine_chunks())}")
    if images is None:
        return
    suspects = leak_suspects(splits, images)
    if suspects is not None:
        pairs = instructions.filter(pc.is_in(instructions.column("image_id"), value_set=suspects.column("image_id").combine_chunks()))
        check_question_leak(pairs, suspects)


def leak_suspects(splits: pa.Table, images: pa.Table) -> pa.Table | None:
    """``image_id``, lower-cased file ``name`` and ``split`` of the images whose file name is in
    both splits (the only ones whose pairs can leak by question); None when there are none."""
    names = pa.table({"image_id": images.column("image_id"), "name": pc.utf8_lower(image_names(images))})
    named = names.join(splits.select(["image_id", "split"]), "image_id")
    shared = _both(named.select(["name", "split"]), ["name"]).column("name")
    if not len(shared):
        return None
    return named.filter(pc.is_in(named.column("name"), value_set=shared.combine_chunks()))


def check_question_leak(pairs: pa.Table, suspects: pa.Table) -> None:
    """Raise :class:`LeakError` when an identical question about one file name (``pairs``:
    ``image_id`` and ``question`` of the suspects' pairs) is in both splits."""
    keyed = pa.table({"image_id": pairs.column("image_id"), "question": _normalised_question(pairs)}).join(suspects, "image_id")
    leaked = _both(keyed.select(["name", "question", "split"]), ["name", "question"])
    if leaked.num_rows:
        raise LeakError(
            f"{leaked.num_rows} identical (image file, question) pair(s) are in both splits, "
            f"e.g. {_examples(leaked.column('name').combine_chunks())}"
        )
