"""Corpus statistics for POPE-style negative sampling, computed in a pass of their own.

"popular" sampling asks about the absent entities most frequent in the corpus; "adversarial"
sampling asks about the absent entities that most often co-occur, in other images, with the
entities this image does show. Both need corpus-wide counts, so they are computed first
(:func:`corpus_statistics`, shard by shard if need be, then :meth:`CorpusStats.merge`) and
handed to every shard's generator: a shard's output then does not depend on which other images
are in it.

An image counts an entity when its caption mentions it without negation.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations

from medhall.generate.lexicon import Lexicon, default_lexicon


@dataclass
class CorpusStats:
    """Image frequency of each entity and co-occurrence counts of entity pairs."""

    n_images: int = 0
    frequency: Counter[str] = field(default_factory=Counter)
    cooccurrence: defaultdict[str, Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )

    def add(self, entities: Iterable[str]) -> None:
        """Count one image whose caption mentions ``entities``."""
        present = sorted(set(entities))
        self.n_images += 1
        self.frequency.update(present)
        for a, b in combinations(present, 2):
            self.cooccurrence[a][b] += 1
            self.cooccurrence[b][a] += 1

    def merge(self, other: CorpusStats) -> CorpusStats:
        """The statistics of both corpora together (a new object)."""
        out = CorpusStats(self.n_images + other.n_images, self.frequency + other.frequency)
        for source in (self, other):
            for a, counts in source.cooccurrence.items():
                out.cooccurrence[a].update(counts)
        return out

    def popular(self, candidates: Iterable[str], k: int) -> list[str]:
        """The ``k`` most frequent of ``candidates`` seen at least once (ties by id)."""
        ranked = sorted(
            (c for c in candidates if self.frequency[c]), key=lambda c: (-self.frequency[c], c)
        )
        return ranked[:k]

    def adversarial(self, present: Iterable[str], candidates: Iterable[str], k: int) -> list[str]:
        """The ``k`` of ``candidates`` that co-occur most often with the ``present`` entities."""
        score: Counter[str] = Counter()
        allowed = set(candidates)
        for p in present:
            for c, n in self.cooccurrence.get(p, {}).items():
                if c in allowed:
                    score[c] += n
        return [c for c, _ in sorted(score.items(), key=lambda x: (-x[1], x[0]))[:k]]

    def to_json(self) -> str:
        return json.dumps(
            {
                "n_images": self.n_images,
                "frequency": dict(self.frequency),
                "cooccurrence": {a: dict(c) for a, c in self.cooccurrence.items()},
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> CorpusStats:
        data = json.loads(text)
        out = cls(data["n_images"], Counter(data["frequency"]))
        for a, counts in data["cooccurrence"].items():
            out.cooccurrence[a].update(counts)
        return out


def corpus_statistics(
    captions: Iterable[str | None], lexicon: Lexicon | None = None
) -> CorpusStats:
    """Entity frequency and co-occurrence over ``captions`` (one caption per image)."""
    lex = lexicon or default_lexicon()
    stats = CorpusStats()
    for caption in captions:
        stats.add(m.entity for m in lex.analyse(caption).mentions if not m.negated)
    return stats
