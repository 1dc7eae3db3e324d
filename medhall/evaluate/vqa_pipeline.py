"""Zero-shot medical VQA (the paper's Table 3) over several models and benchmarks, resumably.

The steps (each a Prefect task in ``flows/zero_shot_vqa.py``; each callable on its own here):

1. :func:`load`: read every benchmark (:func:`medhall.evaluate.vqa_data.load_benchmark`); rows
   that could not be read become ``quarantine`` rows (stage ``vqa``).
2. :func:`plan`: for each (model, benchmark), the items that no finished shard has answered
   yet, cut into shards. Resume is a set difference on item keys
   (``<item_id>:<hash of the prompt and the image's presence and size>``).
3. :func:`answer_shard`: one shard's answers from the model's runner, written atomically as
   ``predictions`` rows with a completion marker (``<shard key>.done.json``) written last.
4. :func:`assemble`: the finished shards into the ``predictions`` artifact, every answer scored
   (:func:`medhall.evaluate.vqa_metrics.score_items`) into the ``scores`` artifact (long: one
   row per item, model and metric), the loader problems into ``quarantine``.
5. :func:`report`: Table 3 (:mod:`medhall.evaluate.vqa_report`) as Markdown, CSV and PNG, and
   the long summary as CSV, under ``<home>/reports/<dataset>/``.

:func:`run_vqa` runs them in one process. Each model's runner is made once, answers all its
shards on every benchmark, and is unloaded (``unload()``) before the next model is loaded.

Answers live under ``<home>/work/vqa/<model key>/<benchmark>/shards/``: the model key hashes
what decides an answer (kind, checkpoint and adapter with their file fingerprints, generation
settings; not the model's display name, batch size or device), so answers are reused by any
later run, under any output dataset name, that asks the same model the same questions. A run
killed mid-way redoes only unfinished shards. An item whose image is missing or undecodable is
answered with a failure (``predictions.status = failed``) and counts as done until its image
appears or changes size; other failures (a generation error) are asked again on the next run.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medhall.atomic import atomic_path
from medhall.evaluate.vqa_data import VQAItem, VQALoad, benchmark_key, load_benchmark, prompt_for
from medhall.ids import canonical_json, content_id, file_sha256, sha256_hex
from medhall.store import ArtifactStore
from medhall.workdir import work_id

if TYPE_CHECKING:
    from medhall.infer.base import Answer, Query, Runner

DONE_SUFFIX = ".done.json"
#: Failures that asking again would repeat (the input is at fault): such an item counts as done.
FINAL_ERRORS: tuple[str, ...] = ("missing_image", "corrupt_image")
#: Runner settings that do not change the answers, left out of the model key.
NOT_IDENTITY: frozenset[str] = frozenset(
    {
        "batch_size",
        "device",
        "concurrency",
        "requests_per_min",
        "tokens_per_min",
        "max_cost_usd",
        "timeout_s",
        "name",
    }
)
#: Files up to this size are fingerprinted by content, larger ones (weights) by size and mtime.
CONTENT_FINGERPRINT_LIMIT = 64 * 1024 * 1024
#: Per-item metrics written to the ``scores`` table (those of the item's split).
SCORE_METRICS: tuple[str, ...] = (
    "llava_recall", "llava_precision", "llava_f1", "llava_open_hit", "token_f1", "exact_match",
    "llava_closed", "closed_strict", "choice_acc",
)  # fmt: skip
ORIGINS: dict[str, str] = {"local_vlm": "local", "api": "api"}

RunnerFactory = Callable[["ModelSpec", "VQAConfig"], "Runner"]


# --------------------------------------------------------------------------------------------
# Configuration


class BenchmarkSpec(BaseModel):
    """One benchmark file (or folder) to ask, in the form its authors publish it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        ...,
        description="Benchmark: vqa_rad, pathvqa, slake, pmc_vqa, omnimedvqa, llava_med_test (aliases such as VQA-RAD work).",
    )
    path: str = Field(..., description="The benchmark's file (or a folder of its files).")
    image_root: str | None = Field(
        None,
        description="Folder the items' image paths are relative to (default: the file's folder).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description='Loader keyword options, e.g. {"split": null} for all of VQA-RAD.',
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return benchmark_key(name)

    def images_dir(self) -> Path:
        """Where the items' relative image paths start."""
        if self.image_root:
            return Path(self.image_root)
        p = Path(self.path)
        return p if p.is_dir() else p.parent


class ModelSpec(BaseModel):
    """One model under test, and how to make its runner."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(..., min_length=1, description="Name in the predictions, scores and Table 3.")
    kind: Literal["local_vlm", "api"] = Field(
        "local_vlm",
        description="local_vlm: medhall.infer.LocalVLM; api: medhall.infer.api.APIModel.",
    )
    path: str | None = Field(None, description="Checkpoint directory or hub name (local_vlm).")
    adapter: str | None = Field(
        None, description="LoRA adapter directory, merged after loading (local_vlm)."
    )
    base: str | None = Field(
        None,
        description="For a fine-tuned model: the name of its base model (its Table 3 row follows the base's).",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Runner options: dtype, device, batch_size, max_new_tokens, system_prompt, ... (api: the APIModel's options).",
    )

    @model_validator(mode="after")
    def _runner_inputs(self) -> ModelSpec:
        if self.kind == "local_vlm" and not self.path:
            raise ValueError(f"model {self.name!r}: a local_vlm needs a path")
        if self.base == self.name:
            raise ValueError(f"model {self.name!r} cannot be its own base")
        return self


class VQAConfig(BaseModel):
    """Everything that decides a zero-shot VQA run (recorded in the artifacts' manifests)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    benchmarks: tuple[BenchmarkSpec, ...] = Field(..., min_length=1)
    models: tuple[ModelSpec, ...] = Field(..., min_length=1)
    closed_variant: Literal["gated", "run_eval", "run_eval_batch"] = Field(
        "gated", description="LLaVA-Med closed-question rule (docs/vqa.md)."
    )
    max_new_tokens: int = Field(
        128, ge=1, description="Generation limit, unless a model's settings give one."
    )
    shard_size: int = Field(
        256, ge=1, description="Questions per shard (one task, one completion marker)."
    )
    dataset: str = Field(
        "vqa",
        min_length=1,
        description="Dataset the predictions, scores and quarantine tables are written to.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> VQAConfig:
        _unique("model", [m.name for m in self.models])
        _unique("benchmark", [b.name for b in self.benchmarks])
        names = {m.name for m in self.models}
        for m in self.models:
            if m.base is not None and m.base not in names:
                raise ValueError(f"model {m.name!r}: its base {m.base!r} is not one of the models")
        return self

    def model(self, name: str) -> ModelSpec:
        """The model named ``name``."""
        return _by_name(self.models, name, "model")

    def benchmark(self, name: str) -> BenchmarkSpec:
        """The benchmark named ``name`` (any spelling :func:`benchmark_key` accepts)."""
        return _by_name(self.benchmarks, benchmark_key(name), "benchmark")

    def base_of(self) -> dict[str, str]:
        """Fine-tuned model -> its base model."""
        return {m.name: m.base for m in self.models if m.base}


def _unique(what: str, names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")


def _by_name(specs: Iterable[Any], name: str, what: str) -> Any:
    for s in specs:
        if s.name == name:
            return s
    raise KeyError(f"no {what} named {name!r} in the configuration")


def load_config(path: str | os.PathLike[str], **overrides: Any) -> VQAConfig:
    """A :class:`VQAConfig` from a JSON file (``{"benchmarks": [...], "models": [...], ...}``),
    with ``overrides`` (e.g. ``dataset=``, ``shard_size=``; ``None`` values are ignored)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return VQAConfig.model_validate(
        {**data, **{k: v for k, v in overrides.items() if v is not None}}
    )


# --------------------------------------------------------------------------------------------
# Fingerprints and keys


def path_fingerprint(path: str | os.PathLike[str] | None) -> str | None:
    """A file's or folder's fingerprint: content hashes of files up to
    :data:`CONTENT_FINGERPRINT_LIMIT`, size and mtime of larger ones; ``ref:<path>`` for a path
    that is not on disk (a hub name); ``None`` for ``None``."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return _file_fingerprint(p)
    if p.is_dir():
        files = sorted(c for c in p.rglob("*") if c.is_file())
        return sha256_hex(
            canonical_json([(str(c.relative_to(p)), _file_fingerprint(c)) for c in files])
        )
    return f"ref:{path}"


def _file_fingerprint(p: Path) -> str:
    st = p.stat()
    if st.st_size <= CONTENT_FINGERPRINT_LIMIT:
        return file_sha256(p)
    return f"size:{st.st_size}:mtime:{st.st_mtime_ns}"


def model_identity(spec: ModelSpec, cfg: VQAConfig) -> dict[str, Any]:
    """What decides the model's answers: kind, files (with fingerprints), generation settings."""
    settings = {k: v for k, v in spec.settings.items() if k not in NOT_IDENTITY}
    settings.setdefault("max_new_tokens", cfg.max_new_tokens)
    if spec.kind == "api":  # the endpoint's model may come from the environment
        settings["endpoint"] = api_parts(spec, cfg)[0].identity()
    files = {
        "path": spec.path,
        "adapter": spec.adapter,
        "chat_template": settings.get("chat_template"),
    }
    fingerprints = {
        k: path_fingerprint(v)
        for k, v in files.items()
        if isinstance(v, str) and (k != "chat_template" or Path(v).is_file())
    }
    return {
        "kind": spec.kind,
        "path": spec.path,
        "adapter": spec.adapter,
        "settings": settings,
        "files": fingerprints,
    }


def model_key(spec: ModelSpec, cfg: VQAConfig) -> str:
    """16 hex of the hash of :func:`model_identity`: names the model's work folder."""
    return sha256_hex(canonical_json(model_identity(spec, cfg)))[:16]


def _image_path(item: VQAItem, images_dir: Path) -> Path | None:
    """The item's image file (``None`` for an image embedded in a Parquet row)."""
    if item.meta.get("image_parquet"):
        return None
    p = Path(item.image_ref)
    return p if p.is_absolute() else images_dir / p


def _image_stamp(item: VQAItem, images_dir: Path) -> int | str | None:
    """``embedded``, the image file's size, or ``None`` when it is missing."""
    path = _image_path(item, images_dir)
    if path is None:
        return "embedded"
    try:
        return path.stat().st_size
    except OSError:
        return None


def item_key(item: VQAItem, images_dir: Path) -> str:
    """``<item_id>:<12 hex>`` of what the model is shown: the prompt and the image's presence
    and size. A changed question or a missing image that appears gives a new key."""
    shown = canonical_json([prompt_for(item), _image_stamp(item, images_dir)])
    return f"{item.item_id}:{sha256_hex(shown)[:12]}"


def shard_key(keys: Iterable[str]) -> str:
    """16 hex of the hash of a shard's item keys."""
    return sha256_hex(canonical_json(sorted(keys)))[:16]


def _item_id_of(key: str) -> str:
    return key.rsplit(":", 1)[0]


# --------------------------------------------------------------------------------------------
# Step 1: load


@dataclass(frozen=True)
class Loaded:
    """Every benchmark's items, their problems as quarantine rows, what was skipped."""

    items: dict[str, list[VQAItem]]  # benchmark name -> items
    quarantine: pa.Table
    skipped: dict[str, dict[str, int]]
    fingerprints: dict[str, str]  # benchmark name -> file fingerprint
    run_id: str


_LOAD_CACHE: dict[str, VQALoad] = {}
_LOAD_CACHE_SIZE = 8


def load_items(spec: BenchmarkSpec, fingerprint: str | None = None) -> VQALoad:
    """The benchmark's :class:`VQALoad`, memoised per (spec, file fingerprint) in this process
    (shard tasks of one flow run read each file once)."""
    fingerprint = fingerprint or path_fingerprint(spec.path) or ""
    key = canonical_json([spec.model_dump(mode="json"), fingerprint])
    if key not in _LOAD_CACHE:
        if len(_LOAD_CACHE) >= _LOAD_CACHE_SIZE:
            _LOAD_CACHE.pop(next(iter(_LOAD_CACHE)))
        _LOAD_CACHE[key] = load_benchmark(spec.name, spec.path, **spec.options)
    return _LOAD_CACHE[key]


def vqa_run_id(cfg: VQAConfig, fingerprints: Mapping[str, str]) -> str:
    """The run id: the config, the benchmark fingerprints and the model keys."""
    from medhall.ids import run_id

    inputs = [*fingerprints.values(), *(model_key(m, cfg) for m in cfg.models)]
    return run_id("vqa", cfg.model_dump(mode="json"), inputs)


def load(cfg: VQAConfig) -> Loaded:
    """Read every benchmark; rows that could not be read become quarantine rows (stage ``vqa``)."""
    from medhall.evaluate.predictions import problems_table

    fingerprints = {b.name: path_fingerprint(b.path) or "" for b in cfg.benchmarks}
    rid = vqa_run_id(cfg, fingerprints)
    loads = {b.name: load_items(b, fingerprints[b.name]) for b in cfg.benchmarks}
    quarantine = pa.concat_tables(
        [
            problems_table(ld.problems, stage="vqa", source=name, dataset=cfg.dataset, run_id=rid)
            for name, ld in loads.items()
        ]
    )
    return Loaded(
        items={name: ld.items for name, ld in loads.items()},
        quarantine=quarantine,
        skipped={name: dict(ld.skipped) for name, ld in loads.items()},
        fingerprints=fingerprints,
        run_id=rid,
    )


# --------------------------------------------------------------------------------------------
# Step 2: plan


@dataclass(frozen=True)
class Shard:
    """Items answered together: one task, one completion marker."""

    key: str
    item_ids: tuple[str, ...]


@dataclass(frozen=True)
class Unit:
    """One model on one benchmark: its work folder and the shards still to answer."""

    model: str
    benchmark: str
    model_key: str
    work_dir: Path
    todo: tuple[Shard, ...]
    done_shards: int
    items: int


@dataclass(frozen=True)
class VQAPlan:
    """What :func:`plan` decided."""

    run_id: str
    fingerprints: dict[str, str]
    units: tuple[Unit, ...]

    def units_of(self, model: str) -> list[Unit]:
        return [u for u in self.units if u.model == model]

    @property
    def shards_todo(self) -> int:
        return sum(len(u.todo) for u in self.units)


def work_dir(store: ArtifactStore, spec: ModelSpec, benchmark: str, cfg: VQAConfig) -> Path:
    """``<home>/work/vqa/<model key>/<benchmark>``: shared by every run asking that model."""
    return store.root / "work" / "vqa" / model_key(spec, cfg) / benchmark


def marker_path(wd: Path | str, key: str) -> Path:
    """The completion marker of shard ``key`` in work folder ``wd``."""
    return Path(wd) / "shards" / f"{key}{DONE_SUFFIX}"


def _markers(wd: Path) -> list[Path]:
    """Completion markers, newest first."""
    found = (wd / "shards").glob(f"*{DONE_SUFFIX}") if (wd / "shards").is_dir() else []
    return sorted(found, key=lambda m: (m.stat().st_mtime_ns, m.name), reverse=True)


def finished(wd: Path) -> dict[str, dict[str, Any]]:
    """Finished shards of a work folder: key -> marker (``keys`` asked, ``done`` keys, ...)."""
    return {m.name[: -len(DONE_SUFFIX)]: json.loads(m.read_text()) for m in _markers(wd)}


def _todo(
    items: Sequence[VQAItem], keys: Sequence[str], done: set[str], size: int
) -> tuple[Shard, ...]:
    order = sorted((k, it.item_id) for k, it in zip(keys, items, strict=True) if k not in done)
    chunks = (order[i : i + size] for i in range(0, len(order), size))
    return tuple(Shard(shard_key(k for k, _ in c), tuple(i for _, i in c)) for c in chunks)


def plan(store: ArtifactStore, cfg: VQAConfig, loaded: Loaded | None = None) -> VQAPlan:
    """For every (model, benchmark), the items no finished shard has done, in shards."""
    loaded = loaded or load(cfg)
    units = []
    for spec in cfg.models:
        for bench in cfg.benchmarks:
            wd = work_dir(store, spec, bench.name, cfg)
            work_id(wd, create=True)
            markers = finished(wd)
            done = {k for m in markers.values() for k in m["done"]}
            items = loaded.items[bench.name]
            keys = [item_key(it, bench.images_dir()) for it in items]
            todo = _todo(items, keys, done, cfg.shard_size)
            units.append(
                Unit(
                    spec.name, bench.name, model_key(spec, cfg), wd, todo, len(markers), len(items)
                )
            )
    return VQAPlan(loaded.run_id, loaded.fingerprints, tuple(units))


# --------------------------------------------------------------------------------------------
# Runners


def local_vlm_runner(spec: ModelSpec, cfg: VQAConfig) -> Runner:
    """A :class:`medhall.infer.LocalVLM` for ``spec`` (nothing is loaded until it answers)."""
    from medhall.infer import LocalVLM

    options = {"max_new_tokens": cfg.max_new_tokens, **spec.settings}
    return LocalVLM(spec.path, adapter_path=spec.adapter, name=spec.name, **options)


def api_parts(spec: ModelSpec, cfg: VQAConfig) -> tuple[Any, dict[str, Any]]:
    """An ``api`` model's settings split into the endpoint (:class:`medhall.endpoints.LLMSettings`:
    ``backend``, ``model``, ``base_url``, ``concurrency``, rate limits, ``max_cost_usd``,
    ``timeout_s``) and the :class:`medhall.infer.api.APIModel` options (``system_prompt``,
    ``image_max_side``, ``text_only``; ``max_new_tokens`` becomes ``max_tokens``)."""
    from medhall.endpoints import LLMSettings

    settings = dict(spec.settings)
    max_tokens = settings.pop("max_new_tokens", cfg.max_new_tokens)
    endpoint = {k: v for k, v in settings.items() if k in LLMSettings.model_fields}
    options = {
        k: v for k, v in settings.items() if k not in LLMSettings.model_fields or k == "text_only"
    }
    return LLMSettings(**endpoint), {**options, "max_tokens": max_tokens}


@dataclass
class ClientOwningRunner:
    """An API runner with the LLM client made for it: :meth:`unload` closes the client."""

    runner: Any
    client: Any

    @property
    def name(self) -> str:
        return self.runner.name

    def answer(self, items: Sequence[Query]) -> list[Answer]:
        return self.runner.answer(items)

    def settings(self) -> dict[str, Any]:
        return self.runner.settings()

    def unload(self) -> None:
        self.client.close()


def api_runner(spec: ModelSpec, cfg: VQAConfig) -> Runner:
    """A :class:`medhall.infer.api.APIModel` on a client made from :func:`api_parts` (API keys
    come from the environment, never from the config)."""
    from medhall.endpoints import make_client
    from medhall.infer.api import APIModel

    endpoint, options = api_parts(spec, cfg)
    client = make_client(endpoint)
    return ClientOwningRunner(APIModel(client, name=spec.name, **options), client)


RUNNER_FACTORIES: dict[str, RunnerFactory] = {"local_vlm": local_vlm_runner, "api": api_runner}


def make_runner(spec: ModelSpec, cfg: VQAConfig) -> Runner:
    """The runner of ``spec.kind`` (see :data:`RUNNER_FACTORIES`)."""
    return RUNNER_FACTORIES[spec.kind](spec, cfg)


@dataclass
class RunnerPool:
    """At most one runner per model, made on first use and unloaded by :meth:`release`."""

    factory: RunnerFactory = make_runner
    _runners: dict[str, Runner] = field(default_factory=dict, init=False, repr=False)

    def get(self, spec: ModelSpec, cfg: VQAConfig) -> Runner:
        key = f"{spec.name}:{model_key(spec, cfg)}"
        if key not in self._runners:
            self._runners[key] = self.factory(spec, cfg)
        return self._runners[key]

    def release(self, name: str) -> None:
        """Unload and forget the runners of model ``name``."""
        for key in [k for k in self._runners if k.rsplit(":", 1)[0] == name]:
            unload = getattr(self._runners.pop(key), "unload", None)
            if callable(unload):
                unload()

    def release_all(self) -> None:
        for key in list(self._runners):
            self.release(key.rsplit(":", 1)[0])


# --------------------------------------------------------------------------------------------
# Step 3: answer one shard


def _query(item: VQAItem, images_dir: Path) -> Query | Answer:
    """The item's query, or its failure when the image cannot be given to the model."""
    from medhall.infer.base import Answer, Query

    path = _image_path(item, images_dir)
    if path is None:
        return _embedded_query(item)
    if not path.is_file():
        return Answer.failure(item.item_id, f"missing_image: no such file: {path}")
    return Query(qa_id=item.item_id, question=prompt_for(item), image=path)


def _embedded_query(item: VQAItem) -> Query | Answer:
    """A query with an image decoded from its Parquet row."""
    import io

    from PIL import Image

    from medhall.evaluate.vqa_data import read_image_bytes
    from medhall.infer.base import Answer, Query

    try:
        with Image.open(io.BytesIO(read_image_bytes(item))) as im:
            image = im.convert("RGB")
    except Exception as e:  # noqa: BLE001 - one bad image fails its item only
        return Answer.failure(item.item_id, f"corrupt_image: {type(e).__name__}: {e}")
    return Query(qa_id=item.item_id, question=prompt_for(item), image=image)


def ask(
    runner: Runner, items: Sequence[VQAItem], images_dir: Path
) -> tuple[list[Query], list[Answer]]:
    """Queries for ``items`` and their answers; items whose image cannot be given fail without
    reaching the model."""
    from medhall.infer.base import Query

    prepared = [_query(it, images_dir) for it in items]
    to_ask = [p for p in prepared if isinstance(p, Query)]
    answers = iter(runner.answer(to_ask) if to_ask else [])
    queries = [
        p if isinstance(p, Query) else Query(qa_id=it.item_id, question=prompt_for(it))
        for p, it in zip(prepared, items, strict=True)
    ]
    return queries, [next(answers) if isinstance(p, Query) else p for p in prepared]


def is_final(answer: Answer) -> bool:
    """An answer that asking again would not change: a text, or a failure of the input."""
    return answer.ok or (answer.error or "").startswith(FINAL_ERRORS)


def _shard_items(cfg: VQAConfig, benchmark: str, item_ids: Sequence[str]) -> list[VQAItem]:
    by_id = {it.item_id: it for it in load_items(cfg.benchmark(benchmark)).items}
    missing = [i for i in item_ids if i not in by_id]
    if missing:
        raise KeyError(f"{benchmark}: no item(s) {missing[:5]} in {cfg.benchmark(benchmark).path}")
    return [by_id[i] for i in item_ids]


def answer_shard(
    store: ArtifactStore,
    cfg: VQAConfig,
    model: str,
    benchmark: str,
    item_ids: Sequence[str],
    *,
    run_id: str | None = None,
    runner: Runner | None = None,
) -> Path:
    """Answer one shard of ``benchmark`` with ``model``; the completion marker is written last.

    Returns the shard's predictions file. A shard already finished is not asked again.
    ``runner``: an already made runner of ``model`` (default: one made for this shard alone;
    pass one from a :class:`RunnerPool` to load a model once for many shards).
    """
    from medhall.infer.base import predictions_table

    spec, bench = cfg.model(model), cfg.benchmark(benchmark)
    items = _shard_items(cfg, bench.name, item_ids)
    keys = [item_key(it, bench.images_dir()) for it in items]
    wd, key = work_dir(store, spec, bench.name, cfg), shard_key(keys)
    out = wd / "shards" / f"{key}.parquet"
    if marker_path(wd, key).exists():
        return out
    queries, answers = ask(runner or make_runner(spec, cfg), items, bench.images_dir())
    table = predictions_table(spec.name, queries, answers, origin=ORIGINS[spec.kind], run_id=run_id)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    marker = {
        "keys": keys,
        "done": [k for k, a in zip(keys, answers, strict=True) if is_final(a)],
        "failed": [a.qa_id for a in answers if not a.ok],
        "model": spec.name,
        "run_id": run_id,
    }
    with atomic_path(marker_path(wd, key)) as tmp:
        tmp.write_text(json.dumps(marker, sort_keys=True))
    return out


# --------------------------------------------------------------------------------------------
# Step 4: assemble and score


def latest_predictions(wd: Path, keys: Iterable[str], model: str) -> pa.Table:
    """Each item's latest answer (newest marker first) among the finished shards that asked its
    current key, with ``model`` and ``pred_id`` set to the model's current name."""
    from medhall.schema import empty, from_rows

    wanted, rows = set(keys), {}
    for key, marker in finished(wd).items():
        asked = {_item_id_of(k) for k in wanted.intersection(marker["keys"])}
        if not asked:
            continue
        for r in pq.read_table(wd / "shards" / f"{key}.parquet").to_pylist():
            if r["qa_id"] in asked and r["qa_id"] not in rows:
                rows[r["qa_id"]] = {
                    **r,
                    "model": model,
                    "pred_id": content_id("pred", model, r["qa_id"]),
                }
    return (
        from_rows("predictions", sorted(rows.values(), key=lambda r: r["qa_id"]))
        if rows
        else empty("predictions")
    )


def score_rows(
    model: str, item_scores: Iterable[Mapping[str, Any]], closed_variant: str, run_id: str | None
) -> list[dict[str, Any]]:
    """Long ``scores`` rows of :func:`medhall.evaluate.vqa_metrics.score_items` output (items
    without an answer have none); ``params`` names the benchmark, split, closed-question rule
    and, for multiple choice, the option read and the rule that read it."""
    out = []
    for s in item_scores:
        if s["missing"]:
            continue
        params = {"benchmark": s["benchmark"], "split": s["split"]}
        if s["split"] == "closed":
            params["closed_variant"] = closed_variant
        if s["split"] == "choice":
            params.update(choice_rule=s["choice_rule"], choice_letter=s["choice_letter"])
        text = canonical_json(params)
        out.extend(
            {
                "qa_id": s["item_id"],
                "model": model,
                "metric": m,
                "value": s[m],
                "params": text,
                "run_id": run_id,
            }
            for m in SCORE_METRICS
            if m in s
        )
    return out


@dataclass(frozen=True)
class Scored:
    """One model's scores on one benchmark: long ``scores`` rows and the summary rows."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]


def score(
    model: str, items: Sequence[VQAItem], predictions: pa.Table, cfg: VQAConfig, run_id: str | None
) -> Scored:
    """Score ``predictions`` (failed ones count as missing) of ``model`` on ``items``."""
    from medhall.evaluate.vqa_metrics import score_items, summarise

    answers = {
        q: a
        for q, a, s in zip(
            *(predictions.column(c).to_pylist() for c in ("qa_id", "answer", "status")), strict=True
        )
        if s == "ok"
    }
    item_scores = score_items(items, answers, closed_variant=cfg.closed_variant)
    summary = [{"model": model, **r} for r in summarise(item_scores)]
    return Scored(score_rows(model, item_scores, cfg.closed_variant, run_id), summary)


def _collect(
    store: ArtifactStore, cfg: VQAConfig, loaded: Loaded, run_id: str
) -> Iterator[tuple[pa.Table, Scored]]:
    for spec in cfg.models:
        for bench in cfg.benchmarks:
            items = loaded.items[bench.name]
            keys = [item_key(it, bench.images_dir()) for it in items]
            preds = latest_predictions(work_dir(store, spec, bench.name, cfg), keys, spec.name)
            yield preds, score(spec.name, items, preds, cfg, run_id)


def assemble(
    store: ArtifactStore, cfg: VQAConfig, run_id: str | None = None, loaded: Loaded | None = None
) -> dict[str, Any]:
    """Write the ``predictions``, ``scores`` and ``quarantine`` artifacts of ``cfg.dataset``.

    Returns the artifacts, the long ``summary`` rows (``model``, ``benchmark``, ``split``,
    ``metric``, ``value``, ``n``), the rows each loader ``skipped`` and ``counts`` (predictions
    ``answered`` (ok or failed), ``failed``, ``quarantined`` loader rows).
    """
    from medhall.schema import from_rows

    loaded = loaded or load(cfg)
    run_id = run_id or loaded.run_id
    collected = list(_collect(store, cfg, loaded, run_id))
    config = {
        "vqa": cfg.model_dump(mode="json"),
        "model_keys": {m.name: model_key(m, cfg) for m in cfg.models},
    }
    inputs = list(loaded.fingerprints.values())
    preds = store.write(
        "predictions",
        [p for p, _ in collected],
        dataset=cfg.dataset,
        config=config,
        inputs=inputs,
        run_id=run_id,
    )
    scores = store.write(
        "scores",
        from_rows("scores", [r for _, s in collected for r in s.rows]),
        dataset=cfg.dataset,
        config=config,
        inputs=[preds.fingerprint],
        run_id=run_id,
    )
    quarantine = store.write(
        "quarantine",
        loaded.quarantine,
        dataset=cfg.dataset,
        config=config,
        inputs=inputs,
        run_id=run_id,
    )
    return {
        "predictions": preds,
        "scores": scores,
        "quarantine": quarantine,
        "summary": [r for _, s in collected for r in s.summary],
        "skipped": loaded.skipped,
        "counts": {
            "answered": sum(p.num_rows for p, _ in collected),
            "failed": sum(p.column("status").to_pylist().count("failed") for p, _ in collected),
            "quarantined": quarantine.rows,
        },
    }


# --------------------------------------------------------------------------------------------
# Step 5: report


def table3_results(summary: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Table 3 cells ``{model, benchmark, split, value, n}`` from the long summary rows."""
    from medhall.evaluate.vqa_metrics import headline

    by_model: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in summary:
        by_model[r["model"]].append(r)
    return [{"model": m, **h} for m, rows in by_model.items() for h in headline(rows)]


def report_dir(store: ArtifactStore, cfg: VQAConfig) -> Path:
    """``<home>/reports/<dataset>``."""
    return store.root / "reports" / cfg.dataset


def _summary_csv(summary: Sequence[Mapping[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(
        buf, ["model", "benchmark", "split", "metric", "value", "n"], lineterminator="\n"
    )
    w.writeheader()
    w.writerows({k: r.get(k) for k in w.fieldnames} for r in summary)
    return buf.getvalue()


def _markdown(cfg: VQAConfig, table_md: str, summary: Sequence[Mapping[str, Any]]) -> str:
    missing = sum(int(r["value"] or 0) for r in summary if r["metric"] == "missing")
    return (
        f"# Zero-shot medical VQA: {cfg.dataset}\n\n{table_md}\n"
        "Open: LLaVA-Med recall of the reference words; closed: LLaVA-Med yes/no accuracy "
        f"(`{cfg.closed_variant}` rule); choice: accuracy. Percent; `↳` marks a fine-tuned model "
        f"under its base. Unanswered or failed questions (left out of the means): {missing}.\n"
    )


def report(
    store: ArtifactStore, cfg: VQAConfig, summary: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Table 3 as Markdown, CSV and PNG, and the long summary as CSV, under
    :func:`report_dir`; returns their paths, the Markdown text and the table's rows."""
    import csv
    import io

    from medhall.evaluate.vqa_report import build_table3, table3_csv, table3_markdown, table3_png

    table = build_table3(table3_results(summary), cfg.base_of())
    markdown, csv_text = _markdown(cfg, table3_markdown(table), summary), table3_csv(table)
    out = report_dir(store, cfg)
    files = {
        "markdown": (out / "table3.md", markdown.encode()),
        "csv": (out / "table3.csv", csv_text.encode()),
        "png": (
            out / "table3.png",
            table3_png(table, title=f"Zero-shot medical VQA ({cfg.dataset})"),
        ),
        "summary_csv": (out / "summary.csv", _summary_csv(summary).encode()),
    }
    for path, data in files.values():
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return {
        **{name: str(path) for name, (path, _) in files.items()},
        "markdown_text": markdown,
        "rows": list(csv.DictReader(io.StringIO(csv_text))),
    }


# --------------------------------------------------------------------------------------------
# The whole run in one process


def run_vqa(
    store: ArtifactStore,
    cfg: VQAConfig,
    *,
    runner_factory: RunnerFactory | None = None,
    max_shards: int | None = None,
) -> dict[str, Any]:
    """Load, answer every unfinished shard (model by model), assemble, report.

    ``runner_factory(spec, cfg)`` replaces :func:`make_runner`; ``max_shards`` stops after that
    many shards, as a killed run would (nothing is assembled then).
    """
    loaded = load(cfg)
    the_plan = plan(store, cfg, loaded)
    pool = RunnerPool(runner_factory or make_runner)
    run = 0
    for spec in cfg.models:
        try:
            for unit in the_plan.units_of(spec.name):
                for shard in unit.todo:
                    if max_shards is not None and run >= max_shards:
                        return {
                            "plan": the_plan,
                            "run_id": loaded.run_id,
                            "shards_run": run,
                            "stopped": True,
                        }
                    answer_shard(
                        store,
                        cfg,
                        spec.name,
                        unit.benchmark,
                        shard.item_ids,
                        run_id=loaded.run_id,
                        runner=pool.get(spec, cfg),
                    )
                    run += 1
        finally:
            pool.release(spec.name)
    out = assemble(store, cfg, loaded.run_id, loaded)
    return {
        "plan": the_plan,
        "run_id": loaded.run_id,
        "shards_run": run,
        "stopped": False,
        **out,
        "report": report(store, cfg, out["summary"]),
    }


__all__: Sequence[str] = [
    "BenchmarkSpec",
    "Loaded",
    "ModelSpec",
    "RUNNER_FACTORIES",
    "RunnerPool",
    "Shard",
    "Unit",
    "VQAConfig",
    "VQAPlan",
    "answer_shard",
    "assemble",
    "api_parts",
    "api_runner",
    "ask",
    "finished",
    "item_key",
    "load",
    "load_config",
    "load_items",
    "make_runner",
    "marker_path",
    "model_identity",
    "model_key",
    "path_fingerprint",
    "plan",
    "report",
    "run_vqa",
    "score",
    "score_rows",
    "table3_results",
    "work_dir",
    "work_id",
]
