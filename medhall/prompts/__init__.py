"""Versioned prompt templates (text files). A version folder is never edited in place: a change
is a new folder (v2, ...). :func:`load` returns the texts and their hash, which goes into every
row the prompts produce and into the LLM cache key."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from medhall.ids import canonical_json, sha256_hex


@dataclass(frozen=True)
class Templates:
    name: str
    version: str
    texts: dict[str, str]

    @property
    def hash(self) -> str:
        """16 hex of the SHA-256 over the template files (names and texts)."""
        return sha256_hex(canonical_json(sorted(self.texts.items())))[:16]

    def render(self, part: str, **values: object) -> str:
        return self.texts[part].format(**values).strip()


def load(name: str, version: str = "v1") -> Templates:
    """The ``.txt`` templates in ``medhall/prompts/<name>/<version>/``."""
    folder = files("medhall.prompts").joinpath(name, version)
    texts = {p.name.removesuffix(".txt"): p.read_text(encoding="utf-8") for p in folder.iterdir() if p.name.endswith(".txt")}
    if not texts:
        raise FileNotFoundError(f"no templates in medhall/prompts/{name}/{version}")
    return Templates(name, version, texts)
