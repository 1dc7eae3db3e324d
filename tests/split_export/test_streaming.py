"""The streaming path (what the build uses): same files as the in-memory path, bounded batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medhall.export import (
    ParquetSource,
    export_all,
    plan_exports,
    run_exports,
    write_llava,
    write_parquet,
)
from medhall.split import ablation_masks, ablation_subsets, filtered, kept_mask, rejected_ids

from .synthetic import IMAGE_ROOT, Dataset, files_of, leaky_dataset, shuffled_file


def test_rejected_ids_from_batches_equal_the_table(data: Dataset) -> None:
    for drop_errors in (False, True):
        whole = rejected_ids(data.verdicts, drop_errors=drop_errors)
        batched = rejected_ids(data.verdicts.select(["qa_id", "verdict"]).to_batches(max_chunksize=50), drop_errors=drop_errors)
        assert sorted(whole.to_pylist()) == sorted(batched.to_pylist())


def test_ablation_masks_are_the_subsets(data: Dataset, splits: pa.Table) -> None:
    subsets = ablation_subsets(data.instructions, data.verdicts, splits, seed=4)
    keys = data.instructions.select(["qa_id", "image_id", "kind", "category"])
    masks = ablation_masks(keys, rejected_ids(data.verdicts), splits, seed=4)
    assert list(masks) == list(subsets)
    for name, mask in masks.items():
        assert data.instructions.filter(mask).equals(subsets[name]), name


def test_export_from_a_shuffled_parquet_file_is_byte_identical(data: Dataset, splits: pa.Table, tmp_path: Path) -> None:
    """Many row groups, many sort buckets, rows in no order: still the same files."""
    dataset = filtered(data.instructions, data.verdicts)
    export_all(dataset, data.images, splits, tmp_path / "mem", name="mh", image_root=IMAGE_ROOT)
    source = ParquetSource(shuffled_file(dataset, tmp_path / "in.parquet"), read_rows=64, bucket_rows=150, tmp_dir=tmp_path)
    export_all(source, data.images, splits, tmp_path / "stream", name="mh", image_root=IMAGE_ROOT)
    assert files_of(tmp_path / "mem") == files_of(tmp_path / "stream")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".medhall-sort-")], "sort buckets are removed"


def test_masked_plans_share_one_run_and_match_separate_exports(data: Dataset, splits: pa.Table, tmp_path: Path) -> None:
    """What split_and_export does: the filtered set and the subsets as masks over one file."""
    keys = data.instructions.select(["qa_id", "image_id", "kind", "category"])
    rejected = rejected_ids(data.verdicts)
    masks = ablation_masks(keys, rejected, splits)
    train_only = splits.filter(pa.compute.equal(splits.column("split"), "train"))
    source = ParquetSource(shuffled_file(data.instructions, tmp_path / "in.parquet", row_group_size=300), bucket_rows=500)
    # the file is shuffled: masks are over its rows
    file_keys = source.read(["qa_id", "image_id", "kind", "category"])
    file_masks = ablation_masks(file_keys, rejected, splits)
    plans = [plan_exports(source, data.images, splits, tmp_path / "s" / "filtered", name="mh", mask=kept_mask(file_keys, rejected))]
    plans += [plan_exports(source, data.images, train_only, tmp_path / "s" / n, ["parquet"], name=n, mask=m) for n, m in file_masks.items()]
    run_exports(source, data.images, [j for p in plans for j in p.jobs], extra={k: v for p in plans for k, v in p.extra.items()}, batch_size=128)

    export_all(filtered(data.instructions, data.verdicts), data.images, splits, tmp_path / "m" / "filtered", name="mh")
    for name, mask in masks.items():
        export_all(data.instructions.filter(mask), data.images, train_only, tmp_path / "m" / name, ["parquet"], name=name)
    assert files_of(tmp_path / "m") == files_of(tmp_path / "s")


def test_multi_turn_groups_survive_batch_boundaries(data: Dataset, tmp_path: Path) -> None:
    [whole] = write_llava(data.instructions, data.images, tmp_path / "a", name="mt", multi_turn=True)
    source = ParquetSource(shuffled_file(data.instructions, tmp_path / "in.parquet"), bucket_rows=64)
    from medhall.export import Job
    from medhall.export.llava import llava_sink

    [streamed] = run_exports(source, data.images, [Job(llava_sink(tmp_path / "b", name="mt", multi_turn=True))], batch_size=7)
    assert whole.read_bytes() == streamed.read_bytes()


def test_parquet_row_groups_are_batch_size_whatever_arrives(data: Dataset, tmp_path: Path) -> None:
    [path] = write_parquet(data.instructions, data.images, tmp_path, name="rg", batch_size=100)
    meta = pq.ParquetFile(path).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes[:-1] == [100] * (len(sizes) - 1) and 0 < sizes[-1] <= 100
    assert sum(sizes) == data.instructions.num_rows


def test_an_unknown_image_fails_before_any_file(data: Dataset, splits: pa.Table, tmp_path: Path) -> None:
    images = data.images.slice(1)
    with pytest.raises(ValueError, match="not in the images table"):
        write_parquet(data.instructions, images, tmp_path, name="x")
    assert not list(tmp_path.rglob("*.parquet"))


def test_a_question_leak_is_caught_when_streaming_a_file(tmp_path: Path) -> None:
    """The name check reads questions only for suspect images, from the file."""
    from medhall.split import LeakError

    data, s = leaky_dataset()
    images, leaky = data.images, data.instructions
    pq.write_table(leaky, tmp_path / "in.parquet")
    with pytest.raises(LeakError, match="identical"):
        export_all(ParquetSource(tmp_path / "in.parquet"), images, s, tmp_path / "out")
    # the copy left out by the mask: no leak among the exported pairs
    source = ParquetSource(tmp_path / "in.parquet")
    mask = np.array([q != "qa_copy" for q in leaky.column("qa_id").to_pylist()])
    plan = plan_exports(source, images, s, tmp_path / "out", ["parquet"], mask=mask)
    run_exports(source, images, plan.jobs)
    assert not list((tmp_path / "out").rglob("*.tmp"))
