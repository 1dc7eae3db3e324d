"""Run every benchmark in this folder (each is a script that writes JSON to benchmarks/results/).

    python benchmarks/run_all.py            # all
    python benchmarks/run_all.py llm        # those whose file name contains "llm"
    python benchmarks/run_all.py bertscore  # bertscore_speed.py: medhall's BERTScore vs bert_score's

Every ``*.py`` here but this file is a benchmark: llm_throughput, build_scale, bertscore_speed
(needs the MedHallTune release files in ../shared/data/medhalltune; skipped without them), ...
    python benchmarks/run_all.py train      # train_throughput.py (CPU arms; its --device-check is run by hand)

Scripts: llm_throughput.py (the LLM layer), build_scale.py (the dataset build at scale),
train_throughput.py (LoRA training against a plain transformers Trainer).

Benchmarks report ratios against a limit or a baseline measured in the same run, never bare
timings; they are not tests and do not run in CI.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    wanted = argv[1:] or [""]
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name and any(w in p.stem for w in wanted))
    failed = 0
    for script in scripts:
        t0 = time.perf_counter()
        print(f"== {script.name}", flush=True)
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"== {script.name}: exit {rc} in {time.perf_counter() - t0:.1f} s", flush=True)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
