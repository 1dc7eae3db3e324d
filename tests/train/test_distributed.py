"""Data parallelism for real: two CPU processes (gloo) train the tiny LLaVA and end with the
adapter that one process trains at the same global batch; the accelerate configs shipped in
``medhall/train/accelerate/`` against accelerate's own schema and launcher.

Why the two runs can agree to float rounding. The global batch is 4 in both (1 process x
per_device_batch 4, against 2 processes x per_device_batch 2) over 8 examples, so an epoch is
2 optimizer steps and the run is 4 steps (2 epochs, the data reshuffled in between):

- the same examples in each step: the Trainer draws the order with accelerate's seedable
  sampler (seed = data_seed + epoch) in both runs, and with 2 processes accelerate deals the
  per-device batches of that order out in turn (rank 0 the first 2, rank 1 the next 2), so
  step k's global batch is the same 4 examples as the single process's batch k;
- the same loss: transformers normalises the loss by the label tokens of the whole global
  batch (``average_tokens_across_devices``), not per rank, and DDP averages the gradients;
- the same start: the LoRA init is seeded by ``seed`` (medhall.train.model), and DDP
  broadcasts rank 0's weights anyway; dropout is 0 and the schedule constant.

If a transformers/accelerate release deals batches differently, the order check below fails
before the weights are compared; the fallback is a global batch equal to the whole data set
(every step then sees every example, whatever the order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import medhall.train

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
CONFIGS = Path(medhall.train.__file__).parent / "accelerate"
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30),
           (200, 30, 200), (30, 200, 200), (120, 120, 120), (250, 250, 250)]
QA = [("Is there a fracture?", "There is no evidence of a fracture."),
      ("What is the modality of this image?", "This is an ultrasound image of the kidney."),
      ("Is there a mass?", "No, there is no mass."),
      ("What organ is shown?", "The liver."),
      ("Is there a lesion?", "A hypodense lesion in the liver."),
      ("What does the MRI show?", "A hyperintense signal in the left temporal lobe."),
      ("Is the chest normal?", "No acute cardiopulmonary abnormality."),
      ("Which stain is used?", "Hematoxylin and eosin.")]
STEPS = 4
#: Everything but the batch layout; both runs use these.
SETTINGS = ["lora.preset=small", "lora.dropout=0", "lr_scheduler=constant", "warmup_ratio=0",
            "learning_rate=1e-3", "max_length=512", "precision=fp32", "seed=0", f"save_steps={STEPS}",
            "logging_steps=1"]
#: The tolerance, per tensor: max |w_2proc - w_1proc| <= REL_TOL x max |w_1proc - w_init| + ULPS
#: float32 spacings of max |w_1proc|. Only the order of float sums differs (gloo's all-reduce of
#: two half-batch gradients against one backward over the whole batch). Measured: the LoRA
#: tensors differ by at most 6e-6 of their update (1e-8 absolute), the projector (weights near
#: 1.8, updates 4e-3) by half a float32 spacing of its weights (6e-8, 1.5e-5 of the update). A
#: different start (the LoRA init unseeded, tried) already moves the step-1 gradient norm by 2%,
#: far outside the 1e-5 the grad_norm check allows.
REL_TOL = 1e-4
ULPS = 4


# -- the shipped accelerate configs ---------------------------------------------------------


def _launch_args(path: Path):
    """accelerate 1.16's own parsing of ``accelerate launch --config_file PATH script.py``."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), "script.py"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_every_config_key_is_one_accelerate_knows() -> None:
    """Top-level keys: ClusterConfig refuses unknown ones. Nested keys (deepspeed_config,
    fsdp_config) become ``accelerate launch`` options, and an unknown one is silently ignored:
    each must name an option of the launcher."""
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    options = {a.dest for a in launch_command_parser()._actions}
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {f.name for f in files} == {"one_gpu.yaml", "eight_gpu_zero2.yaml", "eight_gpu_fsdp.yaml", "cpu_2proc.yaml"}
    for path in files:
        config = load_config_from_file(str(path))
        assert isinstance(config, ClusterConfig), path.name
        assert path.read_text().startswith("#"), f"{path.name}: explain the choice in a comment at the top"
        for section, prefix in (("deepspeed_config", ""), ("fsdp_config", "fsdp_")):
            for key in getattr(config, section):
                name = key if key.startswith(prefix) else prefix + key
                assert name in options, f"{path.name}: {section}.{key} is no accelerate launch option"


@pytest.mark.parametrize(("name", "launcher", "processes", "precision"), [
    ("one_gpu.yaml", "simple", 1, "bf16"),
    ("eight_gpu_zero2.yaml", "deepspeed", 8, "bf16"),
    ("eight_gpu_fsdp.yaml", "fsdp", 8, "bf16"),
    ("cpu_2proc.yaml", "torchrun", 2, "no"),
])
def test_configs_route_to_the_intended_launcher(name: str, launcher: str, processes: int, precision: str) -> None:
    """What ``accelerate launch`` does with each file (its own code, nothing started)."""
    pytest.importorskip("accelerate")
    args, defaults = _launch_args(CONFIGS / name)
    routed = ("deepspeed" if args.use_deepspeed else "fsdp" if args.use_fsdp
              else "torchrun" if args.multi_gpu else "simple")
    assert (routed, args.num_processes, args.mixed_precision) == (launcher, processes, precision)
    if name == "eight_gpu_zero2.yaml":
        assert args.zero_stage == 2
        # left to the training config ("auto"), never a second value that could disagree with it
        assert args.gradient_accumulation_steps is None and args.gradient_clipping is None
    if name == "eight_gpu_fsdp.yaml":
        assert (args.fsdp_version, args.fsdp_state_dict_type) == (2, "FULL_STATE_DICT")
    if name == "one_gpu.yaml":
        assert args.gpu_ids == "0"  # one visible card: no silent nn.DataParallel over several


def test_a_multi_cpu_config_starts_a_single_process(tmp_path: Path) -> None:
    """Why cpu_2proc.yaml says MULTI_GPU: accelerate 1.16 hands MULTI_CPU (and ``--cpu``) to its
    simple launcher, one python process that only mpirun (mpirun_config) would multiply."""
    pytest.importorskip("accelerate")
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    multi_cpu = tmp_path / "multi_cpu.yaml"
    multi_cpu.write_text("distributed_type: MULTI_CPU\nnum_processes: 2\nuse_cpu: true\nmixed_precision: 'no'\n")
    for argv in (["--cpu", "--num_processes", "2", "script.py"], ["--config_file", str(multi_cpu), "script.py"]):
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
        assert args.num_processes == 2
        assert not (args.multi_gpu or args.use_deepspeed or args.use_fsdp)  # -> simple_launcher: 1 process


# -- two processes against one --------------------------------------------------------------


@pytest.fixture(scope="module")
def llava_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 LLaVA records, each a different colour (and size) of image and a different QA pair."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ddp-data")
    records = []
    for i, (colour, (question, answer)) in enumerate(zip(COLOURS, QA, strict=True)):
        Image.new("RGB", (32 + 4 * i, 28), colour).save(root / f"img{i}.png")
        records.append({"id": f"r{i}", "image": f"img{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]})
    path = root / "train.json"
    path.write_text(json.dumps(records))
    return path


def _train(launcher: list[str], data: Path, base: str, root: Path, per_device_batch: int) -> tuple[Path, Path, float]:
    """One ``medhall train`` run in fresh processes: (output dir, MEDHALL_HOME, seconds)."""
    out, home = root / "out", root / "home"
    cmd = [*launcher, "-m", "medhall.train", str(data), "--base", base, "--max-steps", str(STEPS),
           "--output-dir", str(out), "--fresh"]
    for item in [*SETTINGS, f"per_device_batch={per_device_batch}"]:
        cmd += ["--set", item]
    env = {**os.environ, "MEDHALL_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # the CPU and gloo, on a GPU machine too
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out, home, seconds


@pytest.fixture(scope="module")
def one_process(tiny_bases, llava_json, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """The reference: one plain process, per_device_batch 4."""
    return _train([sys.executable], llava_json, tiny_bases["llava"], tmp_path_factory.mktemp("one"), 4)


@pytest.fixture(scope="module")
def initial_adapter(tiny_bases, llava_json) -> dict[str, torch.Tensor]:
    """The adapter before training (LoRA's A seeded by ``seed``, B zero, the projector the base's)."""
    from peft import get_peft_model_state_dict

    from medhall.train.config import load_config
    from medhall.train.model import load_for_training

    cfg = load_config(None, [*SETTINGS, "per_device_batch=4"], dataset=str(llava_json), base=tiny_bases["llava"])
    model, _ = load_for_training(cfg, tiny_bases["llava"], "llava", "cpu")
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


def _metric(out: Path, name: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["value"]) for r in rows if r["metric"] == name]


def _tables(home: Path, table: str) -> list:
    from medhall.store import ArtifactStore

    return [a for a in ArtifactStore(home).artifacts() if a.table == table]


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml")],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_cpu_processes_train_the_adapter_one_process_trains(
        launcher, tiny_bases, llava_json, one_process, initial_adapter, tmp_path) -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch without gloo")
    ref_out, ref_home, ref_s = one_process
    out, home, s = _train(LAUNCHERS[launcher], llava_json, tiny_bases["llava"], tmp_path, 2)
    print(f"1 process {ref_s:.1f} s, 2 processes ({launcher}) {s:.1f} s")

    # both ranks trained to the end: each wrote its own RNG state into the last checkpoint
    last = out / "checkpoints" / f"checkpoint-{STEPS}"
    assert sorted(p.name for p in last.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert [p.name for p in (ref_out / "checkpoints" / f"checkpoint-{STEPS}").glob("rng_state*.pth")] == ["rng_state.pth"]
    assert json.loads((last / "trainer_state.json").read_text())["train_batch_size"] == 2

    # rank 0 alone writes: one train_runs row, one train_metrics version, one line per step and metric
    runs = _tables(home, "train_runs")
    assert len(runs) == 1 and runs[0].rows == 1, [a.name for a in runs]
    assert len(_tables(home, "train_metrics")) == 1
    row = runs[0].read().to_pylist()[0]
    assert (row["steps"], row["examples"], row["status"]) == (STEPS, 8, "stopped")
    assert [step for step, _ in _metric(out, "loss")] == list(range(1, STEPS + 1))

    # the same global batch at every step: the gradient norms of the whole batch agree
    ref_norms, norms = _metric(ref_out, "grad_norm"), _metric(out, "grad_norm")
    assert len(norms) == len(ref_norms) == STEPS
    for (_, a), (_, b) in zip(ref_norms, norms, strict=True):
        assert b == pytest.approx(a, rel=1e-5), (ref_norms, norms)

    # the same adapter, to float rounding, and one that training moved (not a vacuous equality)
    ref, got = _adapter(ref_out), _adapter(out)
    assert set(ref) == set(got) == set(initial_adapter)
    assert any("lora_A" in k for k in ref) and any("lora_B" in k for k in ref)
    assert any("multi_modal_projector" in k for k in ref)
    worst = 0.0
    for key, w in ref.items():
        update = (w - initial_adapter[key]).abs().max().item()
        diff = (got[key] - w).abs().max().item()
        assert update > 1e-4, f"{key} did not move in training (max update {update:.2e})"
        bound = REL_TOL * update + ULPS * torch.finfo(torch.float32).eps * w.abs().max().item()
        assert diff <= bound, f"{key}: 2 processes differ by {diff:.2e} (bound {bound:.2e}), the update is {update:.2e}"
        worst = max(worst, diff / update)
    print(f"max |w_2proc - w_1proc| / max |w_1proc - w_init| over {len(ref)} tensors: {worst:.2e}")
