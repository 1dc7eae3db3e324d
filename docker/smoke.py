"""Build-time check of a medhall image: the code imports and torch is the build asked for.

    python docker/smoke.py --torch cpu    # docker/Dockerfile: a CPU-only torch (no CUDA runtime)
    python docker/smoke.py --torch cuda   # docker/Dockerfile.gpu: a CUDA torch (no GPU needed)

Imports medhall, the tasks and the flows (what a worker loads for every deployment), finds the
``medhall`` command's flow entry point, and prints what it found. Exits 1 when torch is not the
requested build, so an image that would silently train on the CPU (or carry gigabytes of CUDA
for nothing) fails its build instead. tests/test_docker.py runs it outside Docker.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points, version


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch", choices=["cpu", "cuda", "any"], default="any")
    args = ap.parse_args(argv)

    for name in ("medhall", "medhall.cli", "tasks", "flows", "flows.default", "flows.train_lora"):
        importlib.import_module(name)
    eps = [ep.name for ep in entry_points(group="medhall")]
    if "flows" not in eps:
        print("the 'medhall' entry point 'flows' is missing: is medhall installed?", file=sys.stderr)
        return 1

    import torch

    cuda = torch.version.cuda
    print(f"medhall {version('medhall')}, prefect {version('prefect')}, torch {torch.__version__} "
          f"(CUDA {cuda or 'none'})")
    if args.torch == "cpu" and cuda is not None:
        print(f"expected a CPU-only torch, found a CUDA {cuda} build", file=sys.stderr)
        return 1
    if args.torch == "cuda" and cuda is None:
        print("expected a CUDA build of torch, found a CPU-only one", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
