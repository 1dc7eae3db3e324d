"""Instruction generation: the deterministic offline generator (``offline-v1``).

See docs/offline_generator.md. The LLM-based generator will live beside it.
"""

from medhall.generate.lexicon import Lexicon, Mention, default_lexicon, extract_entities
from medhall.generate.offline import OfflineConfig, OfflineGenerator
from medhall.generate.stats import CorpusStats, corpus_statistics
from medhall.generate.tables import GENERATOR, template_hash

__all__ = [
    "GENERATOR",
    "CorpusStats",
    "Lexicon",
    "Mention",
    "OfflineConfig",
    "OfflineGenerator",
    "corpus_statistics",
    "default_lexicon",
    "extract_entities",
    "template_hash",
]
