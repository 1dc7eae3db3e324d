"""The build's export path (DuckDB membership + sorted streaming): the same files as the
in-memory writers, the same checks, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from medhall import schema
from medhall.export import export_all
from medhall.export.sql import connect, export_stored, membership
from medhall.split import LeakError, ablation_subsets, filtered, split_by_image

from .synthetic import IMAGE_ROOT, Dataset, files_of, leaky_dataset, make_dataset, shuffled_file


def _reference(data: Dataset, splits: pa.Table, out: Path, *, seed: int = 0, **options: object) -> None:
    """What the in-memory writers produce for the filtered set and every ablation subset."""
    export_all(filtered(data.instructions, data.verdicts), data.images, splits, out / "filtered", name="mh", **options)
    train_only = splits.filter(pc.equal(splits.column("split"), "train"))
    for name, subset in ablation_subsets(data.instructions, data.verdicts, splits, seed=seed).items():
        export_all(subset, data.images, train_only, out / "subsets" / name, ["parquet"], name=f"mh_{name}", **options)


@pytest.mark.parametrize("seed", [0, 5])
def test_stored_exports_are_byte_identical_to_the_in_memory_writers(data: Dataset, splits: pa.Table, tmp_path: Path, seed: int) -> None:
    _reference(data, splits, tmp_path / "mem", seed=seed)
    instr = shuffled_file(data.instructions, tmp_path / "instructions.parquet")
    pq.write_table(data.verdicts, tmp_path / "verdicts.parquet")
    pq.write_table(data.images, tmp_path / "images.parquet")
    written = export_stored(
        instr, tmp_path / "images.parquet", splits, tmp_path / "sql",
        verdicts=tmp_path / "verdicts.parquet", name="mh", seed=seed, batch_size=100, memory_limit="64MB",
    )
    assert files_of(tmp_path / "mem") == files_of(tmp_path / "sql")
    assert set(written) == {"filtered", "full", "positive_only", "negative_only", "no_qc", "frac_25", "frac_50", "frac_75", "frac_100"}
    assert all(p.exists() for paths in written["filtered"].values() for p in paths)
    assert not [p for p in (tmp_path / "sql").iterdir() if p.name.startswith(".medhall-export-")], "the DuckDB work files are removed"


def test_image_root_and_release_ids_kept_from_the_source(tmp_path: Path) -> None:
    """Integer source ids (rows read from the release) are kept as the release's question_id."""
    small = make_dataset(60, seed=2)
    n = small.instructions.num_rows
    instructions = small.instructions.set_column(
        small.instructions.schema.get_field_index("source_qa_id"), "source_qa_id", pa.array([str(1000 + i) for i in range(n)])
    )
    data = Dataset(small.images, instructions, small.verdicts)
    s = split_by_image(data.images, test_images=10, seed=1)
    _reference(data, s, tmp_path / "mem", image_root=IMAGE_ROOT)
    pq.write_table(data.instructions, tmp_path / "i.parquet")
    pq.write_table(data.verdicts, tmp_path / "v.parquet")
    pq.write_table(data.images, tmp_path / "g.parquet")
    export_stored(tmp_path / "i.parquet", tmp_path / "g.parquet", s, tmp_path / "sql", verdicts=tmp_path / "v.parquet", name="mh", image_root=IMAGE_ROOT)
    assert files_of(tmp_path / "mem") == files_of(tmp_path / "sql")
    first = (tmp_path / "sql" / "filtered" / "medhalltune" / "mh_train_positive_qa.jsonl").read_text().splitlines()[0]
    assert first.startswith('{"question_id": 10')  # a source id, not a renumbering from 0


def _write(tmp_path: Path, data: Dataset, instructions: pa.Table | None = None) -> tuple[Path, Path, Path]:
    paths = tmp_path / "i.parquet", tmp_path / "g.parquet", tmp_path / "v.parquet"
    pq.write_table(instructions if instructions is not None else data.instructions, paths[0])
    pq.write_table(data.images, paths[1])
    pq.write_table(data.verdicts, paths[2])
    return paths


def test_a_pair_whose_image_has_no_split_fails_before_any_file(data: Dataset, splits: pa.Table, tmp_path: Path) -> None:
    instr, images, verdicts = _write(tmp_path, data)
    lost = data.instructions.column("image_id")[0].as_py()
    partial = splits.filter(pc.not_equal(splits.column("image_id"), lost))
    with pytest.raises(LeakError, match="no split"):
        export_stored(instr, images, partial, tmp_path / "out", verdicts=verdicts)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_a_question_leak_by_file_name_is_caught(tmp_path: Path) -> None:
    data, s = leaky_dataset()
    instr, g, v = _write(tmp_path, data)
    with pytest.raises(LeakError, match="identical"):
        export_stored(instr, g, s, tmp_path / "out", verdicts=v)
    # rejected by QC, the copy is not exported: no leak
    reject = schema.from_rows("qc_verdicts", [{"qa_id": "qa_copy", "check": "rules", "verdict": "incorrect", "passed": False}])
    pq.write_table(pa.concat_tables([data.verdicts, reject]), v)
    export_stored(instr, g, s, tmp_path / "out", verdicts=v, formats=["parquet"])


def test_pairs_without_a_kind_fail_the_release_format_only(data: Dataset, splits: pa.Table, tmp_path: Path) -> None:
    kinds = data.instructions.column("kind").to_pylist()
    kinds[3] = None
    no_kind = data.instructions.set_column(data.instructions.schema.get_field_index("kind"), "kind", pa.array(kinds, pa.string()))
    instr, images, verdicts = _write(tmp_path, data, no_kind)
    with pytest.raises(ValueError, match="no kind"):
        export_stored(instr, images, splits, tmp_path / "a", verdicts=verdicts, formats=["medhalltune"])
    export_stored(instr, images, splits, tmp_path / "b", verdicts=verdicts, formats=["parquet"])


def test_membership_counts_match_the_subsets(data: Dataset, splits: pa.Table, tmp_path: Path) -> None:
    instr, images, verdicts = _write(tmp_path, data)
    subsets = ablation_subsets(data.instructions, data.verdicts, splits)
    with connect(tmp_path) as con:
        info = membership(con, instr, data.images, splits, verdicts=verdicts, release=True)
    assert {k: v for k, v in info.counts.items() if not k.startswith("filtered_")} == {k: t.num_rows for k, t in subsets.items()}
    kept = filtered(data.instructions, data.verdicts)
    assert info.counts["filtered_train"] + info.counts["filtered_test"] == kept.num_rows
