"""Seeded, stratified sampling of images.

Within a stratum, images are ranked by ``sha256(seed, image_id)``, and the first ``k`` are
taken. The ranking does not depend on row order, and adding images to a corpus moves the
sample only as much as the new images outrank the old ones. Stratum sizes follow the
strata's shares (largest-remainder rounding), with at least one image from every stratum
while ``n`` allows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from medhall.ids import sha256_hex


def rank_key(seed: int, key: str) -> str:
    return sha256_hex(f"{seed}:{key}")


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Split ``n`` across strata in proportion to ``sizes`` (largest remainder).

    While ``n`` allows, every stratum gets at least one, taken from the strata that got most.
    """
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    quota = {s: n * sizes[s] / total for s in sizes}
    alloc = {s: int(quota[s]) for s in sizes}
    by_remainder = sorted(sizes, key=lambda s: (-(quota[s] - alloc[s]), s))
    for s in by_remainder[: n - sum(alloc.values())]:
        alloc[s] += 1
    if n >= len(sizes):
        for s in sorted((s for s in sizes if alloc[s] == 0), key=lambda s: (-sizes[s], s)):
            donor = max(alloc, key=lambda d: (alloc[d], d))
            alloc[donor] -= 1
            alloc[s] = 1
    return alloc


def strata(table: pa.Table, by: Sequence[str]) -> list[str]:
    cols = [table.column(c).to_pylist() for c in by]
    return ["|".join(str(v[i]) if v[i] is not None else "unknown" for v in cols) for i in range(table.num_rows)]


def stratified_sample(
    table: pa.Table, n: int, *, seed: int = 0, by: Sequence[str] = ("modality", "body_part"), key: str = "image_id"
) -> pa.Table:
    """``n`` rows of ``table`` drawn per stratum of the ``by`` columns, reproducibly for ``seed``."""
    if n < 0:
        raise ValueError("n must be >= 0")
    missing = [c for c in (*by, key) if c not in table.column_names]
    if missing:
        raise ValueError(f"cannot stratify: no column(s) {missing}")
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for i, (s, k) in enumerate(zip(strata(table, by), table.column(key).to_pylist(), strict=True)):
        groups[s].append((rank_key(seed, k), i))
    alloc = allocate({s: len(v) for s, v in groups.items()}, n)
    chosen = sorted(i for s, rows in groups.items() for _, i in sorted(rows)[: alloc[s]])
    return table.take(pa.array(chosen, pa.int64()))


def counts(table: pa.Table, column: str) -> list[tuple[str, int]]:
    """(value, count) pairs, most common first; nulls count as 'unknown'."""
    col = pc.fill_null(table.column(column), "unknown")
    vc = pc.value_counts(col).to_pylist()
    return sorted(((d["values"], d["counts"]) for d in vc), key=lambda x: (-x[1], x[0]))
