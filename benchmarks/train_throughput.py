"""Training throughput: medhall's LoRA training (``run_training``) against a plain ``Trainer``.

    python benchmarks/train_throughput.py                        # tiny:llava, 5 rounds of 100 steps, about 1 min
    python benchmarks/train_throughput.py --family qwen2-vl
    python benchmarks/train_throughput.py --dataset NAME --home ~/.medhall   # a built dataset's train split
    python benchmarks/train_throughput.py --device-check         # 7B-shaped LLaVA on one GPU (bf16)

Two arms train the same model on the same encoded data, alternating for ``--rounds`` rounds in
ABBA order (medhall, baseline, baseline, medhall, ...), and the medians are reported, so neither
arm gains from its place in the order (warm caches, allocator, thread pools, lazy imports). The
headline ``ratio`` is the median of the rounds' ratios (each round's two arms run back to back,
so load that drifts between rounds cancels); ``ratio_of_medians`` is also reported:

- **medhall**: :func:`medhall.train.trainer.run_training` with a :class:`TrainConfig` from
  ``load_config`` (medhall's defaults: LoRA preset ``llava`` r=128 on the language model's linear
  layers, projector trained in full, batch 4, its ``TrainingArguments``, metrics callback).
- **baseline**: the same peft model (``load_for_training``), the same ``TrainDataset`` and
  ``Collator``, handed to ``transformers.Trainer`` with the library's default
  ``TrainingArguments`` except what it needs to run: ``output_dir``, the per-device batch,
  ``max_steps``, ``use_cpu``, ``report_to="none"``, ``remove_unused_columns=False``, and
  medhall's ``seed`` / ``data_seed``, so that both arms draw the same batches in the same order
  (the same data, not only the same dataset: image sizes and lengths differ between examples);
  in ``--device-check`` also ``bf16`` and ``gradient_checkpointing``, as the model is set up.

Each arm is timed over the train loop only: from the trainer's ``on_train_begin`` to its
``on_train_end`` (a callback; model loading, encoding the examples up front, saving the adapter
and recording the run lie outside). The first step is inside the window, as are the checkpoints:
both trainers write one at ``max_steps``, medhall also every ``save_steps`` (50) steps;
``steps_tokens_per_s`` leaves the last one out, and ``checkpoint_overhead`` is the share of a
long run that medhall's checkpoints take at the measured seconds per checkpoint and per step.
``between_steps_share`` is the share of the loop the host spends outside steps (from
``on_step_end`` to the next ``on_step_begin``: fetching and encoding the next batch in the
main process, logging, checkpoints). Tokens are the non-pad input tokens (``attention_mask`` summed, image tokens included) of every
training forward pass, counted by a forward pre-hook on the model, the same in both arms.

On the CPU torch runs one thread (``--threads``): on a shared 2-core machine two OpenMP threads
slow down 20-100x whenever another process holds a core, one thread only by the share it loses.
Each round also records the CPU the process used and what other processes used meanwhile
(/proc/stat), and ``ratio_cpu_time`` compares tokens per CPU-second of the process, which other
load moves far less. The trainers' own output (medhall prints a log line per step) goes to
``trainers.log`` in the run's temporary folder.

Model FLOPs (what the MFU counts; PaLM's convention, recomputation by gradient checkpointing not
counted), per batch, with ``t`` a sequence's non-pad length and ``N`` parameter counts:

- language model (every linear weight including ``lm_head``, not the embedding table):
  ``(4 * N_frozen + 6 * N_trainable) * t`` per sequence: forward ``2N``; backward ``2N`` for the
  activation gradient (needed through frozen weights too, since the adapter and the projector
  below them train) and ``2N`` more for the weight gradient of trainable weights only (LoRA A/B);
  plus attention ``12 * L * d_attn * t**2`` (``QK^T`` and ``AV``, forward and backward);
- projector (``multi_modal_projector`` / ``merger``): ``(2 + 2 * trainable) * N`` per image
  token (no input gradient: the vision tower below it is frozen);
- vision tower (frozen, nothing below it trains: forward only): ``2 * N_vision`` per patch plus
  attention ``4 * L_v * d_v * p**2`` per image of ``p`` patches.

MFU is model FLOPs / loop seconds / peak FLOP/s. The peak is, on the CPU, measured in the same
run: the best of a few large fp32 ``torch.matmul`` s with torch's threads (CPU training runs in
fp32); on a GPU, the datasheet's dense bf16 figure (H100 SXM and H200: 989 TFLOP/s); either is
replaced by ``--peak-tflops``.

``--device-check`` builds a 7B-shaped LLaVA-1.5 from config (Llama-2-7B text: hidden 4096,
32 layers, 32 heads, intermediate 11008, vocabulary 32000; CLIP ViT-L/14-336 vision) with random
weights straight on the GPU in bf16 (no download; its size is checked on the meta device first,
about 7.06B parameters), trains it with gradient checkpointing for ``--steps`` steps (10)
in both arms, two rounds (ABBA) after a CUDA warm-up that neither arm is charged for, and
reports tokens/s, MFU and ``torch.cuda.max_memory_allocated``. Without CUDA it prints the
parameter count and exits with status 2. The tokenizer is the tiny byte-level one of
:mod:`medhall.infer.tiny` (token ids stay below 32000), so texts run to more tokens than Llama's
tokenizer would make; 576 image tokens per image, as LLaVA-1.5.

With ``--dataset``, ``run_training`` records every medhall round in that store (``train_runs``,
``train_metrics``) as any run does, and builds the tiny model under its ``models/``: point
``--home`` at a copy to keep a store as it was.

Results go to benchmarks/results/train_throughput.json (``--device-check``:
train_throughput_device.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

#: Dense bf16 peak FLOP/s by GPU name (datasheets, no sparsity); the first key found in the name wins.
GPU_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0}

# -- synthetic data ----------------------------------------------------------------------------

FINDINGS = [
    "a well-circumscribed hypodense lesion in segment VI of the liver with peripheral nodular enhancement",
    "consolidation of the left lower lobe with air bronchograms and a small ipsilateral pleural effusion",
    "a posterolateral disc protrusion at L4-L5 narrowing the right lateral recess",
    "scattered microaneurysms, dot-blot haemorrhages and hard exudates within one disc diameter of the fovea",
    "nests of atypical epithelial cells with enlarged hyperchromatic nuclei infiltrating a desmoplastic stroma",
    "an acute subdural haematoma over the left frontoparietal convexity with 6 mm of midline shift",
    "moderate hydronephrosis of the right kidney with a 7 mm echogenic calculus at the pelviureteric junction",
    "a dilated left ventricle with global hypokinesis and an estimated ejection fraction of about 30 percent",
]
QUESTIONS = [
    "What abnormality is visible in this image, and where exactly is it located?",
    "Describe the most important finding in this {mod} and what it most likely represents.",
    "Is there any evidence of {thing} in this {mod}? Explain what you see that supports your answer.",
    "Which imaging modality was used here, and which anatomical region is shown?",
    "Based on this {mod}, what is the most likely diagnosis and what features support it?",
    "Are there any signs of complications, such as {thing}, in this image?",
]
MODS = ["CT scan", "chest radiograph", "MRI", "fundus photograph", "histology slide", "ultrasound"]
THINGS = ["a fracture", "free fluid", "a mass effect", "calcification", "pneumothorax", "an abscess"]
HEDGES = [
    "The appearance is typical, although correlation with the clinical history is advised.",
    "No other acute abnormality is seen in the visible field.",
    "Comparison with prior studies would help to assess interval change.",
    "The remaining structures appear within normal limits for the patient's age.",
    "Further characterisation with a dedicated contrast-enhanced study could be considered.",
]


def synthetic_llava_json(root: Path, n: int, *, seed: int = 0, sizes: tuple[int, int] = (64, 160)) -> Path:
    """``n`` LLaVA records (one question, one answer; questions of 10-25 words, answers of
    20-80 words, as medical VQA instructions run) with PNG images of random size in ``sizes``."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        w, h = rng.randint(*sizes), rng.randint(*sizes)
        Image.fromarray(nprng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        q = rng.choice(QUESTIONS).format(mod=rng.choice(MODS), thing=rng.choice(THINGS))
        answer = f"The image shows {rng.choice(FINDINGS)}."
        for _ in range(rng.randint(0, 3)):
            answer += f" There is also {rng.choice(FINDINGS)}." if rng.random() < 0.4 else f" {rng.choice(HEDGES)}"
        records.append({"id": f"bench-{i}", "image": f"images/{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": answer}]})
    path = root / "train.json"
    path.write_text(json.dumps(records))
    return path


# -- counting ----------------------------------------------------------------------------------


@dataclass
class FlopModel:
    """Parameter counts by role and the attention shapes (see the module docstring)."""

    lm_frozen: int
    lm_trainable: int
    projector: int
    projector_trainable: bool
    vision: int
    lm_layers: int
    lm_attn_width: int
    vision_layers: int
    vision_width: int
    vision_patch: int
    image_token_id: int | None

    @classmethod
    def of(cls, model: Any) -> FlopModel:
        from medhall.train.model import PROJECTORS

        config = model.config
        projector_name = PROJECTORS.get(config.model_type, "multi_modal_projector")
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        embed = inner.get_input_embeddings().weight
        head = inner.get_output_embeddings().weight
        lm_frozen = lm_trainable = proj = vision = 0
        proj_trainable = False
        for name, p in model.named_parameters():
            if "original_module" in name or p is embed:  # peft's unused copy; a lookup, no FLOPs
                continue
            n = p.numel()
            if f".{projector_name}." in name:
                proj += n
                proj_trainable |= p.requires_grad
            elif ".vision_tower." in name or ".visual." in name:
                vision += n
            elif p.requires_grad:
                lm_trainable += n
            else:
                lm_frozen += n
        if head is embed:  # tied: lm_head is a matmul even though its weight is the embedding's
            lm_frozen += head.numel()
        text, vis = config.get_text_config(), config.vision_config
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(
            lm_frozen=lm_frozen, lm_trainable=lm_trainable, projector=proj, projector_trainable=proj_trainable,
            vision=vision, lm_layers=text.num_hidden_layers, lm_attn_width=heads * head_dim,
            vision_layers=getattr(vis, "num_hidden_layers", None) or vis.depth,
            vision_width=getattr(vis, "embed_dim", None) or vis.hidden_size, vision_patch=vis.patch_size,
            image_token_id=getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None),
        )

    def flops(self, lengths: list[int], image_tokens: int, image_patches: list[int]) -> float:
        lm = sum((4 * self.lm_frozen + 6 * self.lm_trainable) * t + 12 * self.lm_layers * self.lm_attn_width * t * t
                 for t in lengths)
        proj = (4 if self.projector_trainable else 2) * self.projector * image_tokens
        vision = sum(2 * self.vision * p + 4 * self.vision_layers * self.vision_width * p * p for p in image_patches)
        return float(lm + proj + vision)


def meter_callback() -> Any:
    """A ``TrainerCallback`` that times the train loop and counts what each training forward
    pass processed (a forward pre-hook on the model; tensors kept on their device and read at
    the end, so the count adds no device synchronisation to the loop)."""
    import torch
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        def __init__(self) -> None:
            self.begin = self.end = self.last_step_end = 0.0
            self.steps = self.saves = 0
            self.save_s = self.in_steps_s = self._step_begin = 0.0
            self.flop_model: FlopModel | None = None
            self._lengths: list[Any] = []
            self._padded = 0
            self._image_tokens: list[Any] = []
            self._patches: list[Any] = []
            self._handle: Any = None
            self._cpu0 = self._cpu1 = 0.0
            self._busy0: float | None = None
            self._busy1: float | None = None

        def _hook(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            if not module.training:
                return
            mask, ids = kwargs.get("attention_mask"), kwargs.get("input_ids")
            self._lengths.append(mask.detach().sum(1))
            self._padded += ids.numel()
            fm = self.flop_model
            if fm is not None and fm.image_token_id is not None:
                self._image_tokens.append((ids == fm.image_token_id).sum())
            pixels, grid = kwargs.get("pixel_values"), kwargs.get("image_grid_thw")
            if grid is not None:  # Qwen2-VL: one row (t, h, w) per image, patches = t*h*w
                self._patches.append(grid.detach().prod(-1))
            elif pixels is not None and fm is not None:  # CLIP: (images, 3, H, W), plus the class token
                hw = (pixels.shape[-2] // fm.vision_patch) * (pixels.shape[-1] // fm.vision_patch) + 1
                self._patches.append(torch.full((pixels.shape[0],), hw))

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
            self.flop_model = FlopModel.of(model)
            self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)
            _sync()
            self._cpu0, self._busy0 = time.process_time(), cpu_busy_s()
            self.begin = time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self._step_begin = time.perf_counter()  # after the step's batches were fetched and collated

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            # no device synchronisation here: it would change what is measured (a step's kernels
            # may still run while the host fetches the next batch)
            self.last_step_end = time.perf_counter()
            self.in_steps_s += self.last_step_end - self._step_begin
            self.steps += 1

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.saves += 1
            self.save_s += time.perf_counter() - self.last_step_end

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            _sync()
            self.end = time.perf_counter()
            self._cpu1, self._busy1 = time.process_time(), cpu_busy_s()
            if self._handle is not None:
                self._handle.remove()

        def result(self) -> dict[str, Any]:
            lengths = [int(t) for x in self._lengths for t in x.tolist()]
            patches = [int(p) for x in self._patches for p in x.tolist()]
            image_tokens = int(sum(int(x) for x in self._image_tokens))
            tokens = sum(lengths)
            loop, steps = self.end - self.begin, self.last_step_end - self.begin
            flops = self.flop_model.flops(lengths, image_tokens, patches) if self.flop_model else float("nan")
            own = self._cpu1 - self._cpu0
            other = None if self._busy0 is None else max(0.0, (self._busy1 - self._busy0) - own) / loop
            return {"steps": self.steps, "sequences": len(lengths), "tokens": tokens, "padded_tokens": self._padded,
                    "image_tokens": image_tokens, "images": len(patches), "loop_s": loop, "steps_s": steps,
                    "checkpoints": self.saves, "checkpoint_s": self.save_s,
                    "between_steps_share": 1 - self.in_steps_s / loop,
                    "tokens_per_s": tokens / loop, "steps_tokens_per_s": tokens / steps, "model_flops": flops,
                    "own_cpu_per_s": own / loop, "other_processes_cpu_per_s": other,
                    "flop_model": asdict(self.flop_model) if self.flop_model else None}

    return Meter()


def cpu_busy_s() -> float | None:
    """Seconds of CPU the whole machine spent busy (all cores, /proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return None
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")  # user nice system irq softirq


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cpu_peak_flops(n: int = 2048, reps: int = 10) -> float:
    """The best FLOP/s of ``reps`` fp32 ``n x n`` matmuls (after one untimed) with torch's threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def gpu_peak_flops() -> float | None:
    import torch

    name = torch.cuda.get_device_name()
    for key, tflops in GPU_PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


# -- the two arms --------------------------------------------------------------------------------


def medhall_arm(store: Any, cfg: Any, out: Path) -> dict[str, Any]:
    from medhall.train.trainer import run_training

    meter = meter_callback()
    t = time.perf_counter()
    res = run_training(store, cfg.model_copy(update={"output_dir": str(out)}), resume=False, callbacks=[meter])
    wall = time.perf_counter() - t
    return {**meter.result(), "wall_s": wall, "train_loss": res.train_loss, "examples": res.examples}


def baseline_arm(cfg: Any, base_path: str, family: str, data: Any, out: Path, device: str,
                 extra: dict[str, Any]) -> dict[str, Any]:
    from transformers import Trainer, TrainingArguments

    from medhall.train.encode import Collator, Encoder, TrainDataset, fit_examples
    from medhall.train.model import load_for_training

    t = time.perf_counter()
    model, processor = load_for_training(cfg, base_path, family, device)
    encoder = Encoder(processor, max_length=cfg.max_length, overflow=cfg.overflow)
    examples, _ = fit_examples(data.examples, encoder)
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=cfg.per_device_batch,
                             max_steps=cfg.max_steps, use_cpu=device == "cpu", report_to="none",
                             remove_unused_columns=False, seed=cfg.seed, data_seed=cfg.seed, **extra)
    meter = meter_callback()
    trainer = Trainer(model=model, args=args, train_dataset=TrainDataset(examples, encoder),
                      data_collator=Collator(processor.tokenizer.pad_token_id), callbacks=[meter])
    result = trainer.train()
    wall = time.perf_counter() - t
    return {**meter.result(), "wall_s": wall, "train_loss": result.training_loss, "examples": len(examples),
            "optim": str(args.optim)}


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@contextmanager
def output_to(path: Path):
    """The trainers' own output (medhall logs every step; progress bars) into ``path``, so the
    table stays readable; writing it costs the arm what writing to a terminal pipe would."""
    from contextlib import redirect_stderr, redirect_stdout

    with path.open("a") as f, redirect_stdout(f), redirect_stderr(f):
        yield


def run_rounds(store: Any, cfg: Any, base_path: str, family: str, data: Any, rounds: int, work: Path,
               device: str, peak: float, baseline_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Alternate medhall and baseline ``rounds`` times; per-round figures and medians."""
    import torch

    runs: dict[str, list[dict[str, Any]]] = {"medhall": [], "baseline": []}
    log = work / "trainers.log"
    print(f"trainer output: {log}", flush=True)
    for r in range(rounds):
        for arm in ("medhall", "baseline") if r % 2 == 0 else ("baseline", "medhall"):
            free_memory()
            before = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else None
            with output_to(log):
                if arm == "medhall":
                    res = medhall_arm(store, cfg, work / f"medhall-{r}")
                else:
                    res = baseline_arm(cfg, base_path, family, data, work / f"baseline-{r}", device,
                                       baseline_extra or {})
            _sync()
            shutil.rmtree(work / f"{arm}-{r}", ignore_errors=True)  # 7B checkpoints are gigabytes
            if not res["steps"]:
                raise RuntimeError(f"the {arm} arm trained no step (see {log})")
            if device == "cuda":
                res["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
                res["memory_allocated_before_gib"] = before  # what an earlier arm left behind
            res["cpu_tokens_per_s"] = res["tokens"] / (res["own_cpu_per_s"] * res["loop_s"])
            res["mfu"] = res["model_flops"] / res["loop_s"] / peak
            res["steps_mfu"] = res["model_flops"] / res["steps_s"] / peak
            runs[arm].append(res)
            print(f"round {r + 1}/{rounds} {arm:>8}: {res['tokens']:>7} tokens in {res['loop_s']:6.2f} s  "
                  f"{res['tokens_per_s']:9.1f} tok/s  MFU {res['mfu']:.2e}  (arm wall {res['wall_s']:.1f} s; "
                  f"CPU: own {res['own_cpu_per_s']:.2f}, other processes {_fmt(res['other_processes_cpu_per_s'])})",
                  flush=True)
    med = {arm: {k: statistics.median(x[k] for x in rs)
                 for k in ("tokens_per_s", "steps_tokens_per_s", "cpu_tokens_per_s", "mfu", "steps_mfu", "loop_s",
                           "wall_s", "tokens", "checkpoint_s", "checkpoints", "between_steps_share")}
           for arm, rs in runs.items()}
    if device == "cuda":
        for arm, rs in runs.items():
            med[arm]["max_memory_allocated_gib"] = max(x["max_memory_allocated_gib"] for x in rs)
    same = len({x["tokens"] for rs in runs.values() for x in rs}) == 1
    if not same:
        print("warning: the arms processed different token counts (different batches)", flush=True)
    paired = [m["tokens_per_s"] / b["tokens_per_s"] for m, b in zip(runs["medhall"], runs["baseline"], strict=True)]
    return {
        "runs": runs, "median": med,
        "ratio": statistics.median(paired),
        "ratio_of_medians": med["medhall"]["tokens_per_s"] / med["baseline"]["tokens_per_s"],
        "ratio_steps_only": statistics.median(m["steps_tokens_per_s"] / b["steps_tokens_per_s"]
                                              for m, b in zip(runs["medhall"], runs["baseline"], strict=True)),
        "ratio_cpu_time": statistics.median(m["cpu_tokens_per_s"] / b["cpu_tokens_per_s"]
                                            for m, b in zip(runs["medhall"], runs["baseline"], strict=True)),
        "checkpoint_overhead": checkpoint_overhead(med["medhall"], cfg.save_steps, cfg.max_steps),
        "ratio_per_round": paired, "device": device, "same_tokens_every_run": same,
    }


def checkpoint_overhead(m: dict[str, Any], save_steps: int, steps: int) -> float | None:
    """The share of a long run's time that checkpoints every ``save_steps`` steps take, at the
    measured seconds per checkpoint and per step (the run's last checkpoint left out of the step time)."""
    if not m["checkpoints"]:
        return None
    per_save = m["checkpoint_s"] / m["checkpoints"]
    per_step = (m["loop_s"] - m["checkpoint_s"]) / steps
    return per_save / (per_save + save_steps * per_step)


def _fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}"


def print_table(summary: dict[str, Any], peak: float, peak_source: str) -> None:
    med = summary["median"]
    print(f"\n{'arm':>8} | {'tokens/s':>10} | {'w/o last ckpt':>13} | {'MFU':>9} | {'loop s':>7} | "
          f"{'between steps':>13} | {'arm wall s':>10}")
    for arm in ("medhall", "baseline"):
        m = med[arm]
        mem = f" | {m['max_memory_allocated_gib']:.1f} GiB" if "max_memory_allocated_gib" in m else ""
        print(f"{arm:>8} | {m['tokens_per_s']:10.1f} | {m['steps_tokens_per_s']:13.1f} | {m['mfu']:9.2e} | "
              f"{m['loop_s']:7.2f} | {m['between_steps_share']:13.0%} | {m['wall_s']:10.1f}{mem}")
    rounds = ", ".join(f"{x:.3f}" for x in summary["ratio_per_round"])
    print(f"ratio medhall/baseline: {summary['ratio']:.3f}, the median of the rounds' ratios ({rounds}); "
          f"goal >= 1.0")
    print(f"  without the final checkpoint {summary['ratio_steps_only']:.3f}; ratio of the arms' median "
          f"tokens/s {summary['ratio_of_medians']:.3f}")
    if summary["device"] == "cpu":
        print(f"  ratio of tokens per CPU-second of the process (other processes move it far less): "
              f"{summary['ratio_cpu_time']:.3f}")
    if summary["checkpoint_overhead"] is not None:
        print(f"medhall's checkpoints every save_steps steps: {summary['checkpoint_overhead']:.1%} of a long run "
              f"({med['medhall']['checkpoint_s'] / med['medhall']['checkpoints']:.2f} s each)")
    print(f"peak {peak / 1e9:.1f} GFLOP/s ({peak_source})")


def quiet() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)


# -- CPU benchmark ------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from medhall.store import ArtifactStore
    from medhall.train import model as models
    from medhall.train.config import load_config
    from medhall.train.data import load_data

    quiet()
    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="medhall-train-bench-"))
    home = Path(args.home).expanduser() if args.home else work / "home"
    store = ArtifactStore(home)
    if args.dataset:
        dataset = args.dataset
    else:
        n = args.examples or args.steps * args.batch
        dataset = str(synthetic_llava_json(work / "data", n, seed=args.seed))
    cfg = load_config(dataset=dataset, base=f"tiny:{args.family}", max_steps=args.steps, per_device_batch=args.batch,
                      overrides=[f"lora.preset={args.lora_preset}", *args.set])
    base_path = models.resolve_base(cfg.base, store.root)
    family = models.family_of(base_path)
    data = load_data(store, cfg.dataset, cfg.subset, image_root=cfg.image_root, pack=cfg.pack_per_image)
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops * 1e12, "--peak-tflops"
    elif device == "cuda":
        peak, peak_source = (gpu_peak_flops() or float("nan")), f"datasheet bf16 dense, {torch.cuda.get_device_name()}"
    else:
        peak, peak_source = cpu_peak_flops(), f"measured: best fp32 2048^3 matmul, {torch.get_num_threads()} threads"
    print(f"{family}: {len(data.examples)} examples, {cfg.max_steps} steps x batch {cfg.per_device_batch}, "
          f"LoRA {cfg.lora.resolved()['r']}, {args.rounds} rounds on {device}; peak {peak / 1e9:.1f} GFLOP/s "
          f"({peak_source})", flush=True)
    summary = run_rounds(store, cfg, base_path, family, data, args.rounds, work, device, peak)
    fm = summary["runs"]["medhall"][0]
    print_table(summary, peak, peak_source)
    wall = time.perf_counter() - t_start
    print(f"total wall {wall:.1f} s")
    return {
        "command": " ".join(["python", "benchmarks/train_throughput.py", *sys.argv[1:]]),
        "family": family, "base": cfg.base, "dataset": args.dataset or "synthetic LLaVA JSON",
        "examples": len(data.examples), "steps": cfg.max_steps, "batch": cfg.per_device_batch,
        "lora": cfg.lora.resolved(), "rounds": args.rounds, "device": device,
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "peak_flops": peak, "peak_source": peak_source, "flop_model": fm["flop_model"], "wall_s": wall, **summary,
    }


# -- device check (7B-shaped LLaVA on one GPU) --------------------------------------------------------


def llava_7b_config(image_token_id: int, pad_token_id: int, *, smoke: bool = False) -> Any:
    """LLaVA-1.5-7B's shape: Llama-2-7B text and CLIP ViT-L/14 at 336 px (``smoke``: the same
    structure scaled down, to exercise this path on a CPU)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    scale = 64 if smoke else 1
    text = LlamaConfig(
        vocab_size=32000, hidden_size=4096 // scale, intermediate_size=11008 // scale,
        num_hidden_layers=32 // (16 if smoke else 1), num_attention_heads=32 // (8 if smoke else 1),
        num_key_value_heads=32 // (8 if smoke else 1), max_position_embeddings=4096, rms_norm_eps=1e-5,
        pad_token_id=pad_token_id, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=1024 // scale, intermediate_size=4096 // scale, num_hidden_layers=24 // (12 if smoke else 1),
        num_attention_heads=16 // (4 if smoke else 1), image_size=336, patch_size=14, projection_dim=768,
        hidden_act="quick_gelu",
    )
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                       projector_hidden_act="gelu", vision_feature_layer=-2,
                       vision_feature_select_strategy="default")


def meta_param_count(config: Any) -> int:
    """Parameters of ``LlavaForConditionalGeneration(config)`` built on the meta device (no memory)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def write_base(out: Path, smoke: bool) -> tuple[Path, Any]:
    """A checkpoint directory without weights: the 7B config and a LLaVA processor at 336 px."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    from medhall.infer.tiny import LLAVA_TEMPLATE, train_tokenizer

    tokenizer = train_tokenizer(("<pad>", "<s>", "</s>", "<image>"), bos="<s>", eos="</s>", pad="<pad>",
                                named_tokens={"image_token": "<image>"})
    config = llava_7b_config(tokenizer.image_token_id, tokenizer.pad_token_id, smoke=smoke)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    processor.save_pretrained(out)
    return out, config


@contextmanager
def random_weights(device: str):
    """``AutoModelForImageTextToText.from_pretrained`` builds the model from the directory's
    config with random weights, allocated straight on ``device`` (there are no weight files)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    original = AutoModelForImageTextToText.__dict__["from_pretrained"]

    def from_config_instead(cls: Any, path: str, *_: Any, dtype: Any = None, **__: Any) -> Any:
        config = AutoConfig.from_pretrained(path)
        with torch.device(device):
            return AutoModelForImageTextToText.from_config(config, dtype=dtype)

    AutoModelForImageTextToText.from_pretrained = classmethod(from_config_instead)
    try:
        yield
    finally:
        AutoModelForImageTextToText.from_pretrained = original


def device_check(args: argparse.Namespace) -> int:
    import torch

    from medhall.store import ArtifactStore
    from medhall.train.config import load_config
    from medhall.train.data import load_data

    smoke = args.device_check_smoke
    t_start = time.perf_counter()
    n_params = meta_param_count(llava_7b_config(3, 0))
    print(f"7B-shaped LLaVA (Llama-2-7B + CLIP ViT-L/14-336), on the meta device: {n_params / 1e9:.3f}B parameters",
          flush=True)
    if abs(n_params - 7.06e9) > 0.02e9:
        print(f"error: expected about 7.06B parameters, got {n_params:,}", file=sys.stderr)
        return 1
    if not smoke and not torch.cuda.is_available():
        print("--device-check needs a CUDA GPU (torch.cuda.is_available() is False): nothing trained. "
              "Run it on a machine with one (an 80 GB H100 or larger for the defaults).", file=sys.stderr)
        return 2
    device = "cpu" if smoke else "cuda"
    if smoke and args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    work = Path(tempfile.mkdtemp(prefix="medhall-train-device-"))
    store = ArtifactStore(work / "home")
    base, config = write_base(work / "llava-7b-shaped", smoke)
    n = args.examples or args.steps * args.batch
    dataset = synthetic_llava_json(work / "data", n, seed=args.seed, sizes=(300, 640))
    cfg = load_config(dataset=str(dataset), base=str(base), max_steps=args.steps, per_device_batch=args.batch,
                      gradient_checkpointing=True, precision="fp32" if smoke else "bf16",
                      overrides=[f"lora.preset={args.lora_preset}", *args.set])
    data = load_data(store, cfg.dataset, cfg.subset, pack=cfg.pack_per_image)
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops * 1e12, "--peak-tflops"
    elif smoke:
        peak, peak_source = cpu_peak_flops(), "measured fp32 matmul (smoke run on the CPU)"
    else:
        peak, peak_source = gpu_peak_flops() or float("nan"), f"datasheet bf16 dense, {torch.cuda.get_device_name()}"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{gpu}: {len(data.examples)} examples, {cfg.max_steps} steps x batch {cfg.per_device_batch}, "
          f"LoRA {cfg.lora.resolved()['r']}, bf16={not smoke}, gradient checkpointing; {args.rounds} rounds", flush=True)
    extra = {"gradient_checkpointing": True, "bf16": not smoke}
    if device == "cuda":  # the process's CUDA context and cuBLAS handle, which neither arm should pay for
        x = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
        (x @ x).sum().item()
    with random_weights(device):
        summary = run_rounds(store, cfg, str(base), "llava", data, args.rounds, work, device, peak, extra)
    print_table(summary, peak, peak_source)
    wall = time.perf_counter() - t_start
    print(f"total wall {wall:.1f} s")
    result = {
        "command": " ".join(["python", "benchmarks/train_throughput.py", *sys.argv[1:]]),
        "model": "LLaVA-1.5-7B shape, random weights" + (" (smoke: scaled down)" if smoke else ""),
        "params_meta": n_params, "device": gpu, "examples": len(data.examples), "steps": cfg.max_steps,
        "batch": cfg.per_device_batch, "lora": cfg.lora.resolved(), "rounds": args.rounds,
        "peak_flops": peak, "peak_source": peak_source, "wall_s": wall, **summary,
    }
    out = args.out or HERE / "results" / "train_throughput_device.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="llava", choices=["llava", "qwen2-vl", "qwen2.5-vl"],
                    help="tiny model family (tiny:<family>)")
    ap.add_argument("--dataset", help="a built dataset in the store (its train split) instead of a synthetic LLaVA JSON")
    ap.add_argument("--home", help="store root for --dataset (default: a temporary one)")
    ap.add_argument("--examples", type=int, help="synthetic examples (default: steps x batch, one epoch)")
    ap.add_argument("--steps", type=int, help="optimizer steps per arm and round (default 100; --device-check: 10)")
    ap.add_argument("--batch", type=int, default=4, help="per-device batch (medhall's default is 4)")
    ap.add_argument("--rounds", type=int, help="alternating rounds, medians reported (default 5; --device-check: 2)")
    ap.add_argument("--lora-preset", default="llava", choices=["llava", "small"], help="medhall's LoRA preset")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="more TrainConfig overrides for both arms (e.g. max_length=1024)")
    ap.add_argument("--peak-tflops", type=float, help="peak FLOP/s for the MFU, in TFLOP/s (default: measured "
                    "fp32 matmul on the CPU, the datasheet's bf16 dense figure on a GPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads, both arms and the peak (0: torch's "
                    "default); 1 by default: on a shared machine two OpenMP threads stall whenever another "
                    "process holds a core")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    ap.add_argument("--device-check", action="store_true", help="7B-shaped LLaVA, bf16, gradient checkpointing, on CUDA")
    ap.add_argument("--device-check-smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = args.device_check or args.device_check_smoke
    args.steps = args.steps or (10 if device else 100)
    args.rounds = args.rounds or (2 if device else 5)
    if device:
        return device_check(args)
    result = benchmark(args)
    out = args.out or HERE / "results" / "train_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
