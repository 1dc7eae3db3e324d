"""What every chart shares: matplotlib without a display, and one way to write a PNG
(fixed dpi, no software stamp, so the same data gives the same bytes)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Title, lay out, write ``fig`` as PNG at ``path`` (folders made) and close it."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    pyplot().close(fig)
    return out


__all__ = ["pyplot", "save"]
