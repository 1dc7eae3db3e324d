"""A training run: transformers' ``Trainer`` with a peft LoRA adapter, launched by accelerate.

:func:`run_training` loads the data (:mod:`medhall.train.data`), the base with its adapter
(:mod:`medhall.train.model`) and the encoder (:mod:`medhall.train.encode`), and hands them to
``transformers.Trainer`` (SFT) or TRL's ``DPOTrainer`` (preference tuning, :mod:`medhall.train.dpo`):
the trainer owns the loop, mixed precision, gradient accumulation, checkpointing and, under
``accelerate launch`` / ``torchrun``, data parallelism. A run lives in
``<home>/train/<train id>/`` (``checkpoints/``, ``adapter/``, ``merged/``, ``metrics.jsonl``,
``loss.png``); the train id hashes the method, the base, the data and the config, so the same
run asked again resumes from its last checkpoint instead of starting over. The run is recorded
in the ``train_runs`` and ``train_metrics`` tables.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medhall.errors import MedhallError
from medhall.ids import content_id
from medhall.store import ArtifactStore
from medhall.train.config import TrainConfig


class TrainError(MedhallError, RuntimeError):
    """A run that stopped for a reason the user can act on, explained."""


@dataclass
class TrainResult:
    train_id: str
    out_dir: Path
    adapter_dir: Path | None
    merged_dir: Path | None
    steps: int
    train_loss: float | None
    examples: int
    skipped: dict[str, int]
    truncated: int
    seconds: float
    status: str
    resumed_from: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def metrics_callback(path: Path, cfg: TrainConfig) -> Any:
    """A ``TrainerCallback`` that writes each logging step's metrics to ``metrics.jsonl`` (rank
    0), adds tokens/s from the trainer's token count, and stops the run on a NaN or infinite loss."""
    from transformers import TrainerCallback

    class Metrics(TrainerCallback):
        def __init__(self) -> None:
            self._last: tuple[float, int] | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
            logs = logs if logs is not None else {}  # tokens_per_s added in place: later callbacks see it
            loss = logs.get("loss")
            if loss is not None and not math.isfinite(loss):
                hint = "use bf16 or fp32 instead of fp16" if cfg.precision == "fp16" else "lower learning_rate"
                raise TrainError(f"the loss became {loss} at step {state.global_step}: {hint} "
                                 f"(learning_rate is {cfg.learning_rate})")
            now, seen = time.perf_counter(), logs.get("num_input_tokens_seen")
            if seen is not None and self._last is not None and now > self._last[0]:
                logs["tokens_per_s"] = (seen - self._last[1]) / (now - self._last[0])
            if seen is not None:
                self._last = (now, seen)
            if not state.is_world_process_zero:
                return
            rows = [{"step": state.global_step, "epoch": state.epoch, "metric": k, "value": float(v)}
                    for k, v in logs.items() if isinstance(v, int | float) and k not in ("epoch", "step")]
            with path.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    return Metrics()


def progress_callback(every: int | None = None) -> Any:
    """A ``TrainerCallback`` printing one short line per ``every`` steps on rank 0 (about 20
    lines a run by default): step, loss, learning rate, tokens/s, elapsed and ETA."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.first = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.t0, self.first = time.perf_counter(), state.global_step

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
            logs = logs or {}
            step, total = state.global_step, state.max_steps or 0
            n = every or max(1, total // 20)
            if not state.is_world_process_zero or "loss" not in logs or (step % n and step != total):
                return
            elapsed = time.perf_counter() - self.t0
            rate = (step - self.first) / elapsed if elapsed > 0 else 0.0
            eta = f", ETA {(total - step) / rate:.0f} s" if rate > 0 and total > step else ""
            speed = f", {logs['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in logs else ""
            print(f"step {step}/{total}: loss {logs['loss']:.4f}, lr {logs.get('learning_rate', 0):.3g}{speed}, "
                  f"{elapsed:.0f} s{eta}", flush=True)

    return Progress()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The metrics rows, the last value per (step, metric): steps redone after a resume replace
    the ones a killed run logged past its last checkpoint."""
    if not path.exists():
        return []
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            latest[(r["step"], r["metric"])] = r
    return [latest[k] for k in sorted(latest)]


def training_args(cfg: TrainConfig, out_dir: Path, device: str) -> Any:
    """transformers' ``TrainingArguments`` (SFT) or TRL's ``DPOConfig`` (DPO) from ``cfg``."""
    import torch
    from transformers import TrainingArguments

    from medhall.train.model import torch_dtype

    dtype = torch_dtype(cfg.precision, device)
    cls, extra = TrainingArguments, {}
    if cfg.method == "dpo":
        from trl import DPOConfig

        # TRL's own defaults differ from transformers' (bf16 and gradient checkpointing on):
        # every field that matters is set here from cfg, so both methods read the config alike.
        cls, extra = DPOConfig, {"beta": cfg.dpo_beta, "max_length": cfg.max_length, "truncation_mode": "keep_start"}
    return cls(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=cfg.per_device_batch,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=device == "cpu",
        gradient_checkpointing=cfg.gradient_checkpointing, logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, seed=cfg.seed, data_seed=cfg.seed,
        report_to="none", remove_unused_columns=False, include_num_input_tokens_seen="all",
        dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch_fused", logging_nan_inf_filter=False,
        ddp_find_unused_parameters=False, **extra,
    )


def run_training(store: ArtifactStore, cfg: TrainConfig, *, resume: bool = True,
                 callbacks: list[Any] | None = None) -> TrainResult:
    """Train as ``cfg`` says (resuming this run's last checkpoint when ``resume``), save the
    adapter with its metadata (and the merged model with ``cfg.merge``), and record the run.
    ``callbacks``: more ``TrainerCallback`` s (progress, a flow's live metrics, tests)."""
    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint

    from medhall.train import model as models
    from medhall.train.data import load_data
    from medhall.train.encode import Collator, Encoder, TrainDataset, fit_examples

    started, t0 = datetime.now(UTC), time.perf_counter()
    base_path = models.resolve_base(cfg.base, store.root)
    family = models.family_of(base_path)
    if cfg.method == "dpo":
        from medhall.train.dpo import load_pairs

        data = load_pairs(store, cfg.dataset, cfg.subset, image_root=cfg.image_root)
    else:
        data = load_data(store, cfg.dataset, cfg.subset, image_root=cfg.image_root, pack=cfg.pack_per_image)
    identity = models.base_identity(base_path)
    train_id = content_id("trn", cfg.method, identity, data.fingerprint, cfg.identity())
    out = Path(cfg.output_dir) if cfg.output_dir else store.root / "train" / train_id
    out.mkdir(parents=True, exist_ok=True)
    done = finished(out, train_id) if resume else None
    if done is not None:
        if cfg.merge and done.merged_dir is None:
            done.merged_dir = models.merge(base_path, done.adapter_dir, out / "merged")
        return done
    device = _device()
    model, processor = models.load_for_training(cfg, base_path, family, device)
    encoder = Encoder(processor, max_length=cfg.max_length, overflow=cfg.overflow)
    if cfg.method == "dpo":
        from medhall.train.dpo import fit_pairs

        examples, report = fit_pairs(data.examples, encoder)
    else:
        examples, report = fit_examples(data.examples, encoder)
    skipped = {**data.skipped, **report.dropped}
    if not examples:
        raise TrainError(f"no example fits max_length={cfg.max_length} (longest {report.longest} tokens): "
                         "raise max_length")
    args = training_args(cfg, out, device)
    metrics_path = out / "metrics.jsonl"
    hooks = [metrics_callback(metrics_path, cfg), *(callbacks or [])]
    if cfg.method == "dpo":
        from medhall.train.dpo import make_trainer

        trainer = make_trainer(model, processor, args, examples, hooks)
    else:
        trainer = Trainer(model=model, args=args, train_dataset=TrainDataset(examples, encoder),
                          data_collator=Collator(processor.tokenizer.pad_token_id), callbacks=hooks)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # a dict per step; metrics.jsonl and progress_callback say it
    last = get_last_checkpoint(args.output_dir) if resume and Path(args.output_dir).is_dir() else None
    try:
        result = trainer.train(resume_from_checkpoint=last)
    except Exception as e:
        if type(e).__name__ == "OutOfMemoryError":
            raise TrainError(f"out of GPU memory: lower per_device_batch (now {cfg.per_device_batch}) and raise "
                             "grad_accum, set gradient_checkpointing=true, or lower max_length "
                             f"(now {cfg.max_length})") from None
        raise
    steps, loss = trainer.state.global_step, result.training_loss
    status = "completed" if cfg.max_steps < 0 else "stopped"
    adapter_dir = merged_dir = None
    # every rank takes part (FSDP / ZeRO-3 gather the sharded weights); rank 0 writes
    trainer.save_model(str(out / "adapter"))
    if trainer.is_world_process_zero():
        adapter_dir = out / "adapter"
        models.write_metadata(adapter_dir, {
            "train_id": train_id, "method": cfg.method, "base_model": cfg.base, "base_path": base_path,
            "base_identity": identity, "family": family, "data": {**data.source, "fingerprint": data.fingerprint},
            "config": cfg.model_dump(mode="json"), "steps": steps, "train_loss": loss, "examples": len(examples),
            "skipped": skipped, "truncated": report.truncated, "status": status,
            "rejected_sources": dict(getattr(data, "rejected_sources", {})) or None,
        })
        if cfg.merge:
            merged_dir = models.merge(base_path, adapter_dir, out / "merged")
    res = TrainResult(train_id, out, adapter_dir, merged_dir, steps, loss, len(examples), skipped, report.truncated,
                      time.perf_counter() - t0, status,
                      resumed_from=str(last) if last else None, extras={"base_path": base_path})
    if cfg.method == "dpo":
        res.extras["rejected_sources"] = dict(data.rejected_sources)
    if trainer.is_world_process_zero():
        res.extras["tables"] = record(store, cfg, res, family, identity, data, started, base_path)
        res.extras["png"] = res.extras["tables"]["png"]
    return res


def finished(out: Path, train_id: str) -> TrainResult | None:
    """The result of run ``train_id`` when its adapter in ``out`` is complete (asked again, a
    finished run is not trained again: ``--fresh`` retrains it); else None."""
    from medhall.train.model import read_metadata

    adapter = out / "adapter"
    meta = read_metadata(adapter) if adapter.is_dir() else None
    if not meta or meta.get("train_id") != train_id or "examples" not in meta:
        return None
    merged = out / "merged"
    res = TrainResult(train_id, out, adapter, merged if (merged / "config.json").exists() else None, meta["steps"],
                      meta.get("train_loss"), meta["examples"], meta.get("skipped") or {}, meta.get("truncated", 0),
                      0.0, "already_trained", extras={"base_path": meta["base_path"], "png": str(out / "loss.png")})
    if meta.get("rejected_sources"):
        res.extras["rejected_sources"] = meta["rejected_sources"]
    return res


def record(store: ArtifactStore, cfg: TrainConfig, res: TrainResult, family: str, identity: str, data: Any,
           started: datetime, base_path: str) -> dict[str, Any]:
    """The run into ``train_runs`` / ``train_metrics`` (dataset ``train-<train id>``) and its loss curve PNG."""
    from medhall.report.training import plot_curves
    from medhall.schema import from_rows

    run = {"train_id": res.train_id, "method": cfg.method, "base_model": cfg.base, "base_identity": identity,
           "family": family, "dataset": data.source.get("dataset"), "subset": data.source.get("subset"),
           "data_fingerprint": data.fingerprint, "examples": res.examples, "skipped": sum(res.skipped.values()),
           "truncated": res.truncated, "steps": res.steps, "train_loss": res.train_loss, "status": res.status,
           "adapter_path": str(res.adapter_dir) if res.adapter_dir else None,
           "merged_path": str(res.merged_dir) if res.merged_dir else None,
           "config": json.dumps(cfg.model_dump(mode="json"), sort_keys=True), "started_at": started,
           "seconds": res.seconds, "run_id": res.train_id}
    metrics = [{**r, "train_id": res.train_id, "run_id": res.train_id} for r in read_metrics(res.out_dir / "metrics.jsonl")]
    name = f"train-{res.train_id}"
    config = {"train": cfg.model_dump(mode="json"), "base_path": base_path}
    runs = store.write("train_runs", from_rows("train_runs", [run]), dataset=name, config=config,
                       inputs=[data.fingerprint], run_id=res.train_id)
    curves = store.write("train_metrics", from_rows("train_metrics", metrics), dataset=name, config=config,
                         inputs=[data.fingerprint], run_id=res.train_id)
    png = plot_curves(metrics, res.out_dir / "loss.png", title=f"{cfg.method} {cfg.base} on {data.source.get('dataset')}")
    return {"train_runs": runs.name, "train_metrics": curves.name, "png": str(png)}


__all__ = ["TrainError", "TrainResult", "finished", "progress_callback", "read_metrics", "record", "run_training", "training_args"]
