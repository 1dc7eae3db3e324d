"""split_by_image, filtered, ablation_subsets, check_no_leak."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from medhall import schema
from medhall.sampling import allocate, counts
from medhall.split import (
    LeakError,
    ablation_subsets,
    check_no_leak,
    filtered,
    in_split,
    nested_order,
    split_by_image,
)

from .synthetic import Dataset, make_dataset


def _ids(table: pa.Table, column: str = "qa_id") -> set[str]:
    return set(table.column(column).to_pylist())


def _split_of(splits: pa.Table, split: str) -> set[str]:
    return _ids(splits.filter(pc.equal(splits.column("split"), split)), "image_id")


# --------------------------------------------------------------------------- split


def test_every_image_once_and_test_size(data: Dataset, splits: pa.Table) -> None:
    assert splits.schema.equals(schema.SPLITS_TABLE, check_metadata=False)
    assert splits.num_rows == data.images.num_rows
    assert _ids(splits, "image_id") == _ids(data.images, "image_id")
    train, test = _split_of(splits, "train"), _split_of(splits, "test")
    assert len(test) == 200 and len(train) == 200
    assert not train & test
    assert set(splits.column("seed").to_pylist()) == {3}
    assert len(set(splits.column("run_id").to_pylist())) == 1


def test_test_split_is_stratified_by_modality(data: Dataset, splits: pa.Table) -> None:
    sizes = dict(counts(data.images, "modality"))
    test = data.images.filter(pc.is_in(data.images.column("image_id"), value_set=pa.array(_split_of(splits, "test"))))
    assert dict(counts(test, "modality")) == {k: v for k, v in allocate(sizes, 200).items() if v}
    strata = splits.filter(pc.equal(splits.column("split"), "test")).column("stratum").to_pylist()
    assert set(strata) == set(sizes)


def test_split_is_deterministic_and_order_independent(data: Dataset, splits: pa.Table) -> None:
    assert split_by_image(data.images, test_images=200, seed=3).equals(splits)
    reversed_images = data.images.take(pa.array(range(data.images.num_rows - 1, -1, -1)))
    assert split_by_image(reversed_images, test_images=200, seed=3).equals(splits)
    other = split_by_image(data.images, test_images=200, seed=4)
    assert _split_of(other, "test") != _split_of(splits, "test")


def test_split_refuses_more_test_images_than_exist(data: Dataset) -> None:
    with pytest.raises(ValueError, match="cannot draw 401 test images from 400"):
        split_by_image(data.images, test_images=401)
    everything = split_by_image(data.images, test_images=400)
    assert set(everything.column("split").to_pylist()) == {"test"}


def test_duplicate_image_rows_are_split_once(data: Dataset) -> None:
    doubled = pa.concat_tables([data.images, data.images.slice(0, 50)])
    s = split_by_image(doubled, test_images=200, seed=3)
    assert s.num_rows == 400
    check_no_leak(s)
    first = data.images.slice(0, 1).to_pylist()[0]
    relabelled = data.images.slice(0, 1).set_column(data.images.column_names.index("modality"), "modality", pa.array(["other"]))
    dup = split_by_image(pa.concat_tables([data.images, schema.conform("images", relabelled)]), test_images=200, seed=3)
    assert dup.equals(split_by_image(data.images, test_images=200, seed=3))
    assert dup.filter(pc.equal(dup.column("image_id"), first["image_id"])).column("stratum").to_pylist() == [first["modality"]]


# --------------------------------------------------------------------------- QC view


def test_filtered_matches_the_duckdb_view_and_keeps_errors(data: Dataset) -> None:
    instructions, qc_verdicts = data.instructions, data.verdicts  # noqa: F841 (duckdb reads them)
    view = duckdb.sql(
        "SELECT i.qa_id FROM instructions i WHERE NOT EXISTS "
        "(SELECT 1 FROM qc_verdicts q WHERE q.qa_id = i.qa_id AND q.verdict = 'incorrect')"
    ).fetchall()
    kept = filtered(data.instructions, data.verdicts)
    assert _ids(kept) == {row[0] for row in view}
    verdict = {v: _ids(data.verdicts.filter(pc.equal(data.verdicts.column("verdict"), v))) for v in ("incorrect", "error")}
    assert verdict["incorrect"] and not _ids(kept) & verdict["incorrect"]
    assert verdict["error"] - verdict["incorrect"] <= _ids(kept)
    strict = filtered(data.instructions, data.verdicts, drop_errors=True)
    assert not _ids(strict) & (verdict["incorrect"] | verdict["error"])
    assert kept.column("qa_id").to_pylist() == [q for q in data.instructions.column("qa_id").to_pylist() if q in _ids(kept)]


# --------------------------------------------------------------------------- ablations


@pytest.fixture(scope="module")
def subsets(data: Dataset, splits: pa.Table) -> dict[str, pa.Table]:
    return ablation_subsets(data.instructions, data.verdicts, splits, seed=5)


def test_ablation_subsets_come_from_train_only(data: Dataset, splits: pa.Table, subsets: dict[str, pa.Table]) -> None:
    assert set(subsets) == {"full", "positive_only", "negative_only", "no_qc", "frac_25", "frac_50", "frac_75", "frac_100"}
    train_images = _split_of(splits, "train")
    for name, table in subsets.items():
        assert _ids(table, "image_id") <= train_images, name
    assert _ids(subsets["no_qc"]) == _ids(in_split(data.instructions, splits, "train"))


def test_qc_subsets(data: Dataset, subsets: dict[str, pa.Table]) -> None:
    rejected = _ids(data.verdicts.filter(pc.equal(data.verdicts.column("verdict"), "incorrect")))
    assert _ids(subsets["no_qc"]) & rejected, "no_qc keeps the rejects"
    assert not _ids(subsets["full"]) & rejected
    assert _ids(subsets["full"]) | (_ids(subsets["no_qc"]) & rejected) == _ids(subsets["no_qc"])


def test_kind_subsets(subsets: dict[str, pa.Table]) -> None:
    assert set(subsets["positive_only"].column("kind").to_pylist()) == {"positive"}
    assert set(subsets["negative_only"].column("kind").to_pylist()) == {"negative"}
    assert _ids(subsets["positive_only"]) | _ids(subsets["negative_only"]) == _ids(subsets["full"])


def test_fractions_are_nested_sized_and_keep_the_mix(subsets: dict[str, pa.Table]) -> None:
    full = subsets["full"]
    names = ["frac_25", "frac_50", "frac_75", "frac_100"]
    for small, big in zip(names, names[1:], strict=False):
        assert _ids(subsets[small]) < _ids(subsets[big])
    assert subsets["frac_100"].equals(full)
    share = dict(counts(full, "kind"))
    for name, f in zip(names, (0.25, 0.5, 0.75, 1.0), strict=True):
        assert subsets[name].num_rows == int(f * full.num_rows + 0.5)
        got = dict(counts(subsets[name], "kind"))
        for kind, n in share.items():
            assert abs(got[kind] - f * n) <= 1, (name, kind)


def test_fractions_are_seeded(data: Dataset, splits: pa.Table, subsets: dict[str, pa.Table]) -> None:
    again = ablation_subsets(data.instructions, data.verdicts, splits, seed=5)
    assert all(again[k].equals(v) for k, v in subsets.items())
    other = ablation_subsets(data.instructions, data.verdicts, splits, seed=6, fractions=(0.25,))
    assert _ids(other["frac_25"]) != _ids(subsets["frac_25"])
    shuffled = subsets["full"].take(pa.array(range(subsets["full"].num_rows - 1, -1, -1)))
    order = nested_order(shuffled, seed=5)[: subsets["frac_25"].num_rows]
    assert _ids(shuffled.take(pa.array(order))) == _ids(subsets["frac_25"])
    with pytest.raises(ValueError, match="fractions"):
        ablation_subsets(data.instructions, data.verdicts, splits, fractions=(0.0, 1.5))


# --------------------------------------------------------------------------- leaks


def test_check_no_leak_passes_on_a_split(data: Dataset, splits: pa.Table) -> None:
    check_no_leak(splits, data.instructions, data.images)


def test_check_no_leak_catches_an_image_in_both(data: Dataset, splits: pa.Table) -> None:
    row = splits.slice(0, 1)
    flipped = row.set_column(1, "split", pa.array(["test" if row.column("split")[0].as_py() == "train" else "train"]))
    with pytest.raises(LeakError, match="1 image"):
        check_no_leak(pa.concat_tables([splits, schema.conform("splits", flipped)]))


def test_check_no_leak_catches_unassigned_pairs(data: Dataset, splits: pa.Table) -> None:
    with pytest.raises(LeakError, match="no split"):
        check_no_leak(splits.slice(1), data.instructions)


def test_check_no_leak_catches_one_picture_under_two_ids() -> None:
    small = make_dataset(4, seed=1, pairs=(2, 2))
    s = split_by_image(small.images, test_images=2, seed=0)
    split_of = dict(zip(s.column("image_id").to_pylist(), s.column("split").to_pylist(), strict=True))
    images = small.images.to_pylist()
    test_img = next(r for r in images if split_of[r["image_id"]] == "test")
    train_img = next(r for r in images if split_of[r["image_id"]] == "train")
    train_img["image_ref"] = "other/folder/" + test_img["image_ref"].rsplit("/", 1)[-1]  # the same file, another id
    images = schema.from_rows("images", images)
    check_no_leak(s, small.instructions, images)
    question = next(r for r in small.instructions.to_pylist() if r["image_id"] == test_img["image_id"])
    copy = {**question, "qa_id": "qa_copy", "image_id": train_img["image_id"], "question": f"  {question['question'].upper()} "}
    leaky = pa.concat_tables([small.instructions, schema.from_rows("instructions", [copy])])
    with pytest.raises(LeakError, match="identical"):
        check_no_leak(s, leaky, images)
