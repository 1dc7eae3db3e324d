"""The ``medhall`` command line (typer + rich)."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medhall import __version__

app = typer.Typer(
    name="medhall",
    help="Measure and reduce hallucinations in medical vision-language models (MedHallTune).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals could hold secrets
)
console = Console()
err = Console(stderr=True)


class OutFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def _version(value: bool) -> None:
    if value:
        console.print(f"medhall {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    home: Annotated[
        Path | None,
        typer.Option("--home", envvar="MEDHALL_HOME", help="Artifact store root (default ~/.medhall)."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """medhall: MedHallTune datasets, quality control and evaluation as Parquet + DuckDB + Prefect."""
    # offline by default: no telemetry from Prefect's local server (it also races for its SQLite)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if home is not None:
        os.environ["MEDHALL_HOME"] = str(home)
    from medhall.config import get_settings

    get_settings(fresh=True)


def _run_flow(name: str, **params):
    """Run the Prefect flow ``name`` through the ``medhall`` entry point ``flows`` (the flows
    package registers itself there, so the library does not import the layers above it)."""
    from importlib.metadata import entry_points

    found = entry_points(group="medhall", name="flows")
    if not found:
        _fail("the Prefect flows are not installed (reinstall medhall: `make setup`), or run with --local")
    return next(iter(found)).load()(name, **params)


def _store():
    from medhall.store import ArtifactStore

    return ArtifactStore()


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _arrow_to_rich(table, title: str | None = None, limit: int = 50) -> Table:
    out = Table(title=title, show_lines=False, header_style="bold cyan")
    for name in table.column_names:
        out.add_column(name, overflow="fold", max_width=60)
    for row in table.slice(0, limit).to_pylist():
        out.add_row(*("" if v is None else str(v) for v in row.values()))
    if table.num_rows > limit:
        out.caption = f"{limit} of {table.num_rows} rows shown; use --out to save all"
    return out


def _print_summary(summary) -> None:
    from medhall.ingest import format_summary

    console.print(format_summary(summary))


@app.command()
def demo(
    local: Annotated[
        bool, typer.Option("--local", help="Run the steps in-process instead of as a Prefect flow.")
    ] = False,
    evaluate: Annotated[
        bool, typer.Option("--eval/--no-eval", help="Evaluate the embedded SmolLM2 (text-only) on the test split.")
    ] = True,
    eval_questions: Annotated[
        int | None, typer.Option(help="Cap the evaluated questions (a seeded sample); default: the whole test split.")
    ] = None,
) -> None:
    """The main job on the embedded default: no API key, no GPU, no download.

    Materialises the embedded sample corpus (real medical images shipped by pydicom,
    pydicom-data, scikit-image, nibabel and nilearn, with written captions), ingests it, builds
    an instruction dataset from it (offline generator, rule QC, split, exports), evaluates the
    embedded SmolLM2-135M-Instruct on the test split as a text-only baseline (METEOR, ROUGE,
    BERTScore, and judge-free POPE-style hallucination scores on the yes/no questions whose
    answer is known; judge scores need an endpoint), and prints how to query the tables. It runs as
    the Prefect flow ``build_default`` (against PREFECT_API_URL if set, else a local server).
    """
    store = _store()
    if local:
        from medhall.jobs import run_default

        with console.status("building the embedded default..."):
            out = run_default(store, evaluate=evaluate, eval_questions=eval_questions)
        ok = out.ingest.ok
        _print_summary(out.ingest.summary)
        report = out.extras.get("evaluation", {}).get("report")
    else:
        result = _run_flow("build_default", evaluate=evaluate, eval_questions=eval_questions)
        ok = result["ok"]
        report = (result.get("evaluation") or {}).get("report", {}).get("markdown")
    _print_outcome(store)
    if report:
        _print_evaluation(Path(report))
    if not ok:
        raise typer.Exit(1)


def _print_evaluation(report: Path) -> None:
    """The head of the evaluation report and its first table; what needs a judge."""
    from medhall.evaluate.pipeline import JUDGE_ENV_HELP

    console.print(f"\n[bold]Evaluation[/] ({report})", soft_wrap=True)
    lines = report.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    first_table = [line for line in lines[start:] if line.startswith("|")]
    end = next((i for i, line in enumerate(lines[start:]) if not line.startswith("|")), len(first_table))
    head = [line for line in lines[:start] if line.strip() and not line.startswith("#")][:3]
    for line in head + lines[start : start + end]:
        console.print("  " + line, soft_wrap=True, markup=False)
    _print_pope(lines, report)
    console.print(f"  Judge scores (clinical accuracy, relevance, detail, risk) need a judge endpoint: {JUDGE_ENV_HELP}.",
                  soft_wrap=True, markup=False)


def _print_pope(lines: list[str], report: Path) -> None:
    """The judge-free hallucination scores of the report (its POPE section's summary lines)."""
    at = next((i for i, line in enumerate(lines) if line.startswith("## Hallucination without a judge")), None)
    if at is None:
        return
    section = [line for line in lines[at + 1 :] if not line.startswith("|")]
    section = section[: next((i for i, line in enumerate(section) if line.startswith("## ")), len(section))]
    summary = [line.strip("*") for line in section if line.startswith("**")]
    summary += [line[2:] for line in section if line.startswith(("- `first_word`", "- `pope`"))]
    console.print("\n[bold]Hallucination without a judge[/] (POPE-style; rules `first_word`: the answer's first word "
                  "is yes/no, else undecided; `pope`: POPE's rule, a no/not in the first sentence, else yes; by "
                  f"strategy, category, modality in {report.parent / 'pope.csv'})", soft_wrap=True)
    for line in summary or [s for s in section if s.strip()][:1]:
        console.print("  " + line, soft_wrap=True, markup=False)


def _print_outcome(store) -> None:
    from medhall.jobs import DEFAULT_BUILD, DEFAULT_DATASET
    from medhall.store import build_catalog

    catalog = build_catalog(store)
    console.print(f"\n[bold]Tables[/] (store: {store.root})")
    for ds in (DEFAULT_DATASET, DEFAULT_BUILD):
        for table in ("images", "instructions", "qc_verdicts", "splits", "quarantine"):
            art = store.latest(table, ds)
            if art is not None:
                console.print(f"  [green]{art.name:<40}[/] {art.rows:>6} rows")
    reports = store.root / "reports" / DEFAULT_BUILD
    exports = store.root / "exports" / DEFAULT_BUILD
    for label, path in (("statistics", reports / "stats.csv"), ("chart", reports / "stats.png"), ("exports", exports), ("catalog", catalog)):
        console.print(f"  {label:<11} {path}", soft_wrap=True)
    me = command_name()
    console.print(
        "\nQuery them:\n"
        f'  {me} sql "select modality, count(*) from images group by 1"\n'
        f'  {me} sql "select kind, category, count(*) from instructions group by all order by all"\n'
        f'  {me} sql "select * from filtered_instructions limit 5"\n'
        f"  duckdb -readonly {catalog}",
        soft_wrap=True,
    )


@app.command()
def build(
    source: Annotated[str, typer.Option("--source", "-s", help="Ingested dataset to build from.")] = "sample",
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset to write.")] = "sample-instruct",
    generator: Annotated[str, typer.Option(help="offline (deterministic, no LLM) or llm.")] = "offline",
    questions_per_image: Annotated[int, typer.Option("--questions-per-image", "-q")] = 10,
    llm_qc: Annotated[bool, typer.Option("--llm-qc/--no-llm-qc", help="LLM self-check (sees only the caption).")] = False,
    backend: Annotated[str, typer.Option(help="LLM backend: openai (any compatible server), transformers, fake.")] = "openai",
    model: Annotated[str | None, typer.Option(help="LLM model (default MEDHALL_LLM_MODEL).")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible URL (default MEDHALL_LLM_BASE_URL).")] = None,
    text_only: Annotated[bool, typer.Option("--text-only", help="Send captions without images.")] = False,
    max_cost: Annotated[float | None, typer.Option("--max-cost", help="Budget cap in USD for LLM calls.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds one LLM request may take before it is retried.")] = 60.0,
    attempts: Annotated[int, typer.Option(help="Attempts per LLM request (rate limits, 5xx, timeouts are retried).")] = 4,
    concurrency: Annotated[int, typer.Option(help="LLM requests in flight at once.")] = 16,
    test_images: Annotated[int, typer.Option(help="Images in the test split.")] = 200,
    shard_size: Annotated[int, typer.Option(help="Images per shard (one task each).")] = 1000,
    seed: Annotated[int, typer.Option()] = 0,
    max_failed: Annotated[float, typer.Option("--max-failed", help="Share of images allowed to fail for good before "
                                              "the build exits non-zero (default 0: any failure).")] = 0.0,
    local: Annotated[bool, typer.Option("--local", help="In-process instead of a Prefect flow.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="If another build of the dataset is running, wait for it "
                                       "instead of stopping.")] = False,
    runner: Annotated[str, typer.Option(help="Where shards run at once: threads (this process; the LLM "
                                        "--concurrency is shared by all), dask or ray (--concurrency is per worker "
                                        "process).")] = "threads",
    shards_in_flight: Annotated[int, typer.Option("--shards-in-flight", help="Shards running at once.")] = 8,
    cluster_address: Annotated[str | None, typer.Option("--cluster-address", help="Dask scheduler (tcp://host:8786) "
                                                        "or Ray (ray://host:10001) address; default: a local "
                                                        "cluster of --workers processes.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes of the local Dask or Ray cluster.")] = 2,
) -> None:
    """Build a quality-controlled instruction dataset (negative + positive pairs) from a corpus.

    The API key is read from MEDHALL_LLM_API_KEY (or OPENAI_API_KEY), never from options.
    """
    from medhall.build import BuildConfig, run_build
    from medhall.endpoints import LLMSettings

    if runner not in ("threads", "dask", "ray"):
        _fail(f"--runner {runner}: one of threads, dask, ray")
    uses_llm = generator == "llm" or llm_qc
    try:
        llm = LLMSettings(backend=backend, model=model, base_url=base_url, text_only=text_only, max_cost_usd=max_cost,
                          timeout_s=timeout, max_attempts=attempts, concurrency=concurrency) if uses_llm else None
    except ValueError as e:
        _fail(_short(e))
    try:
        cfg = BuildConfig(
            source=source, dataset=dataset, generator=generator, questions_per_image=questions_per_image, llm=llm,
            llm_qc=llm_qc, test_images=test_images, shard_size=shard_size, seed=seed,
        )
    except ValueError as e:
        _fail(str(e))
    from medhall.build import IncompleteBuild, outcome, statistics

    store = _store()
    try:
        if local:
            with console.status(f"building {dataset} from {source}..."):
                run_build(store, cfg, wait=wait)
        else:
            _run_flow("build_dataset", max_failed_share=max_failed, wait=wait, runner=runner,
                      shards_in_flight=shards_in_flight, address=cluster_address, workers=workers,
                      **{k: getattr(cfg, k) for k in ("source", "dataset", "generator", "questions_per_image", "llm",
                                                      "llm_qc", "test_images", "shard_size", "seed")})
    except IncompleteBuild:
        pass  # summarised below, from the store
    done = outcome(store, cfg, max_failed)
    if done.pairs:
        for name, table in statistics(store, cfg).items():
            console.print(_arrow_to_rich(table, title=name, limit=100))
        console.print(f"exports: {store.root / 'exports' / dataset}")
    if not done.ok:
        _fail(done.summary(), 1)
    console.print(done.summary())


@app.command()
def evaluate(
    dataset: Annotated[str, typer.Argument(help="Built dataset whose questions are asked (e.g. sample-instruct).")],
    model: Annotated[
        str, typer.Option(help="text_llm (embedded SmolLM2, question only), local_vlm, api, or import.")
    ] = "text_llm",
    path: Annotated[list[str] | None, typer.Option(help="local_vlm: checkpoint dir; import: prediction JSONL file(s).")] = None,
    adapter: Annotated[str | None, typer.Option(help="local_vlm: a LoRA adapter directory.")] = None,
    model_name: Annotated[str | None, typer.Option(help="Name the model's rows carry.")] = None,
    api_model: Annotated[str | None, typer.Option(help="api: model name at the endpoint.")] = None,
    api_url: Annotated[str | None, typer.Option(help="api: OpenAI-compatible base URL.")] = None,
    judge_model: Annotated[str | None, typer.Option(help="Judge model (e.g. gpt-4o); enables the clinical judge.")] = None,
    judge_url: Annotated[str | None, typer.Option(help="Judge's OpenAI-compatible base URL.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds one LLM request (judge, API model) may take.")] = 60.0,
    attempts: Annotated[int, typer.Option(help="Attempts per LLM request.")] = 4,
    concurrency: Annotated[int, typer.Option(help="LLM requests in flight at once.")] = 16,
    baseline: Annotated[str | None, typer.Option(help="Model whose judged answers anchor the judge.")] = None,
    split: Annotated[str, typer.Option(help="test, train, or all.")] = "test",
    max_questions: Annotated[int | None, typer.Option(help="Cap the questions (a seeded sample).")] = None,
    compare_with: Annotated[str | None, typer.Option(help="Another evaluated model to show side by side.")] = None,
    max_failed: Annotated[float, typer.Option("--max-failed", help="Share of answers (and judgments) allowed to fail "
                                              "before the command exits non-zero (default 0: any failure).")] = 0.0,
    local: Annotated[bool, typer.Option("--local", help="In-process instead of a Prefect flow.")] = False,
) -> None:
    """Evaluate a model on a built dataset: its answers, the clinical judge (with --judge-model or
    --judge-url), METEOR/ROUGE/BERTScore, and the Table 2 report (P and N separately)."""
    from medhall.endpoints import LLMSettings
    from medhall.evaluate.pipeline import MODEL_SPEC, EvalConfig, run_eval

    spec: dict = {"kind": model}
    if model == "local_vlm":
        spec.update(path=(path or [None])[0], adapter=adapter)
    elif model == "import":
        spec.update(paths=path or [])
    limits = {"timeout_s": timeout, "max_attempts": attempts, "concurrency": concurrency}
    if model == "api":
        spec.update(llm={"model": api_model, "base_url": api_url, **limits})
    try:
        judge = LLMSettings(base_url=judge_url, model=judge_model, **limits) if (judge_url or judge_model) else None
    except ValueError as e:
        _fail(_short(e))
    if adapter and path and compare_with is None:  # a fine-tuned model beside its base (the paper's "+MedHallTune")
        from medhall.infer.local_vlm import default_name

        compare_with = default_name(path[0], None)
    try:
        cfg = EvalConfig(dataset=dataset, split=None if split == "all" else split, model=MODEL_SPEC.validate_python(spec),
                         model_name=model_name, judge=judge, baseline_model=baseline, max_questions=max_questions)
    except ValueError as e:
        _fail(str(e))
    from medhall.evaluate.config import judge_model_name
    from medhall.evaluate.outcome import IncompleteEvaluation, eval_outcome
    from medhall.evaluate.report import reports_dir

    try:
        if local:
            run_eval(_store(), cfg, compare_with=compare_with)
        else:
            _run_flow("evaluate_model", dataset=dataset, model=spec, model_name=model_name, judge=judge,
                      baseline_model=baseline, split=cfg.split, max_questions=max_questions, compare_with=compare_with,
                      max_failed_share=max_failed)
    except IncompleteEvaluation:
        pass  # summarised below, from the store
    report = reports_dir(_store(), cfg) / "report.md"
    if report.exists():
        console.print(report.read_text(), markup=False, soft_wrap=True)
    done = eval_outcome(_store(), cfg, judge_model_name(cfg) if judge else None, max_failed)
    if not done.ok:
        _fail(done.summary(), 1)
    console.print(done.summary(), markup=False, soft_wrap=True)


@app.command("judge-agreement")
def judge_agreement_cmd(
    judge_url: Annotated[str | None, typer.Option(help="The candidate judge's OpenAI-compatible base URL "
                                                  "(default MEDHALL_LLM_BASE_URL).")] = None,
    judge_model: Annotated[str | None, typer.Option(help="The candidate judge model (default MEDHALL_LLM_MODEL).")] = None,
    n: Annotated[int, typer.Option("--n", help="Judge a seeded sample of this many of the release's 2,238 answers "
                                   "(0: all).")] = 200,
    release: Annotated[str, typer.Option(help="Folder with the MedHallTune release files (val_*_qa-filtered.jsonl, "
                                         "llava-med-prediction-*-GPT4o-eval-filtered.jsonl).")] = "../shared/data/medhalltune",
    dataset: Annotated[str, typer.Option(help="Dataset the release's questions are ingested into (once).")] = "medhalltune",
    seed: Annotated[int, typer.Option(help="Seed of the sample and of the bootstrap.")] = 0,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples of the 95 % intervals.")] = 1000,
    timeout: Annotated[float, typer.Option(help="Seconds one judge request may take.")] = 60.0,
    attempts: Annotated[int, typer.Option(help="Attempts per judge request.")] = 4,
    concurrency: Annotated[int, typer.Option(help="Judge requests in flight at once.")] = 16,
    local: Annotated[bool, typer.Option("--local", help="In-process instead of a Prefect flow.")] = False,
) -> None:
    """How well a candidate judge agrees with GPT-4o: it judges the MedHallTune release's
    LLaVA-Med-v1.5-7B answers, and its scores are compared with GPT-4o's (Spearman, Kendall,
    quadratic-weighted kappa, bias, exact and ±1 agreement with bootstrap 95 % intervals, per
    axis, P and N apart), beside both judges' leaderboard rows. Resumable; calls are cached."""
    from medhall.endpoints import LLMSettings
    from medhall.evaluate.agreement_run import AgreementConfig, describe_result, run_agreement
    from medhall.evaluate.config import EvalError

    try:
        judge = LLMSettings(base_url=judge_url, model=judge_model, timeout_s=timeout, max_attempts=attempts,
                            concurrency=concurrency)
        cfg = AgreementConfig(judge=judge, n=n or None, release_dir=release, dataset=dataset, seed=seed, n_boot=n_boot)
        cfg.files()
    except (ValueError, EvalError) as e:
        _fail(_short(e))
    if local:
        with console.status("judging the release's answers..."):
            result = run_agreement(_store(), cfg)
        markdown, summary, ok = result.markdown, describe_result(result), result.ok
    else:
        out = _run_flow("judge_agreement", **cfg.model_dump(exclude={"judge"}), judge=judge)
        markdown, summary, ok = Path(out["paths"]["markdown"]).read_text(), out["summary"], out["ok"]
    console.print(markdown, markup=False, soft_wrap=True)
    if not ok:
        _fail(summary, 1)
    console.print(summary, markup=False, soft_wrap=True)


@app.command("import-judgments")
def import_judgments_cmd(
    files: Annotated[list[Path], typer.Argument(help="Answers with the judge's outputs, in the MedHallTune release's "
                                                "layout (llava-med-prediction-*-GPT4o-eval-filtered.jsonl); the kind "
                                                "(P/N) from each file's name.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Stored as <dataset>-baseline-<model>.")] = "medhalltune",
    model: Annotated[str | None, typer.Option(help="The model that answered (default llava-med-v1.5-7b).")] = None,
    judge_model: Annotated[str | None, typer.Option(help="The judge that scored them (default gpt-4o).")] = None,
    metric: Annotated[list[str] | None, typer.Option(help="Reference-based metric(s): meteor (default), rouge1, "
                                                     "rouge2, rougeL, bertscore_f1.")] = None,
    no_metrics: Annotated[bool, typer.Option("--no-metrics", help="Judge scores only.")] = False,
) -> None:
    """A judged model's Table 2 row from files made elsewhere: with the release's files, the
    published LLaVA-Med-v1.5-7B row (6.28&5.03, 6.78&5.39, 5.48&4.84, 7.39&5.89, METEOR
    0.38&0.23). The answers and judgments are stored and can anchor the judge (--baseline)."""
    from medhall.evaluate.imported import import_judged
    from medhall.evaluate.text_metrics import METRICS

    metrics = [] if no_metrics else (metric or ["meteor"])
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        _fail(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    try:
        with console.status("importing answers and judgments..."):
            result = import_judged(_store(), files, dataset=dataset, model=model, judge_model=judge_model, metrics=metrics)
    except FileNotFoundError as e:
        _fail(str(e))
    console.print(result.markdown, markup=False, soft_wrap=True)


@app.command()
def train(
    dataset: Annotated[str, typer.Argument(help="A built dataset (its train split), or a LLaVA / ShareGPT JSON file.")],
    base: Annotated[str | None, typer.Option(help="Base model: checkpoint dir, hub name, tiny:llava or tiny:qwen2-vl.")] = None,
    subset: Annotated[str | None, typer.Option(help="Ablation subset: full, no_qc, positive_only, negative_only, frac_25...")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/JSON training config (docs/training.md).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config field: key=value (lora.r=16).")] = None,
    method: Annotated[str | None, typer.Option(help="sft (default) or dpo.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps.")] = None,
    image_root: Annotated[str | None, typer.Option(help="A file's image folder (default: the file's folder).")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Also write the merged model (loads like any checkpoint).")] = False,
    output_dir: Annotated[str | None, typer.Option(help="Where the run writes (default: <home>/train/<train id>).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Do not resume this run's last checkpoint.")] = False,
    result_json: Annotated[Path | None, typer.Option(help="Write the run's result here as JSON (for flows).", hidden=True)] = None,
    events: Annotated[bool, typer.Option("--events", help="Print a medhall-event JSON line per logging step.", hidden=True)] = False,
) -> None:
    """LoRA fine-tuning (sft) or preference tuning (dpo) of a VLM on a built dataset, resumable.
    On several GPUs: `accelerate launch --config_file ... -m medhall.train DATASET --base ...`."""
    from medhall.train.config import load_config
    from medhall.train.data import DataError
    from medhall.train.encode import EncodeError
    from medhall.train.model import ModelError
    from medhall.train.trainer import TrainError, run_training

    fields = {"dataset": dataset, "base": base, "subset": subset, "method": method, "max_steps": max_steps,
              "image_root": image_root, "merge": merge or None, "output_dir": output_dir}
    try:
        cfg = load_config(config, set_ or [], **fields)
    except (OSError, ValueError) as e:
        _fail(_short(e))
    try:
        from medhall.train.trainer import progress_callback

        hooks = []
        if events:
            from medhall.train.launch import events_callback

            hooks.append(events_callback())
        else:
            hooks.append(progress_callback())
        res = run_training(_store(), cfg, resume=not fresh, callbacks=hooks)
    except (DataError, EncodeError, ModelError, TrainError) as e:
        _fail(str(e), 1)
    if res.adapter_dir is None:  # not the main process of a distributed run
        return
    if result_json is not None:
        from dataclasses import asdict

        from medhall import atomic

        atomic.write_bytes(result_json, json.dumps(asdict(res), default=str, indent=2).encode())
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(res.skipped.items())) or "none"
    what = "examples" if cfg.method == "sft" else "preference pairs (rejected answers: " + ", ".join(
        f"{k} {v}" for k, v in sorted(res.extras.get("rejected_sources", {}).items())) + ")"
    loss = f"loss {res.train_loss:.4f}" if res.train_loss is not None else "no loss"
    if res.status == "already_trained":
        console.print(f"[bold]{res.train_id}[/]: already trained ({cfg.method} on {res.examples} {what}, {res.steps} "
                      f"steps, {loss}); --fresh trains it again")
    else:
        console.print(f"[bold]{res.train_id}[/]: {cfg.method} on {res.examples} {what}, {res.steps} steps"
                      + (f" (resumed from {Path(res.resumed_from).name})" if res.resumed_from else "")
                      + f", {loss}, {res.seconds:.1f} s")
    console.print(f"skipped QA pairs: {skipped}; truncated examples: {res.truncated}")
    console.print(f"adapter: {res.adapter_dir}" + (f"\nmerged:  {res.merged_dir}" if res.merged_dir else ""))
    console.print(f"curves:  {res.extras['png']}")
    console.print(f"evaluate it: medhall evaluate {dataset if not dataset.endswith('.json') else 'DATASET'} --model local_vlm --path {res.extras['base_path']} "
                  f"--adapter {res.adapter_dir}")


@app.command("export-pairs")
def export_pairs_cmd(
    dataset: Annotated[str, typer.Argument(help="A built dataset (the negative questions of its train split).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write into (created).")],
    format_: Annotated[str, typer.Option("--format", help="trl (JSON lines) or llamafactory (ShareGPT ranking + dataset_info.json).")] = "trl",
    subset: Annotated[str, typer.Option(help="Ablation subset: full, no_qc, negative_only, frac_25...")] = "full",
) -> None:
    """Preference pairs (chosen: the premise-correcting answer; rejected: one that accepts the
    false premise) for DPO in TRL or LLaMA-Factory, from a build's negative questions."""
    from medhall.train.data import DataError
    from medhall.train.dpo import FORMATS, export_pairs, pairs_from_store

    if format_ not in FORMATS:
        _fail(f"unknown --format {format_!r}; use one of: {', '.join(FORMATS)}")
    try:
        data = pairs_from_store(_store(), dataset, subset)
    except DataError as e:
        _fail(str(e), 1)
    paths = export_pairs(data, out, format_, name=f"{dataset}_{subset}_dpo")
    sources = ", ".join(f"{k} {v}" for k, v in sorted(data.rejected_sources.items()))
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(data.skipped.items())) or "none"
    console.print(f"{len(data.examples)} preference pairs (rejected answers: {sources}); skipped: {skipped}")
    for p in paths:
        console.print(f"  {p}")


def _short(error: Exception) -> str:
    """A validation error in one line per problem, without pydantic's links."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors())
    return str(error)


@app.command()
def vqa(
    config: Annotated[Path, typer.Argument(help="JSON file: {benchmarks: [...], models: [...]} (docs/vqa_flow.md).")],
    dataset: Annotated[str | None, typer.Option(help="Dataset to write predictions and scores to (default: vqa).")] = None,
    shard_size: Annotated[int | None, typer.Option(help="Questions per shard (one task each).")] = None,
    max_failed: Annotated[float, typer.Option("--max-failed", help="Share of answers allowed to fail before the "
                                              "command exits non-zero (default 0: any failure).")] = 0.0,
    local: Annotated[bool, typer.Option("--local", help="In-process instead of a Prefect flow.")] = False,
) -> None:
    """Zero-shot medical VQA (VQA-RAD, PathVQA, SLAKE, PMC-VQA, OmniMedVQA): the paper's Table 3."""
    from medhall.vqa.config import load_config
    from medhall.vqa.pipeline import run_vqa

    try:
        cfg = load_config(config, dataset=dataset, shard_size=shard_size)
    except (OSError, ValueError) as e:
        _fail(_short(e))
    if local:
        out = run_vqa(_store(), cfg)
        text, counts = out["report"]["markdown_text"], out["counts"]
    else:
        out = _run_flow("zero_shot_vqa", **cfg.model_dump(mode="json"))
        text, counts = Path(out["report"]["markdown"]).read_text(), out["counts"]
    console.print(text)
    summary = f"answered {counts['answered']}, failed {counts['failed']}, quarantined {counts['quarantined']}"
    if counts["answered"] and counts["failed"] > max_failed * counts["answered"]:
        _fail(f"{summary}: more failures than --max-failed {max_failed:g} allows (the reasons are in the report "
              "above and in the quarantine table); re-run to retry them", 1)
    console.print(summary)


@app.command()
def ingest(
    adapter: Annotated[str, typer.Argument(help="llava_med_captions | llava_med_instruct | pubmedvision | medhalltune | generic")],
    paths: Annotated[list[Path], typer.Argument(help="Input files (JSON, JSONL, CSV, Parquet).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name in the store.")],
    images_dir: Annotated[
        Path | None, typer.Option(help="Where image paths are relative to (default: each file's folder).")
    ] = None,
    require_images: Annotated[
        bool | None,
        typer.Option(
            "--require-images/--allow-missing-images",
            help="Quarantine rows whose image is missing (default: the adapter's choice).",
            show_default=False,
        ),
    ] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="generic adapter: FIELD=COLUMN (fields: image caption id modality body_part question answer kind category)."),
    ] = None,
    allow_outside_root: Annotated[
        bool,
        typer.Option("--allow-outside-root", help="Follow image paths ('../', absolute, symlinks) that resolve outside "
                     "the images root (default: quarantined as outside_root; MEDHALL_INGEST_ALLOW_OUTSIDE_ROOT)."),
    ] = False,
) -> None:
    """Ingest a corpus into the store: images checked and deduplicated, bad rows quarantined.

    Images are read only from regular files inside the images root (--images-dir, else each
    input file's folder), of at most MEDHALL_IMAGE_MAX_BYTES bytes (default 512 MiB) and
    MEDHALL_IMAGE_MAX_PIXELS pixels declared in the header (default 50,000,000; DICOM: rows x
    columns x frames x samples). Captions and QA pairs that address a model ("ignore previous
    instructions", role tags) are quarantined as prompt_injection. See docs/ingest.md.
    """
    from medhall.jobs import ingest_to_store

    options = {}
    if map_:
        try:
            options["mapping"] = dict(m.split("=", 1) for m in map_)
        except ValueError:
            _fail("--map takes FIELD=COLUMN")
    try:
        out = ingest_to_store(
            adapter, paths, dataset=dataset, store=_store(), images_dir=images_dir,
            require_images=require_images, options=options, allow_outside_root=allow_outside_root or None,
        )
    except (FileNotFoundError, KeyError, ValueError) as e:
        _fail(str(e).strip("'\""))
    _print_summary(out.summary)
    for name, art in out.artifacts.items():
        console.print(f"  [green]{name:<13}[/] {art.rows:>7} rows  {art.name}")
    if not out.ok:
        err.print("[bold red]nothing valid was read[/]")
        raise typer.Exit(1)


@app.command()
def sample(
    dataset: Annotated[str, typer.Argument(help="Dataset to draw from.")],
    n: Annotated[int, typer.Option("--n", "-n", help="Number of images.")],
    out_dataset: Annotated[str, typer.Option("--out", help="Dataset to write the sample to.")],
    seed: Annotated[int, typer.Option(help="Seed of the draw.")] = 0,
    by: Annotated[str, typer.Option(help="Comma-separated columns to stratify by.")] = "modality,body_part",
) -> None:
    """Draw a seeded sample of N images stratified by modality/body part (with their instructions)."""
    import pyarrow.compute as pc

    from medhall.ids import run_id
    from medhall.sampling import counts, stratified_sample

    store = _store()
    images = store.get("images", dataset)
    picked = stratified_sample(images.read(), n, seed=seed, by=[c.strip() for c in by.split(",") if c.strip()])
    config = {"from": dataset, "n": n, "seed": seed, "by": by}
    rid = run_id("sample", config, [images.fingerprint])
    picked = picked.set_column(picked.schema.get_field_index("dataset"), "dataset", [[out_dataset] * picked.num_rows])
    art = store.write("images", picked, dataset=out_dataset, config=config, inputs=[images.fingerprint], run_id=rid)
    instr = store.latest("instructions", dataset)
    if instr is not None:
        t = instr.read()
        t = t.filter(pc.is_in(t.column("image_id"), picked.column("image_id")))
        t = t.set_column(t.schema.get_field_index("dataset"), "dataset", [[out_dataset] * t.num_rows])
        store.write("instructions", t, dataset=out_dataset, config=config, inputs=[instr.fingerprint], run_id=rid)
    console.print(f"sampled {picked.num_rows} images from {dataset} into {art.name}")
    console.print(_arrow_to_rich(_counts_table(counts(picked, "modality"), "modality"), title="by modality"))


def _counts_table(pairs, name):
    import pyarrow as pa

    return pa.table({name: [p[0] for p in pairs], "count": [p[1] for p in pairs]})


@app.command()
def stats(
    dataset: Annotated[str, typer.Argument(help="Dataset name.")] = "sample",
) -> None:
    """Counts by modality and body part (and instruction kind/category): a table, CSV and PNG chart."""
    from medhall.jobs import write_stats
    from medhall.store import StoreError

    store = _store()
    try:
        csv_path, png = write_stats(store, dataset)
    except StoreError as e:
        _fail(str(e))
    import pyarrow.csv as pacsv

    console.print(_arrow_to_rich(pacsv.read_csv(csv_path), title=f"{dataset} statistics", limit=200))
    console.print(f"CSV: {csv_path}\nPNG: {png}")


#: ``medhall sql --out``'s format from the file's extension when --format is not given; JSON is
#: written as JSON lines (one object per line) whatever the extension.
SQL_OUT_EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet"}


def _sql_out(out: Path, format_: OutFormat | None, force: bool, home: Path) -> tuple[Path, str]:
    """Where and in which format ``medhall sql --out`` writes; a one-line error (before the query
    runs) for a path inside MEDHALL_HOME, a directory, an existing file without --force, or a
    format that neither --format nor the extension gives."""
    from rich.markup import escape

    target = Path(os.path.abspath(out.expanduser()))
    home = home.resolve()
    home_stat = home.stat() if home.exists() else None
    # the path as given and with symlinks resolved; samestat also catches another spelling of
    # MEDHALL_HOME (a case-insensitive file system, a bind mount)
    for path in (target, target.resolve()):
        for p in (path, *path.parents):
            if p == home or (home_stat is not None and p.exists() and os.path.samestat(p.stat(), home_stat)):
                _fail(escape(f"refusing to write inside MEDHALL_HOME ({home}): the store, catalog and "
                             "caches live there; give --out a path outside it"))
    if target.is_dir():
        _fail(escape(f"--out {out} is a directory; give a file name (e.g. {out / 'result.csv'})"))
    if (target.exists() or target.is_symlink()) and not force:
        _fail(escape(f"--out {out} exists; add --force to replace it"))
    if format_ is not None and format_ is not OutFormat.table:
        return target, format_.value
    fmt = SQL_OUT_EXTENSIONS.get(target.suffix.lower())
    if fmt is None:
        _fail(escape(f"cannot tell the format of --out {out} from its extension: name it .csv, .json, "
                     ".jsonl or .parquet, or give --format csv|json|parquet"))
    return target, fmt


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One read-only SQL statement (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN).")],
    format_: Annotated[
        OutFormat | None,
        typer.Option("--format", "-f", help="Output format (default: table; with --out: the file's extension's)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the result to this file (.csv, .json/.jsonl: JSON lines, .parquet); "
                     "never inside MEDHALL_HOME."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    limit: Annotated[int, typer.Option(help="Rows shown in table format.")] = 50,
) -> None:
    """Query the tables with DuckDB SQL (read-only). Views: images, instructions, qc_verdicts, ...

    Every table is a view of its latest versions; `<table>_versions`, `<table>__<dataset>`,
    `<table>__<dataset>__v<N>` and `artifacts` are there too. Exactly one SELECT (or EXPLAIN of
    one) runs, reading only the store's tables: anything else (INSERT, COPY, ATTACH, SET, PRAGMA,
    EXPLAIN ANALYZE, query(), read_csv() of other files, ...) is refused and changes nothing.
    """
    from rich.markup import escape

    from medhall.store import ReadOnlyError, SQLError
    from medhall.store import query as run_query

    store = _store()
    target = fmt = None
    if out is not None:
        target, fmt = _sql_out(out, format_, force, store.root)
    elif format_ is OutFormat.parquet:
        _fail("parquet is binary and is never written to the terminal: give --out FILE.parquet")
    try:
        result = run_query(store, query)
    except (ReadOnlyError, SQLError) as e:
        _fail(escape(str(e)))
    from medhall.report.export import write_table

    if target is None:
        if format_ is None or format_ is OutFormat.table:
            console.print(_arrow_to_rich(result, limit=limit))
            return
        import sys

        write_table(result, sys.stdout.buffer, format_.value)
        return
    try:
        write_table(result, target, fmt, overwrite=force)
    except FileExistsError:
        _fail(escape(f"--out {out} exists; add --force to replace it"))
    except OSError as e:
        _fail(escape(f"could not write --out {out}: {e.strerror or e}"))
    err.print(escape(f"wrote {result.num_rows} rows to {target} ({fmt})"))


@app.command()
def tables() -> None:
    """List every artifact version in the store."""
    store = _store()
    t = Table(header_style="bold cyan")
    for col in ("dataset", "table", "version", "rows", "fingerprint", "created"):
        t.add_column(col)
    for a in store.artifacts():
        t.add_row(a.dataset, a.table, str(a.version), str(a.rows), a.fingerprint[:12], a.manifest.get("created_at", ""))
    console.print(t if t.row_count else f"no artifacts yet in {store.root}")


@app.command()
def gc(
    keep: Annotated[int, typer.Option("--keep", "-k", min=1, help="Versions of each table to keep (newest first); "
                                      "the versions they were made from are kept too.")] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Say what would be removed; remove nothing.")] = False,
) -> None:
    """Free disk: prune old table versions and their exports, sweep what killed runs left.

    Never removes the latest version of a table nor anything a kept version was made from; a
    dataset being built or ingested is skipped. See docs/store.md.
    """
    from medhall.store.housekeeping import collect

    store = _store()
    report = collect(store, keep, dry_run=dry_run)
    for p in report.removed + report.swept:
        console.print(f"{'would remove' if dry_run else 'removed'} {p.relative_to(store.root)}", highlight=False)
    console.print(report.summary(dry_run))


@app.command()
def schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print docs/tables.md.")] = False,
) -> None:
    """Show the table spine: every table's fields with types and meaning."""
    from medhall.schema import TABLES, docs_markdown

    if markdown:
        typer.echo(docs_markdown())
        return
    for name, s in TABLES.items():
        t = Table(title=f"{name}: {s.metadata[b'doc'].decode()}", header_style="bold cyan", title_justify="left")
        for col in ("field", "type", "meaning"):
            t.add_column(col, overflow="fold")
        for f in s:
            t.add_row(f.name, str(f.type), (f.metadata or {}).get(b"doc", b"").decode())
        console.print(t)


@app.command()
def catalog() -> None:
    """Rebuild the DuckDB catalog (views over every artifact) and print its path."""
    from medhall.store import build_catalog

    path = build_catalog(_store())
    console.print(str(path))
    console.print(json.dumps({"open_with": f"duckdb -readonly {path}"}))


def command_name() -> str:
    """How to type this command again: ``medhall`` where that is on PATH and is this one, else
    its path (``.venv/bin/medhall`` after ``make demo``, which does not activate the venv)."""
    import shutil
    import sys

    argv0 = Path(sys.argv[0])
    found = shutil.which("medhall")
    if argv0.name != "medhall" or (found and Path(found).resolve() == argv0.resolve()):
        return "medhall"
    try:
        return str(argv0.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(argv0.resolve())


def _expected(error: BaseException) -> bool:
    """A problem with the input (a bad value or config, a missing dataset, file or key), not a
    crash: said as ``error: ...``; anything else as ``unexpected error: ...`` (a launcher
    retries those: see :mod:`medhall.train.launch`)."""
    from pydantic import ValidationError

    from medhall.errors import MedhallError
    from medhall.llm.errors import LLMError

    return isinstance(error, MedhallError | ValidationError | ValueError | LookupError | FileNotFoundError
                      | PermissionError | IsADirectoryError | NotADirectoryError | LLMError)


def _describe(error: BaseException) -> str:
    """An exception in at most three lines: what went wrong, in the words of who raised it."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return _short(error)
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and text[:1] in ("'", '"'):
        text = text[1:-1]
    if not _expected(error):
        text = f"{type(error).__name__}: {text}"
    lines = text.splitlines()
    return "\n".join(lines[:3]) + (" ..." if len(lines) > 3 else "")


def run() -> None:
    """The ``medhall`` entry point: the commands, with any failure as a short message (the
    traceback with ``--debug``) and Ctrl-C as a clean stop that says how to resume."""
    import sys

    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv.remove("--debug")
    interrupted = "[yellow]interrupted[/]: what was finished is saved; run the same command again to resume"
    try:
        code = app(standalone_mode=False)
        if code == 130:  # click (8.2+) turns Ctrl-C into exit code 130 without a word
            err.print(interrupted)
    except KeyboardInterrupt:
        err.print(interrupted)
        code = 130
    except Exception as e:
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()  # a usage error (typer's own click): its message with the usage line
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":
            err.print(interrupted)
            sys.exit(130)
        if debug:
            raise
        label = "error" if _expected(e) else "unexpected error"
        err.print(f"[bold red]{label}:[/] {_describe(e)}", markup=True, highlight=False)
        err.print("(run again with --debug for the traceback)", style="dim")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    run()
