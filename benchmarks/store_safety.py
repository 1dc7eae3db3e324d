"""The store under repeated and concurrent writers: disk added by a one-row rebuild, and LLM
requests paid by two builds of the same images at once.

    python benchmarks/store_safety.py                 # 20,000 images; 400 images for the LLM part
    python benchmarks/store_safety.py --images 5000

1. **Disk per rebuild.** N synthetic images (captions only), built offline (10 pairs each, every
   export and ablation subset). Then one image is added and the dataset rebuilt, three times.
   Reported: the disk the home gains per rebuild (hard links counted once), against the size of
   one full export folder, which is what each rebuild added before exports shared unchanged
   files and old exports were pruned (the ratio is the claim: about its own size, << 1).
2. **Concurrent builds.** 400 images built with the LLM generator and LLM QC against the local
   OpenAI-compatible test server (50 ms latency), by two processes at once, once as two builds
   of *different* datasets from one source and once as two builds of the *same* dataset (the
   second waits with ``--wait``). Reported: requests the server served against the distinct
   requests of one build (the claim: ratio 1.00, nothing paid twice).

Results go to benchmarks/results/store_safety.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from build_scale import synthetic_images  # noqa: E402
from parallel_build import _server_module  # noqa: E402  (the local test server, loaded once)


def disk_per_rebuild(n: int, rebuilds: int) -> dict:
    from medhall import schema
    from medhall.build import BuildConfig, run_build
    from medhall.store import ArtifactStore
    from medhall.store.housekeeping import disk_usage, export_versions

    root = Path(tempfile.mkdtemp(prefix="medhall-bench-disk-"))
    store = ArtifactStore(root)
    images = list(synthetic_images(n))
    store.write("images", images, dataset="src")
    cfg = BuildConfig(source="src", dataset="grow", generator="offline", questions_per_image=10,
                      test_images=min(200, n // 10), shard_size=max(1000, n // 8))
    t = time.perf_counter()
    run_build(store, cfg)
    first_s = time.perf_counter() - t
    export_size = disk_usage(export_versions(store, "grow")[-1:])
    sizes = [disk_usage([root])]
    added, times = [], []
    for k in range(rebuilds):
        extra = schema.from_rows("images", [{
            "image_id": f"img_added_{k}", "dataset": "src", "source": "generic", "image_ref": f"added_{k}.jpg",
            "image_status": "missing", "caption": f"Axial CT of the chest shows a new nodule in the right upper lobe ({k}).",
            "modality": "CT", "body_part": "chest"}])
        images = [*images, extra]
        store.write("images", images, dataset="src")
        t = time.perf_counter()
        run_build(store, cfg)
        times.append(time.perf_counter() - t)
        sizes.append(disk_usage([root]))
        added.append(sizes[-1] - sizes[-2])
    store_part = disk_usage([root / "store"])
    return {
        "images": n, "first_build_s": round(first_s, 1), "rebuild_s": [round(x, 1) for x in times],
        "export_folder_bytes": export_size, "home_bytes": sizes, "added_bytes": added,
        "added_over_export": [round(a / export_size, 3) for a in added],
        "store_tables_bytes": store_part, "export_folders_kept": len(export_versions(store, "grow")),
    }


def _build(home: Path, dataset: str, url: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "medhall.cli", "--home", str(home), "build", "--local", "--source", "src",
           "--dataset", dataset, "--generator", "llm", "--llm-qc", "--model", "test-model", "--base-url", url,
           "--text-only", "-q", "4", "--test-images", "20", "--shard-size", "50", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "MEDHALL_LLM_API_KEY": "sk-bench"})


def concurrent_builds(n: int) -> dict:
    from medhall.store import ArtifactStore

    out = {}
    server_mod = _server_module()
    with server_mod.ServerProcess(latency=0.05, responder="medhall") as server:
        for case, names, extra in (("different datasets", ("one", "two"), ()), ("same dataset", ("same", "same"), ("--wait",))):
            home = Path(tempfile.mkdtemp(prefix="medhall-bench-conc-"))
            ArtifactStore(home).write("images", list(synthetic_images(n)), dataset="src")
            server.reset()
            t = time.perf_counter()
            procs = [_build(home, name, server.base_url, *extra) for name in names]
            results = [p.communicate() for p in procs]
            wall = time.perf_counter() - t
            codes = [p.returncode for p in procs]
            served = server.stats()
            by_prompt = served["by_prompt"]
            # one more build of the same images from an empty cache: the requests of one build
            solo_home = Path(tempfile.mkdtemp(prefix="medhall-bench-solo-"))
            ArtifactStore(solo_home).write("images", list(synthetic_images(n)), dataset="src")
            server.reset()
            p = _build(solo_home, names[0], server.base_url)
            p.communicate()
            one_build = sum(c["served"] for c in server.stats()["by_prompt"].values())
            paid = sum(c["served"] for c in by_prompt.values())
            out[case] = {
                "exit_codes": codes, "wall_s": round(wall, 1), "requests_served": paid,
                "requests_of_one_build": one_build, "paid_twice": sum(c["served"] > 1 for c in by_prompt.values()),
                "ratio": round(paid / one_build, 3) if one_build else None,
                "stderr_tail": [r[1][-300:] for r, c in zip(results, codes, strict=True) if c],
            }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20_000, help="0: skip the disk part")
    ap.add_argument("--rebuilds", type=int, default=3)
    ap.add_argument("--llm-images", type=int, default=400)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "store_safety.json")
    args = ap.parse_args()
    mb = 1e6
    disk = disk_per_rebuild(args.images, args.rebuilds) if args.images else None
    if disk:
        print(f"disk: {disk['images']} images, one export folder {disk['export_folder_bytes'] / mb:.1f} MB; "
              f"each one-row rebuild added {', '.join(f'{a / mb:.2f} MB' for a in disk['added_bytes'])} "
              f"({', '.join(str(r) for r in disk['added_over_export'])} of an export folder)", flush=True)
    conc = concurrent_builds(args.llm_images)
    for case, r in conc.items():
        print(f"concurrent builds, {case}: exit {r['exit_codes']}, {r['requests_served']} requests served for "
              f"{r['requests_of_one_build']} of one build (ratio {r['ratio']}), {r['paid_twice']} paid twice, "
              f"{r['wall_s']} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"disk_per_rebuild": disk, "concurrent_builds": conc}, indent=2))
    ok = all(c == 0 for r in conc.values() for c in r["exit_codes"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
