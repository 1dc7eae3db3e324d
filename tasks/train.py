"""Training tasks: a LoRA / DPO run launched through ``accelerate launch`` (its lines and
metrics streamed into the task run, a progress bar, artifacts), and the ablation's report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from medhall.ids import content_id
from medhall.train.config import TrainConfig
from medhall.train.launch import LaunchError, command, launch
from medhall.train.trainer import read_metrics
from tasks.common import artifact_key, store


def _retryable(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry a crash (killed, out of memory, a lost node): the next attempt resumes from the
    last checkpoint. Not an error the run explained (bad data, config, model): it would recur."""
    try:
        state.result()
    except LaunchError as e:
        return e.retryable
    except Exception:  # noqa: BLE001 - anything else failed outside the subprocess
        return False
    return False


@task(name="train", task_run_name="train {cfg.method} {cfg.subset}", retries=2, retry_delay_seconds=5,
      retry_condition_fn=_retryable)
def train_task(cfg: TrainConfig, accelerate_config: str | None = None, processes: int = 1) -> dict[str, Any]:
    """Train as ``cfg`` says in a subprocess through ``accelerate launch``; a finished run asked
    again returns at once, a crashed one is retried and resumes from its last checkpoint."""
    work = store().root / "train" / "launches" / content_id("lch", cfg.model_dump(mode="json"), accelerate_config, processes)
    cmd, result_path = command(cfg, work, accelerate_config=accelerate_config, processes=processes)
    print("$ " + " ".join(cmd))
    progress = create_progress_artifact(progress=0.0, description=f"{cfg.method} on {cfg.dataset}/{cfg.subset}")

    def on_event(event: dict[str, Any]) -> None:
        step, total = event.get("step", 0), event.get("max_steps") or 0
        if "loss" in event:
            extra = "".join(f", {k} {event[k]:.4g}" for k in ("grad_norm", "learning_rate", "tokens_per_s",
                                                              "rewards/margins") if k in event)
            print(f"step {step}/{total}: loss {event['loss']:.4f}{extra}")
        if total:
            update_progress_artifact(progress, progress=min(100.0, 100.0 * step / total))

    launched = launch(cmd, result_path, on_line=print, on_event=on_event)
    res = launched.result
    update_progress_artifact(progress, progress=100.0)
    rows = read_metrics(Path(res["out_dir"]) / "metrics.jsonl")
    by_step: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["metric"] in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "rewards/margins"):
            by_step.setdefault(r["step"], {"step": r["step"]})[r["metric"]] = round(r["value"], 6)
    key = artifact_key(f"train-{res['train_id']}")
    if by_step:
        create_table_artifact(table=[by_step[s] for s in sorted(by_step)], key=f"{key}-metrics",
                              description="Loss, learning rate, grad norm, tokens/s per logging step")
    skipped = ", ".join(f"{k} {v}" for k, v in sorted((res.get("skipped") or {}).items())) or "none"
    loss = res.get("train_loss")
    create_markdown_artifact(key=key, description=f"Training run {res['train_id']}", markdown="\n".join([
        f"# {cfg.method} {res['train_id']} ({res['status']})", "",
        f"- base: `{cfg.base}`; data: `{cfg.dataset}` / `{cfg.subset}`",
        f"- examples: {res['examples']}; skipped: {skipped}; truncated: {res['truncated']}",
        f"- steps: {res['steps']}; final loss: {'-' if loss is None else f'{loss:.4f}'}; {res['seconds']:.1f} s",
        f"- adapter: `{res['adapter_dir']}`" + (f"; merged: `{res['merged_dir']}`" if res.get("merged_dir") else ""),
        f"- loss curve: `{res['extras'].get('png')}`",
    ]))
    return {"train_id": res["train_id"], "adapter_dir": res["adapter_dir"], "merged_dir": res.get("merged_dir"),
            "base_path": res["extras"]["base_path"], "steps": res["steps"], "train_loss": loss,
            "examples": res["examples"], "status": res["status"], "png": res["extras"].get("png"),
            "subset": cfg.subset}


@task(name="ablation-report")
def ablation_report_task(dataset: str, report_csvs: dict[str, str], trained: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ablation table (Markdown, CSV, Fig. 5 PNG under ``<home>/reports/ablation-<dataset>/``)
    and its Prefect artifacts."""
    import pyarrow.csv as pacsv

    from medhall.train import ablation

    reports = {arm: pacsv.read_csv(path) for arm, path in report_csvs.items()}
    table = ablation.ablation_table(reports)
    out = store().root / "reports" / f"ablation-{dataset}"
    out.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(table, out / "ablation.csv")
    png = ablation.plot_ablation(table, out / "ablation.png", title=f"Ablation on {dataset} (the paper's Fig. 5)")
    page = ablation.summary(table, trained) + f"\nChart: `{png}`\n"
    (out / "ablation.md").write_text(page)
    key = artifact_key(f"ablation-{dataset}")
    create_markdown_artifact(key=key, markdown=page, description=f"Ablation on {dataset}")
    create_table_artifact(table=table.to_pylist(), key=f"{key}-table", description="Overall means per arm, P and N")
    return {"markdown": str(out / "ablation.md"), "csv": str(out / "ablation.csv"), "png": str(png),
            "rows": json.loads(json.dumps(table.to_pylist()))}
