"""Image checks and decoding: existence, full decode, size, content hash; DICOM to PNG.

:func:`check_image` reads a file once and hashes and decodes the same bytes. Pillow images
are decoded (``load()``, not only ``verify()``), so a truncated file is caught; JPEG uses
draft mode by default (every byte of the compressed stream decoded, the inverse DCT at 1/8
scale; ``full=True`` for a full-size decode). DICOM
(the ``DICM`` marker at byte 128, or a ``.dcm`` name) is decoded with pydicom's
``pixel_array``. Problems raise :class:`ImageProblem` with a reason code the ingest
quarantine uses: ``missing_image`` (not on disk) or ``corrupt_image`` (on disk, not decodable).

Limits (a hostile corpus must not hang a run or exhaust memory; docs/ingest.md, "Limits"):

- only regular files are read (``special_file`` for a FIFO, a device, a socket): ``stat``
  before opening, then ``fstat`` on the open descriptor (opened with ``O_NONBLOCK``, so a FIFO
  swapped in between cannot block), so the file read is the file checked;
- at most ``image_max_bytes`` are read (``file_too_large``, a bounded read); a deflated DICOM
  may inflate to no more than that either;
- the pixel count a header declares is checked before any pixel is decoded
  (``too_many_pixels``): width x height for Pillow formats (``Image.open`` is lazy), Rows x
  Columns x NumberOfFrames x SamplesPerPixel for DICOM (read with ``stop_before_pixels``; a
  deflated DICOM's header is inflated alone, at most :data:`DICOM_HEADER_INFLATE` bytes).

The limits default to the settings ``image_max_bytes`` / ``image_max_pixels``
(``MEDHALL_IMAGE_MAX_BYTES`` / ``MEDHALL_IMAGE_MAX_PIXELS``); every function takes them as
keyword arguments too.

:func:`dicom_to_png` renders a DICOM as an 8-bit greyscale (or RGB) PNG: the modality LUT
(RescaleSlope / RescaleIntercept) first, then the window from WindowCenter / WindowWidth when
present (DICOM's linear VOI function), else the 1st-99th percentile of the pixel values;
MONOCHROME1 is inverted; a multi-frame image gives its middle frame unless ``frame`` says.
The PNG bytes are deterministic (no timestamps, fixed compression).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

DICOM_MAGIC = b"DICM"
PNG_COMPRESS_LEVEL = 6
DICOM_HEADER_INFLATE = 8 * 1024 * 1024  # bytes of a deflated DICOM inflated to read its header
DEFLATED_TS = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian

# reason codes (quarantine ``reason``) besides missing_image / corrupt_image
SPECIAL_FILE = "special_file"
FILE_TOO_LARGE = "file_too_large"
TOO_MANY_PIXELS = "too_many_pixels"
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


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


def limits(max_bytes: int | None = None, max_pixels: int | None = None) -> tuple[int, int]:
    """``(max_bytes, max_pixels)``: the arguments, else the settings ``image_max_bytes`` /
    ``image_max_pixels``."""
    if max_bytes is None or max_pixels is None:
        from medhall.config import get_settings

        s = get_settings()
        max_bytes = s.image_max_bytes if max_bytes is None else max_bytes
        max_pixels = s.image_max_pixels if max_pixels is None else max_pixels
    return int(max_bytes), int(max_pixels)


_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_problem(st: os.stat_result, path: str | Path, max_bytes: int) -> ImageProblem | None:
    """What is wrong with a file of this ``stat`` as an image to read, or None for a regular
    file of at most ``max_bytes`` bytes. A directory is ``missing_image`` (as before)."""
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return ImageProblem("missing_image", f"is a directory, not an image: {path}")
    if not stat.S_ISREG(mode):
        kind = next((words for test, words in _KINDS if test(mode)), "not a regular file")
        return ImageProblem(SPECIAL_FILE, f"{path} is {kind}, not a regular file: not read")
    if st.st_size > max_bytes:
        return ImageProblem(
            FILE_TOO_LARGE,
            f"{path} has {st.st_size:,} bytes, over the limit of {max_bytes:,} (image_max_bytes)",
        )
    return None


def _os_problem(path: str | Path, e: OSError) -> ImageProblem:
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return ImageProblem("missing_image", f"no such file: {path}")
    if isinstance(e, IsADirectoryError):
        return ImageProblem("missing_image", f"is a directory, not an image: {path}")
    return ImageProblem("corrupt_image", f"cannot read {path}: {e}")


def read_bytes(path: str | Path, *, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes`` of them.

    :class:`ImageProblem`: ``missing_image`` when it is not there (or is a directory),
    ``special_file`` for a FIFO / device / socket (never opened when ``stat`` says so; opened
    non-blocking and checked again with ``fstat`` otherwise), ``file_too_large`` over the limit
    (the read itself is bounded, so a file that grows meanwhile is caught too).
    """
    limit, _ = limits(max_bytes, 1)
    try:
        problem = file_problem(os.stat(path), path, limit)
        if problem is not None:
            raise problem
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        raise _os_problem(path, e) from None
    try:
        problem = file_problem(os.fstat(fd), path, limit)  # the file opened is the file checked
        if problem is not None:
            raise problem
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(limit + 1 - total, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise _os_problem(path, e) from None
    finally:
        os.close(fd)
    if total > limit:
        raise ImageProblem(
            FILE_TOO_LARGE,
            f"{path} has more than {limit:,} bytes (image_max_bytes): not read whole",
        )
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_image(
    path: str | Path,
    *,
    full: bool = False,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
) -> ImageInfo:
    """Hash and decode the image at ``path`` (one read); raise :class:`ImageProblem`.

    Every format is decoded with ``load()``. For JPEG the decoder runs in draft mode (IDCT at
    1/8 scale) unless ``full``: the whole entropy-coded stream is still decoded, so a
    truncated or broken file fails the same way, about 3-4x faster on photographs.
    ``max_bytes`` / ``max_pixels``: the limits (default: the settings; see the module doc).
    """
    max_bytes, max_pixels = limits(max_bytes, max_pixels)
    data = read_bytes(path, max_bytes=max_bytes)
    return check_image_bytes(data, name=path, full=full, max_pixels=max_pixels, max_bytes=max_bytes)


def check_image_bytes(
    data: bytes,
    name: str | Path = "",
    *,
    full: bool = False,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
) -> ImageInfo:
    """:func:`check_image` for bytes already read (``name`` helps spot DICOM and for messages)."""
    max_bytes, max_pixels = limits(max_bytes, max_pixels)
    if not data:
        raise ImageProblem("corrupt_image", f"empty file: {name}")
    sha = hashlib.sha256(data).hexdigest()
    if is_dicom(data, name):
        return _check_dicom(data, sha, name, max_pixels=max_pixels, max_bytes=max_bytes)
    try:
        with open_pil(data, name, max_pixels=max_pixels) as im:
            fmt, (width, height) = im.format or "unknown", im.size
            if fmt == "JPEG" and not full:
                im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
            im.load()
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem(
            "corrupt_image", f"{Path(str(name)).name} is not an image format Pillow knows"
        ) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is unusable
        raise ImageProblem(
            "corrupt_image", f"cannot decode {Path(str(name)).name}: {type(e).__name__}: {e}"
        ) from None
    return ImageInfo(sha, fmt, int(width), int(height))


def _too_many(name: str | Path, what: str, pixels: int, max_pixels: int) -> ImageProblem:
    return ImageProblem(
        TOO_MANY_PIXELS,
        f"{Path(str(name)).name} declares {what} = {pixels:,} pixels, over the limit of "
        f"{max_pixels:,} (image_max_pixels): not decoded",
    )


def open_pil(data: bytes, name: str | Path = "", *, max_pixels: int | None = None) -> Image.Image:
    """``Image.open`` of the bytes (lazy: only the header is read), refused with
    ``too_many_pixels`` when width x height is over ``max_pixels``. Pillow's own
    decompression-bomb error (far above any sane limit) is ``too_many_pixels`` too."""
    _, max_pixels = limits(1, max_pixels)
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageProblem(
            TOO_MANY_PIXELS,
            f"{Path(str(name)).name}: over the limit of {max_pixels:,} pixels (image_max_pixels) "
            f"and Pillow's own: {e} Not decoded",
        ) from None
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise _too_many(name, f"{width} x {height}", width * height, max_pixels)
    return im


def _int(value: Any, default: int) -> int:
    """An integer header value (IS / US; a multi-valued one gives its first), else ``default``."""
    if not isinstance(value, (str, bytes, int, float)) and hasattr(value, "__len__"):
        value = value[0] if len(value) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return int(value)


def dicom_pixels(ds: Any) -> tuple[int, str]:
    """Rows x Columns x NumberOfFrames x SamplesPerPixel of a DICOM header, and the words."""
    rows, cols = _int(ds.get("Rows"), 0), _int(ds.get("Columns"), 0)
    frames = max(_int(ds.get("NumberOfFrames"), 1), 1)
    samples = max(_int(ds.get("SamplesPerPixel"), 1), 1)
    return (
        rows * cols * frames * samples,
        f"{rows} x {cols} x {frames} frame(s) x {samples} sample(s)",
    )


def _file_meta(data: bytes) -> tuple[Any, bytes | None, int]:
    """The file meta group, the preamble and where the data set starts (pydicom's own reader
    of the meta group, so it agrees with ``dcmread`` on the transfer syntax)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_preamble

    try:
        from pydicom.filereader import _read_file_meta_info as read_meta
    except ImportError:  # pragma: no cover - a later pydicom without the private helper
        from pydicom.dataset import FileMetaDataset
        from pydicom.filereader import read_dataset

        def read_meta(fp: Any) -> Any:
            return FileMetaDataset(
                read_dataset(fp, False, True, stop_when=lambda t, v, n: t >> 16 != 2)
            )

    fp = DicomBytesIO(data)
    preamble = read_preamble(fp, True)
    meta = read_meta(fp)
    return meta, preamble, fp.tell()


def _at_pixel_data(tag: Any, vr: Any, length: int) -> bool:
    return tag in (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _read_dicom(
    data: bytes | str | Path,
    name: str | Path = "",
    *,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
) -> Any:
    """The DICOM data set (with its pixel data, not yet decoded), after the header passed the
    pixel limit. A path is read with :func:`read_bytes` (regular files, size limit). A deflated
    data set is inflated by us, bounded: its header first (at most
    :data:`DICOM_HEADER_INFLATE` bytes), the rest only when the header passed, to at most
    ``max_bytes`` (pydicom would inflate all of it, whatever its size, before anything else)."""
    import pydicom
    from pydicom.dataset import FileDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    max_bytes, max_pixels = limits(max_bytes, max_pixels)
    if not isinstance(data, bytes):
        name = name or data
        data = read_bytes(data, max_bytes=max_bytes)
    meta, preamble, start = _file_meta(data)
    deflated = str(meta.get("TransferSyntaxUID", "")).strip("\0 ") == DEFLATED_TS
    if not deflated:
        header = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        pixels, what = dicom_pixels(header)
        if pixels > max_pixels:
            raise _too_many(name, what, pixels, max_pixels)
        return pydicom.dcmread(io.BytesIO(data), force=True)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    body = inflater.decompress(memoryview(data)[start:], min(DICOM_HEADER_INFLATE, max_bytes + 1))
    header = read_dataset(DicomBytesIO(body), False, True, stop_when=_at_pixel_data)
    pixels, what = dicom_pixels(header)
    if pixels > max_pixels:
        raise _too_many(name, what, pixels, max_pixels)
    if inflater.unconsumed_tail and len(body) <= max_bytes:
        body += inflater.decompress(inflater.unconsumed_tail, max_bytes + 1 - len(body))
    if len(body) > max_bytes:
        raise ImageProblem(
            FILE_TOO_LARGE,
            f"{Path(str(name)).name}: the deflated data set inflates to more than "
            f"{max_bytes:,} bytes (image_max_bytes): not read",
        )
    dataset = read_dataset(DicomBytesIO(body), False, True)
    pixels, what = dicom_pixels(dataset)  # again: a header longer than the first inflate
    if pixels > max_pixels:
        raise _too_many(name, what, pixels, max_pixels)
    ds = FileDataset(str(name), dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def _check_dicom(
    data: bytes, sha: str, name: str | Path, *, max_pixels: int, max_bytes: int
) -> ImageInfo:
    try:
        ds = _read_dicom(data, name, max_pixels=max_pixels, max_bytes=max_bytes)
        arr = ds.pixel_array
    except ImageProblem:
        raise
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


def dicom_image(
    source: bytes | str | Path, frame: int | None = None, *, max_pixels: int | None = None
) -> Image.Image:
    """A DICOM rendered as an 8-bit PIL image (``L`` or ``RGB``), windowed (see module doc).
    The header is checked against the pixel limit first (:class:`ImageProblem`)."""
    ds = _read_dicom(source, max_pixels=max_pixels)
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
    """The image at ``path`` as an RGB PIL image (DICOM windowed), for models and later stages.
    The limits of :func:`check_image` apply (the settings)."""
    data = read_bytes(path)
    try:
        if is_dicom(data, path):
            im = dicom_image(data)
        else:
            with open_pil(data, path) as opened:
                opened.load()
                im = _to_8bit(opened)
                im = im.copy() if im is opened else im
    except ImageProblem:
        raise
    except Exception as e:  # noqa: BLE001
        raise ImageProblem(
            "corrupt_image", f"cannot decode {Path(path).name}: {type(e).__name__}: {e}"
        ) from None
    return im.convert("RGB")


__all__ = [
    "FILE_TOO_LARGE",
    "SPECIAL_FILE",
    "TOO_MANY_PIXELS",
    "ImageInfo",
    "ImageProblem",
    "check_image",
    "check_image_bytes",
    "dicom_image",
    "dicom_pixels",
    "dicom_to_png",
    "file_problem",
    "is_dicom",
    "limits",
    "load_rgb",
    "open_pil",
    "png_bytes",
    "read_bytes",
]
