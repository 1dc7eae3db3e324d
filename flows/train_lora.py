"""train_lora: LoRA fine-tuning (or DPO) of a VLM on a built dataset, through accelerate."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from pydantic import Field

from medhall.train.config import LoRASettings, TrainConfig
from tasks.common import configure_results
from tasks.train import train_task

AccelerateConfig = Literal["one_gpu", "eight_gpu_zero2", "eight_gpu_fsdp", "cpu_2proc"]

#: What the UI form starts from: a few steps of the tiny LLaVA on the embedded sample build.
DEFAULT_CONFIG = TrainConfig(dataset="sample-instruct", base="tiny:llava", lora=LoRASettings(preset="small"),
                             max_steps=20)


@flow(name="train_lora", log_prints=True)
def train_lora(
    config: TrainConfig = DEFAULT_CONFIG,
    accelerate_config: AccelerateConfig | None = Field(
        None, description="An accelerate config kept in the repo (medhall/train/accelerate/); "
        "none: `processes` processes on this machine."),
    processes: int = Field(1, ge=1, description="Processes when no accelerate config is given (one per GPU; "
                           "on a CPU-only machine, gloo processes)."),
) -> dict[str, Any]:
    """Train ``config`` (dataset, subset, base model, method sft or dpo, LoRA, optimisation) in a
    subprocess through ``accelerate launch``; its log lines and per-step metrics stream into this
    run, with a progress bar and the metrics table as artifacts. A crash is retried and resumes
    from the last checkpoint; a finished run asked again returns at once."""
    configure_results()
    return train_task(config, accelerate_config, processes)


if __name__ == "__main__":  # pragma: no cover
    print(train_lora())
