"""BERTScore: medhall's ``bertscore`` against ``bert_score.score`` on the MedHallTune release's
pairs (LLaVA-Med-v1.5-7B's answers vs the GPT-4o reference answers), same encoder, same layer.

    python benchmarks/bertscore_speed.py               # 500 pairs (a seeded sample), 2 rounds
    python benchmarks/bertscore_speed.py --n 2238      # every pair of the release

Both arms run in one process, in alternating order (round 1: medhall then bert_score, round 2:
bert_score then medhall, ...), and both start cold in every round: ``bert_score.score`` loads
its model on every call, and medhall's once-per-process encoder cache is cleared before each of
its rounds, so the timed medhall call loads the model too. Only imports happen before timing.
Reported: each call's seconds and the load average around it (other jobs share the machine),
the ratio medhall / bert_score (total over rounds, and per round), and the largest absolute
difference between the two arms' F1 values (must be <= 1e-6). Results go to
benchmarks/results/bertscore_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

RELEASE = HERE.parent.parent / "shared" / "data" / "medhalltune"
FILES = ("llava-med-prediction-postive-GPT4o-eval-filtered.jsonl", "llava-med-prediction-negative-GPT4o-eval-filtered.jsonl")
TOLERANCE = 1e-6


def release_pairs(folder: Path) -> list[tuple[str, str]]:
    """(reference, answer) of every question in the release's two prediction files, read as
    the evaluation reads them (``medhall.evaluate.predictions``)."""
    from medhall.evaluate.predictions import RELEASE_MODEL, import_predictions, release_questions

    paths = [folder / f for f in FILES]
    refs = {q.qa_id: q.ground_truth for p in paths for q in release_questions(p)[0]}
    return [(refs[r["qa_id"]], r["answer"]) for p in paths for r in import_predictions(p, RELEASE_MODEL)[0].to_pylist()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="pairs (a seeded sample, in release order); 2238: all")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of both arms, order alternating")
    ap.add_argument("--batch-size", type=int, default=64, help="bert_score's batch_size and medhall's")
    ap.add_argument("--model", default=None, help="encoder directory (default: the shipped all-MiniLM-L6-v2)")
    ap.add_argument("--layers", type=int, default=None, help="layer (default: 6 for the shipped MiniLM)")
    ap.add_argument("--data", type=Path, default=RELEASE)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bertscore_speed.json")
    args = ap.parse_args()

    import bert_score
    import torch

    from medhall.evaluate import text_metrics as tm

    if not all((args.data / f).is_file() for f in FILES):
        print(f"skipped: the MedHallTune release prediction files are not in {args.data} ({', '.join(FILES)})")
        return 0
    pairs = release_pairs(args.data)
    if args.n < len(pairs):
        keep = sorted(random.Random(0).sample(range(len(pairs)), args.n))
        pairs = [pairs[i] for i in keep]
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    model_dir = args.model or str(tm.default_encoder_dir())
    layers = args.layers or (tm.DEFAULT_ENCODER_LAYERS if args.model is None else None)
    if layers is None:
        ap.error("--layers is required with --model")
    print(f"{len(pairs)} pairs, encoder {model_dir} layer {layers}, batch {args.batch_size}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads", flush=True)

    def run_medhall() -> list[float]:
        tm._encoder.cache_clear()  # cold: the model is loaded inside the timed call
        return tm.bertscore(refs, hyps, model=args.model, num_layers=layers, batch_size=args.batch_size).values

    def run_bert_score() -> list[float]:
        _, _, f1 = bert_score.score(hyps, refs, model_type=model_dir, num_layers=layers, batch_size=args.batch_size)
        return [float(v) for v in f1.tolist()]

    arms = {"medhall": run_medhall, "bert_score": run_bert_score}
    calls: list[dict] = []
    values: dict[str, list[list[float]]] = {}
    for rnd in range(args.rounds):
        for arm in (["medhall", "bert_score"] if rnd % 2 == 0 else ["bert_score", "medhall"]):
            load_before = os.getloadavg()[0]
            t0 = time.perf_counter()
            got = arms[arm]()
            seconds = time.perf_counter() - t0
            calls.append({"round": rnd + 1, "arm": arm, "seconds": seconds, "load1_before": load_before,
                          "load1_after": os.getloadavg()[0]})
            print(f"round {rnd + 1}  {arm:<10}  {seconds:7.1f} s  (load {load_before:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
            values.setdefault(arm, []).append(got)
    max_diff = max(abs(a - b) for m in values["medhall"] for b_ in values["bert_score"] for a, b in zip(m, b_, strict=True))
    total = {a: sum(c["seconds"] for c in calls if c["arm"] == a) for a in arms}
    per_round = [
        sum(c["seconds"] for c in calls if c["round"] == r and c["arm"] == "medhall")
        / sum(c["seconds"] for c in calls if c["round"] == r and c["arm"] == "bert_score")
        for r in range(1, args.rounds + 1)
    ]
    summary = {
        "pairs": len(pairs),
        "encoder": model_dir if args.model else tm.DEFAULT_ENCODER,
        "num_layers": layers,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "medhall_s": total["medhall"] / args.rounds,
        "bert_score_s": total["bert_score"] / args.rounds,
        "ratio": total["medhall"] / total["bert_score"],
        "ratio_per_round": per_round,
        "max_abs_diff": max_diff,
        "identical": max_diff <= TOLERANCE,
        "mean_f1": sum(values["medhall"][0]) / len(pairs),
    }
    print(f"medhall {summary['medhall_s']:.1f} s, bert_score {summary['bert_score_s']:.1f} s per call: "
          f"ratio medhall / bert_score = {summary['ratio']:.3f} (per round: "
          f"{', '.join(f'{r:.3f}' for r in per_round)}); max |diff| {max_diff:.2e} "
          f"({'identical' if summary['identical'] else f'OVER {TOLERANCE:g}'}), mean F1 {summary['mean_f1']:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"calls": calls, "summary": summary}, indent=2))
    return 0 if summary["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
