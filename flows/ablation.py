"""ablation: the paper's Fig. 5 — a base VLM fine-tuned on each training subset, each evaluated."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from flows.evaluate_model import evaluate_model
from flows.zero_shot_vqa import zero_shot_vqa
from medhall.endpoints import LLMSettings
from medhall.train.ablation import arms_to_run
from medhall.train.config import LoRASettings, TrainConfig
from medhall.train.model import resolve_base
from tasks.common import configure_results, store
from tasks.train import ablation_report_task, train_task

Arm = Literal["positive_only", "negative_only", "no_qc", "full", "frac_25", "frac_50", "frac_75", "frac_100"]
ALL_ARMS: list[Arm] = ["positive_only", "negative_only", "no_qc", "full", "frac_25", "frac_50", "frac_75"]


class ArmTraining(BaseModel):
    """How every arm trains (the rest of :class:`medhall.train.config.TrainConfig` at its defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    method: Literal["sft", "dpo"] = Field("sft", description="sft (the paper) or dpo.")
    lora: LoRASettings = Field(default_factory=lambda: LoRASettings(preset="small"), description="The LoRA adapter.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(3.0, gt=0, description="Passes over each arm's data (the paper: 3).")
    max_steps: int = Field(-1, description="Stop each arm after this many steps (-1: the epochs).")
    per_device_batch: int = Field(4, ge=1, description="Examples per device per step.")
    grad_accum: int = Field(1, ge=1, description="Forward passes per optimizer step.")
    seed: int = Field(0, description="Seed of every arm.")


class ArmEvaluation(BaseModel):
    """How every arm (and the base) is evaluated."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    split: str = Field("test", description="The build's split to evaluate on.")
    max_questions: int | None = Field(None, ge=1, description="Evaluate on a sample of this many questions.")
    max_new_tokens: int = Field(128, ge=1, description="Answer length limit.")
    metrics: list[Literal["meteor", "rouge", "bertscore"]] = Field(
        default_factory=lambda: ["meteor", "rouge"], description="Reference metrics (bertscore needs its encoder).")
    judge: LLMSettings | None = Field(None, description="The clinical judge (an OpenAI-compatible endpoint; "
                                      "key from the environment), anchored on the base model's answers.")


@flow(name="ablation", log_prints=True)
def ablation(
    dataset: str = Field("sample-instruct", description="A built dataset (its ablation subsets are the arms)."),
    base: str = Field("tiny:llava", description="Base VLM: checkpoint dir, hub name, or tiny:llava / tiny:qwen2-vl."),
    arms: list[Arm] = Field(default_factory=lambda: list(ALL_ARMS), min_length=1,
                            description="Training subsets to compare (frac_100 is full)."),
    training: ArmTraining = Field(default_factory=ArmTraining, description="How every arm trains."),
    evaluation: ArmEvaluation = Field(default_factory=ArmEvaluation, description="How every arm is evaluated."),
    vqa_benchmarks: list[dict[str, Any]] | None = Field(
        None, description='Zero-shot VQA too: [{"name": "vqa_rad", "path": ".../test.json", "image_root": ...}].'),
    accelerate_config: Literal["one_gpu", "eight_gpu_zero2", "eight_gpu_fsdp", "cpu_2proc"] | None = None,
) -> dict[str, Any]:
    """Train ``base`` on each arm, evaluate the base and every arm on ``dataset``'s split, and
    draw Fig. 5 (bars for the data composition, curves for 25-100 %) with the table, as PNG,
    Markdown and Prefect artifacts. Resumable per arm: a trained arm is not trained again and an
    evaluated one is not asked again."""
    configure_results()
    chosen = arms_to_run(arms)
    base_path = resolve_base(base, store().root)
    base_name = base.replace(":", "-") if base.startswith("tiny:") else base.rstrip("/").split("/")[-1]
    judge = evaluation.judge

    def evaluate(name: str, adapter: str | None) -> str:
        model = {"kind": "local_vlm", "path": base_path, "adapter": adapter, "max_new_tokens": evaluation.max_new_tokens,
                 "device": "auto"}
        out = evaluate_model(dataset=dataset, model=model, model_name=name, judge=judge,
                             baseline_model=base_name if judge is not None and name != base_name else None,
                             split=evaluation.split, metrics=list(evaluation.metrics), max_questions=evaluation.max_questions,
                             compare_with=base_name if name != base_name else None)
        return out["report"]["csv"]

    print(f"ablation of {base} on {dataset}: base + {len(chosen)} arm(s): {', '.join(chosen)}")
    reports = {"base": evaluate(base_name, None)}
    trained: dict[str, dict[str, Any]] = {}
    for arm in chosen:
        cfg = TrainConfig(dataset=dataset, subset=arm, base=base, **training.model_dump())
        trained[arm] = train_task.with_options(task_run_name=f"train {arm}")(cfg, accelerate_config)
        reports[arm] = evaluate(f"{base_name}+{arm}", trained[arm]["adapter_dir"])
        t = trained[arm]
        print(f"arm {arm}: {t['status']}, {t['examples']} examples, {t['steps']} steps, adapter {t['adapter_dir']}")
    out: dict[str, Any] = {"trained": trained, "report": ablation_report_task(dataset, reports, trained)}
    print(f"ablation table and Fig. 5: {out['report']['markdown']}, {out['report']['png']}")
    if vqa_benchmarks:
        models = [{"name": base_name, "kind": "local_vlm", "path": base_path}] + [
            {"name": f"{base_name}+{arm}", "kind": "local_vlm", "path": base_path, "adapter": t["adapter_dir"],
             "base": base_name} for arm, t in trained.items()]
        out["vqa"] = zero_shot_vqa(benchmarks=vqa_benchmarks, models=models, dataset=f"vqa-ablation-{dataset}")
    return out


if __name__ == "__main__":  # pragma: no cover
    print(ablation())
