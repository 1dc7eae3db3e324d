"""Image checks and decoding: existence, full decode, size, content hash; DICOM to PNG.

:func:`check_image` reads a file once and hashes and decodes the same bytes. Pillow images
are decoded (``load()``, not only ``verify()``), so a truncated file is caught; JPEG uses
draft mode by default (every byte of the compressed stream decoded, the inverse DCT at 1/8
scale; ``full=True`` for a full-size decode). DICOM
(the ``DICM`` marker at byte 128, or a ``.dcm`` name) is decoded with pydicom's
``pixel_array``. Problems raise :class:`ImageProblem` with a reason code the ingest
quarantine uses: ``missing_image`` (not on disk) or ``corrupt_image`` (on disk, not decodable).

:func:`dicom_to_png` renders a DICOM as an 8-bit greyscale (or RGB) PNG: the modality LUT
(RescaleSlope / RescaleIntercept) first, then the window from WindowCenter / WindowWidth when
present (DICOM's linear VOI function), else the 1st-99th percentile of the pixel values;
MONOCHROME1 is inverted; a multi-frame image gives its middle frame unless ``frame`` says.
The PNG bytes are deterministic (no timestamps, fixed compression).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

DICOM_MAGIC = b"DICM"
PNG_COMPRESS_LEVEL = 6


class ImageProblem(Exception):
    """An image that cannot be used: ``reason`` is ``missing_image`` or ``corrupt_image``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What a successful check learnt about an image file."""

    sha256: str
    format: str  # PNG, JPEG, TIFF, ..., DICOM
    width: int
    height: int
    header_modality: str | None = None  # DICOM (0008,0060) Modality, as written
    header_body_part: str | None = None  # DICOM (0018,0015) BodyPartExamined, as written


def is_dicom(data: bytes, name: str | Path = "") -> bool:
    """True for the DICOM preamble marker, or a ``.dcm`` / ``.dicom`` file name."""
    return data[128:132] == DICOM_MAGIC or str(name).lower().endswith((".dcm", ".dicom"))


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes; :class:`ImageProblem` ``missing_image`` when it is not there."""
    try:
        return Path(path).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise ImageProblem("missing_image", f"no such file: {path}") from None
    except IsADirectoryError:
        raise ImageProblem("missing_image", f"is a directory, not an image: {path}") from None
    except OSError as e:
        raise ImageProblem("corrupt_image", f"cannot read {path}: {e}") from None


def check_image(path: str | Path, *, full: bool = False) -> ImageInfo:
    """Hash and decode the image at ``path`` (one read); raise :class:`ImageProblem`.

    Every format is decoded with ``load()``. For JPEG the decoder runs in draft mode (IDCT at
    1/8 scale) unless ``full``: the whole entropy-coded stream is still decoded, so a
    truncated or broken file fails the same way, about 3-4x faster on photographs.
    """
    data = read_bytes(path)
    return check_image_bytes(data, name=path, full=full)


def check_image_bytes(data: bytes, name: str | Path = "", *, full: bool = False) -> ImageInfo:
    """:func:`check_image` for bytes already read (``name`` helps spot DICOM and for messages)."""
    if not data:
        raise ImageProblem("corrupt_image", f"empty file: {name}")
    sha = hashlib.sha256(data).hexdigest()
    if is_dicom(data, name):
        return _check_dicom(data, sha, name)
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format or "unknown", im.size
            if fmt == "JPEG" and not full:
                im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
            im.load()
    except UnidentifiedImageError:
        raise ImageProblem(
            "corrupt_image", f"{Path(str(name)).name} is not an image format Pillow knows"
        ) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is unusable
        raise ImageProblem(
            "corrupt_image", f"cannot decode {Path(str(name)).name}: {type(e).__name__}: {e}"
        ) from None
    return ImageInfo(sha, fmt, int(width), int(height))


def _read_dicom(data: bytes | str | Path) -> Any:
    import pydicom

    src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    return pydicom.dcmread(src, force=True)


def _check_dicom(data: bytes, sha: str, name: str | Path) -> ImageInfo:
    try:
        ds = _read_dicom(data)
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001
        raise ImageProblem(
            "corrupt_image", f"cannot decode DICOM {Path(str(name)).name}: {type(e).__name__}: {e}"
        ) from None
    rows = int(ds.get("Rows", arr.shape[-2] if arr.ndim >= 2 else 0))
    cols = int(ds.get("Columns", arr.shape[-1] if arr.ndim >= 2 else 0))
    return ImageInfo(
        sha, "DICOM", cols, rows,
        header_modality=_str_or_none(ds.get("Modality")),
        header_body_part=_str_or_none(ds.get("BodyPartExamined")),
    )  # fmt: skip


def _str_or_none(value: Any) -> str | None:
    s = str(value).strip() if value is not None else ""
    return s or None


def _first_number(value: Any) -> float | None:
    """WindowCenter / WindowWidth may hold several values: the first one."""
    if value is None:
        return None
    try:
        if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
            value = value[0] if len(value) else None
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _select_frame(ds: Any, arr: np.ndarray, frame: int | None) -> np.ndarray:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames <= 1:
        return arr
    index = frames // 2 if frame is None else frame
    if not 0 <= index < frames:
        raise ValueError(f"frame {index} out of range (0..{frames - 1})")
    return arr[index]


def _window(values: np.ndarray, ds: Any) -> np.ndarray:
    """Map modality values to 0..255 (DICOM linear window, else 1st-99th percentile)."""
    center, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    if center is not None and width is not None and width >= 1:
        scaled = ((values - (center - 0.5)) / max(width - 1, 1) + 0.5) * 255.0
    else:
        lo, hi = np.percentile(values, [1, 99])
        if hi <= lo:
            lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def dicom_image(source: bytes | str | Path, frame: int | None = None) -> Image.Image:
    """A DICOM rendered as an 8-bit PIL image (``L`` or ``RGB``), windowed (see module doc)."""
    ds = _read_dicom(source)
    arr = _select_frame(ds, ds.pixel_array, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        rgb = arr if arr.dtype == np.uint8 else _window(arr.astype(np.float64), {})
        return Image.fromarray(np.ascontiguousarray(rgb[..., :3]), "RGB")
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    out = _window(values, ds)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return Image.fromarray(np.ascontiguousarray(out), "L")


def dicom_to_png(source: bytes | str | Path, frame: int | None = None) -> bytes:
    """The DICOM (bytes or path) as deterministic 8-bit PNG bytes."""
    return png_bytes(dicom_image(source, frame))


def png_bytes(im: Image.Image) -> bytes:
    """An image as PNG bytes with no metadata chunks and fixed compression."""
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float greyscale scaled to 8 bits (1st-99th percentile) instead of clipped."""
    if im.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return im
    return Image.fromarray(_window(np.asarray(im, dtype=np.float64), {}), "L")


def load_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as an RGB PIL image (DICOM windowed), for models and later stages."""
    data = read_bytes(path)
    try:
        if is_dicom(data, path):
            im = dicom_image(data)
        else:
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                im = _to_8bit(opened)
                im = im.copy() if im is opened else im
    except Exception as e:  # noqa: BLE001
        raise ImageProblem(
            "corrupt_image", f"cannot decode {Path(path).name}: {type(e).__name__}: {e}"
        ) from None
    return im.convert("RGB")


__all__ = [
    "ImageInfo",
    "ImageProblem",
    "check_image",
    "check_image_bytes",
    "dicom_image",
    "dicom_to_png",
    "is_dicom",
    "load_rgb",
    "png_bytes",
]
