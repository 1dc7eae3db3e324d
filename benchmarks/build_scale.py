"""Dataset build at scale: N images x 10 instructions through generation (the scripted fake
backend through the real LLM layer, zero latency), QC (rules), split and every export.

    python benchmarks/build_scale.py                      # 10k and 100k images
    python benchmarks/build_scale.py --sizes 2000 20000   # quicker

Each size runs in a fresh process (so peak RSS is that size's own) on a fresh store. Reported:
wall time per stage, images/s, the process's peak RSS, and each stage's own peak RSS
(sampled every 20 ms); the memory claim is the ratio of a stage's peak between the largest and
the smallest size against the ratio of their sizes (a flat stage stays near 1).
Results go to benchmarks/results/build_scale.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

CAPTIONS = [
    "Axial contrast-enhanced CT of the abdomen shows a large hypodense lesion in the right lobe of the liver with peripheral enhancement.",
    "Chest radiograph, PA view, demonstrating consolidation in the left lower lobe and a small left pleural effusion.",
    "Sagittal T2-weighted MRI of the lumbar spine shows a disc herniation at L4-L5 compressing the thecal sac.",
    "Fundus photograph of the right eye with multiple microaneurysms and hard exudates near the macula.",
    "H&E stained section showing nests of atypical epithelial cells infiltrating the stroma, consistent with carcinoma.",
    "Transthoracic echocardiogram, apical four-chamber view, showing a dilated left ventricle with reduced wall motion.",
    "Axial non-contrast CT of the head shows an acute subdural hematoma over the left frontal convexity with midline shift.",
    "Ultrasound of the right kidney demonstrates moderate hydronephrosis and a 7 mm echogenic stone with acoustic shadowing.",
]
MODALITIES = ["CT", "radiograph", "MR", "fundus", "histology", "ultrasound", "CT", "ultrasound"]


def synthetic_images(n: int, batch: int = 20_000):
    """n images (no files: captions and labels only) in batches, ids stable for a given n."""
    from medhall import schema
    from medhall.ids import content_id

    for start in range(0, n, batch):
        rows = []
        for i in range(start, min(n, start + batch)):
            k = i % len(CAPTIONS)
            rows.append({
                "image_id": content_id("img", "bench", i), "dataset": "bench-src", "source": "generic",
                "image_ref": f"img_{i}.jpg", "image_status": "missing", "caption": f"{CAPTIONS[k]} (case {i})",
                "modality": MODALITIES[k], "body_part": "unknown",
            })
        yield schema.from_rows("images", rows)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StagePeaks:
    """Samples the resident set every 20 ms; ``stage(name)`` records each stage's own peak."""

    def __init__(self) -> None:
        import threading

        self.peaks: dict[str, float] = {}
        self._current = "setup"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peaks[self._current] = max(self.peaks.get(self._current, 0.0), self.rss_mib())

    def stage(self, name: str) -> None:
        import gc

        gc.collect()
        self._current = name
        self.peaks[name] = self.rss_mib()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peaks.items()}


def one(n: int, shard_size: int) -> dict:
    """Run the whole build for n images in this process; report stage times and peak RSS."""
    from medhall.build import (
        BuildConfig,
        assemble,
        generate_shard,
        prepare,
        split_and_export,
        statistics,
    )
    from medhall.endpoints import LLMSettings
    from medhall.generate import CorpusStats
    from medhall.llm import FakeBackend, LLMClient
    from medhall.store import ArtifactStore
    from medhall.testing import fake_script

    root = Path(tempfile.mkdtemp(prefix=f"medhall-bench-{n}-"))
    store = ArtifactStore(root)
    times: dict[str, float] = {}
    peaks = StagePeaks()
    t0 = time.perf_counter()
    store.write("images", synthetic_images(n), dataset="bench-src")
    times["setup"] = time.perf_counter() - t0
    cfg = BuildConfig(
        source="bench-src", dataset="bench", generator="llm", llm=LLMSettings(model="fake-model"),
        questions_per_image=10, shard_size=shard_size, test_images=200,
    )
    client = LLMClient(FakeBackend(fake_script, keep_requests=False), cache=root / "llm.sqlite", max_concurrency=64)
    t = time.perf_counter()
    peaks.stage("generate+qc")
    plan = prepare(store, cfg)
    stats = CorpusStats.from_json(plan.stats_path.read_text())
    for shard in plan.todo:  # as the flow's shard tasks: each reads its own images from the store
        generate_shard(store, cfg, plan.work_dir, plan.stats_path, shard, "bench", stats=stats, client=client)
    times["generate+qc"] = time.perf_counter() - t
    rss_after_generate = peak_rss_mib()
    del stats
    peaks.stage("assemble")
    t = time.perf_counter()
    arts = assemble(store, cfg, plan.work_dir, plan.images_fingerprint, "bench")
    times["assemble"] = time.perf_counter() - t
    peaks.stage("split+export")
    t = time.perf_counter()
    split_and_export(store, cfg, "bench")
    times["split+export"] = time.perf_counter() - t
    peaks.stage("statistics")
    t = time.perf_counter()
    statistics(store, cfg)
    times["statistics"] = time.perf_counter() - t
    stage_peaks, process_peak = peaks.stop(), peak_rss_mib()
    total = sum(v for k, v in times.items() if k != "setup")
    ledger = client.ledger_table()  # after the sampler stopped: reading 10 rows per image is the benchmark's, not the build's
    return {
        "images": n, "pairs": arts["instructions"].rows, "verdicts": arts["qc_verdicts"].rows,
        "llm_calls": ledger.num_rows, "seconds": times, "total_s": total, "images_per_s": n / total,
        "peak_rss_mib_after_generate": rss_after_generate, "peak_rss_mib": process_peak,
        "stage_peak_rss_mib": stage_peaks, "store": str(root),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--shard-size", type=int, default=2000)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "build_scale.json")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.shard_size)))
        return 0
    results = []
    for n in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--shard-size", str(args.shard_size)],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        s = r["seconds"]
        print(f"{n:>8} images  {r['pairs']:>9} pairs  {r['total_s']:7.1f} s  {r['images_per_s']:7.0f} img/s  "
              f"peak {r['peak_rss_mib']:6.0f} MiB (after generation {r['peak_rss_mib_after_generate']:.0f})  "
              + "  ".join(f"{k} {v:.1f}s" for k, v in s.items()), flush=True)
        print("          stage peak RSS MiB: " + "  ".join(f"{k} {v:.0f}" for k, v in r["stage_peak_rss_mib"].items()), flush=True)
    lo, hi = results[0], results[-1]
    summary = {
        "size_ratio": hi["images"] / lo["images"],
        "peak_rss_ratio": hi["peak_rss_mib"] / lo["peak_rss_mib"],
        "peak_rss_ratio_generation": hi["peak_rss_mib_after_generate"] / lo["peak_rss_mib_after_generate"],
        "stage_peak_ratio": {k: hi["stage_peak_rss_mib"][k] / lo["stage_peak_rss_mib"][k] for k in lo["stage_peak_rss_mib"]},
        "time_per_image_ratio": (hi["total_s"] / hi["images"]) / (lo["total_s"] / lo["images"]),
    }
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
