import pyarrow as pa

from medhall.sampling import allocate, counts, stratified_sample


def _table(n_ct=60, n_mr=30, n_us=10):
    mods = ["CT"] * n_ct + ["MR"] * n_mr + ["ultrasound"] * n_us
    return pa.table({
        "image_id": [f"img_{i:03d}" for i in range(len(mods))],
        "modality": mods,
        "body_part": ["chest" if i % 2 else "head" for i in range(len(mods))],
    })


def test_allocation_is_proportional_and_covers_every_stratum():
    assert allocate({"a": 60, "b": 30, "c": 10}, 10) == {"a": 6, "b": 3, "c": 1}
    assert allocate({"a": 98, "b": 1, "c": 1}, 3) == {"a": 1, "b": 1, "c": 1}
    assert allocate({"a": 5, "b": 5}, 100) == {"a": 5, "b": 5}
    assert sum(allocate({"a": 7, "b": 11, "c": 13}, 17).values()) == 17


def test_sample_is_seeded_stratified_and_order_independent():
    t = _table()
    s = stratified_sample(t, 20, seed=1, by=["modality"])
    assert s.num_rows == 20
    assert dict(counts(s, "modality")) == {"CT": 12, "MR": 6, "ultrasound": 2}
    assert stratified_sample(t, 20, seed=1, by=["modality"]).equals(s)
    shuffled = t.take(pa.array(list(range(t.num_rows))[::-1]))
    assert sorted(stratified_sample(shuffled, 20, seed=1, by=["modality"]).column("image_id").to_pylist()) == sorted(
        s.column("image_id").to_pylist()
    )
    other = stratified_sample(t, 20, seed=2, by=["modality"])
    assert set(other.column("image_id").to_pylist()) != set(s.column("image_id").to_pylist())


def test_adding_images_keeps_most_of_a_sample():
    t = _table()
    s1 = set(stratified_sample(t, 20, seed=0, by=["modality"]).column("image_id").to_pylist())
    bigger = pa.concat_tables([t, pa.table({"image_id": ["img_900", "img_901"], "modality": ["CT", "CT"], "body_part": ["x", "x"]})])
    s2 = set(stratified_sample(bigger, 20, seed=0, by=["modality"]).column("image_id").to_pylist())
    assert len(s1 & s2) >= 18


def test_null_strata_count_as_unknown():
    t = pa.table({"image_id": ["a", "b", "c"], "modality": ["CT", None, None]})
    assert dict(counts(t, "modality")) == {"unknown": 2, "CT": 1}
    assert stratified_sample(t, 2, by=["modality"]).num_rows == 2
