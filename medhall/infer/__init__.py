"""Answers from the model under test: the runner protocol and local transformers VLMs.

- :mod:`medhall.infer.base`: :class:`Query`, :class:`Answer`, the :class:`Runner` protocol and
  :func:`predictions_table` (rows of the ``predictions`` table).
- :mod:`medhall.infer.local_vlm`: :class:`LocalVLM`, batched greedy answers from a local
  image-text-to-text checkpoint (LLaVA, Qwen2-VL, Qwen2.5-VL, InternVL), optional LoRA adapter.
- :mod:`medhall.infer.processors`: processor loading, with an image-only variant for
  machines without torchvision.
- :mod:`medhall.infer.tiny`: tiny random-weight checkpoints of each family, built offline.

Nothing here imports torch or transformers until a model is loaded or built.
"""

from medhall.infer.base import Answer, Query, Runner, predictions_table
from medhall.infer.local_vlm import LocalVLM

__all__ = ["Answer", "LocalVLM", "Query", "Runner", "predictions_table"]
