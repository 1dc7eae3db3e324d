"""Price table: US dollars per one million input and output tokens, per model.

Model names match exactly, else by the longest known prefix (``gpt-4o-2024-08-06`` is priced
as ``gpt-4o``), else the table's default (free: local servers and the embedded model).
Override with a dict or a YAML/JSON file::

    models:
      gpt-4o: {input: 2.50, output: 10.00}
      my-vllm-model: {input: 0.0, output: 0.0}
    default: {input: 1.0, output: 4.0}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Price:
    input_per_m: float
    output_per_m: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / 1e6


# List prices of OpenAI's API (standard tier, USD per 1M tokens), as published in 2025.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o4-mini": Price(1.10, 4.40),
}
FREE = Price(0.0, 0.0)


def _as_price(value: Price | Mapping[str, float] | tuple[float, float]) -> Price:
    if isinstance(value, Price):
        return value
    if isinstance(value, Mapping):
        return Price(float(value["input"]), float(value["output"]))
    return Price(float(value[0]), float(value[1]))


class PriceTable:
    """Looks up a model's price; ``prices`` override (and by default extend) the built-in list."""

    def __init__(self, prices: Mapping[str, Any] | None = None, *, default: Any = FREE,
                 include_defaults: bool = True) -> None:
        self.prices = dict(DEFAULT_PRICES) if include_defaults else {}
        self.prices.update({k: _as_price(v) for k, v in (prices or {}).items()})
        self.default = _as_price(default)

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> PriceTable:
        """Read ``{models: {name: {input, output}}, default: {...}}`` (or a flat mapping) from YAML/JSON."""
        text = Path(path).read_text(encoding="utf-8")
        if str(path).endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
        if "models" in data or "default" in data:
            return cls(data.get("models"), default=data.get("default", FREE), **kwargs)
        return cls(data, **kwargs)

    def price(self, model: str) -> Price:
        if model in self.prices:
            return self.prices[model]
        prefixes = [k for k in self.prices if model.startswith(k)]
        return self.prices[max(prefixes, key=len)] if prefixes else self.default

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        return self.price(model).cost(prompt_tokens, completion_tokens)

    def __repr__(self) -> str:
        return f"PriceTable({len(self.prices)} models, default={self.default})"
