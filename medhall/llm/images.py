"""Images for multimodal messages: any source -> resized JPEG/PNG base64 data URL.

Accepts bytes, a path or a PIL image; DICOM (detected by its ``DICM`` preamble) is decoded
with pydicom when it is installed. Each image is encoded once per process: results are
memoised by the SHA-256 of the source bytes and the encoding parameters, and that hash is what
stands for the image in cache keys (never the base64 text).
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MEMO: OrderedDict[tuple[str, str], EncodedImage] = OrderedDict()
MEMO_SIZE = 256


@dataclass(frozen=True, slots=True)
class EncodedImage:
    sha256: str
    encoding: str
    data_url: str
    width: int
    height: int


def _source_bytes(source: bytes | str | Path | Any) -> bytes:
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    if isinstance(source, str | Path):
        return Path(source).read_bytes()
    if hasattr(source, "tobytes") and hasattr(source, "mode"):  # a PIL image
        return f"{source.mode}:{source.size}".encode() + source.tobytes()
    raise TypeError(f"cannot read an image from {type(source).__name__}")


def _is_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def _dicom_to_pil(data: bytes) -> Any:
    """The DICOM's pixels (middle frame of a volume) scaled to 8 bits."""
    import numpy as np
    import pydicom
    from PIL import Image

    pixels = pydicom.dcmread(io.BytesIO(data)).pixel_array.astype(np.float64)
    if pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
        pixels = pixels[pixels.shape[0] // 2]
    lo, hi = float(pixels.min()), float(pixels.max())
    scaled = (pixels - lo) / (hi - lo or 1.0) * 255.0
    return Image.fromarray(scaled.astype(np.uint8))


def _open(source: bytes | str | Path | Any, data: bytes) -> Any:
    from PIL import Image

    if hasattr(source, "mode") and hasattr(source, "size"):
        return source
    if _is_dicom(data):
        return _dicom_to_pil(data)
    return Image.open(io.BytesIO(data))


def encode_image(source: bytes | str | Path | Any, *, max_side: int = 1024, fmt: str = "JPEG",
                 quality: int = 90) -> EncodedImage:
    """Resize so the longer side is at most ``max_side`` and encode as a base64 data URL."""
    fmt = fmt.upper()
    if fmt not in ("JPEG", "PNG"):
        raise ValueError(f"image format must be JPEG or PNG, not {fmt}")
    data = _source_bytes(source)
    digest = hashlib.sha256(data).hexdigest()
    encoding = f"{fmt}:{max_side}:q{quality}" if fmt == "JPEG" else f"{fmt}:{max_side}"
    memo_key = (digest, encoding)
    if memo_key in _MEMO:
        _MEMO.move_to_end(memo_key)
        return _MEMO[memo_key]
    image = _open(source, data)
    image.thumbnail((max_side, max_side))
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    url = f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
    encoded = EncodedImage(digest, encoding, url, image.width, image.height)
    _MEMO[memo_key] = encoded
    if len(_MEMO) > MEMO_SIZE:
        _MEMO.popitem(last=False)
    return encoded
