"""Export throughput and peak memory on a synthetic corpus (not collected by pytest).

    python tests/split_export/bench_exports.py --pairs 1000000 --dir /tmp/medhall-bench

Step 1 builds the corpus (images, instructions, verdicts, splits as Parquet) once. Step 2
runs each format in its own process (so peak RSS is that format's own): read the tables,
``export_all`` of the QC-filtered pairs, print rows/s, the RSS after loading the tables
and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

TABLES = ("images", "instructions", "verdicts", "splits")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(pairs: int, folder: Path) -> None:
    from synthetic import make_dataset

    from medhall.split import split_by_image

    folder.mkdir(parents=True, exist_ok=True)
    if all((folder / f"{t}.parquet").exists() for t in TABLES):
        return
    t0 = time.perf_counter()
    data = make_dataset(max(pairs // 5, 250), seed=1, pairs=(4, 6))
    splits = split_by_image(data.images, test_images=200, seed=0)
    for name, table in zip(TABLES, (data.images, data.instructions, data.verdicts, splits), strict=True):
        pq.write_table(table, folder / f"{name}.parquet")
    print(f"built {data.instructions.num_rows} pairs / {data.images.num_rows} images in {time.perf_counter() - t0:.1f}s")


def export(fmt: str, folder: Path) -> dict:
    from medhall.export import export_all
    from medhall.split import filtered

    t = {name: pq.read_table(folder / f"{name}.parquet") for name in TABLES}
    dataset = filtered(t["instructions"], t["verdicts"])
    loaded = rss_mib()
    t0 = time.perf_counter()
    written = export_all(dataset, t["images"], t["splits"], folder / "out", formats=[fmt], name="bench")
    elapsed = time.perf_counter() - t0
    return {
        "format": fmt,
        "rows": dataset.num_rows,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(dataset.num_rows / elapsed),
        "rss_after_load_mib": round(loaded),
        "peak_rss_mib": round(peak_mib()),
        "bytes": sum(p.stat().st_size for p in written[fmt]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/medhall-bench"))
    ap.add_argument("--formats", default="llava,llamafactory,medhalltune,parquet")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(export(args.one, args.dir)))
        return
    build(args.pairs, args.dir)
    for fmt in args.formats.split(","):
        out = subprocess.run([sys.executable, __file__, "--dir", str(args.dir), "--one", fmt], check=True, capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
