"""The embedded sample corpus: real medical images that ship inside pip packages.

``corpus.json`` (beside this module) lists about thirty images taken from the test and
example data of installed packages (pydicom, pydicom-data, scikit-image, nibabel, nilearn),
each with a caption written after looking at the image, labels (modality, body part,
findings, view) and provenance (package, locator, frame or slice). Nothing is downloaded:
every image is read from the installed package, so the whole pipeline can run offline.

Entry keys: ``sample_id``, ``package`` (pip name), ``locator`` (pydicom test-file name,
``skimage.data`` function name, or a file path inside the nibabel / nilearn package),
``frame`` (multi-frame DICOM frame, null for the middle one), ``slice`` (for volumes:
``{"axis", "index", "volume"}``), ``modality``, ``body_part``, ``view``, ``findings``,
``caption``, ``requires`` (pip packages needed beyond the core dependencies) and
``license_note``.

- :func:`load_entries` reads the entries.
- :func:`render` turns one entry into image bytes: the original DICOM file when it is a
  single-frame DICOM that the installed decoders can read, otherwise a lossless, windowed
  8-bit PNG (a frame of a multi-frame DICOM, a scikit-image array, a slice of a volume).
- :func:`materialize` writes every image plus a ``captions.jsonl`` in the LLaVA-Med caption
  record layout, deterministically (re-running rewrites identical bytes).

Heavy imports (pydicom, scikit-image, nibabel) happen inside the functions that need them.
"""

from __future__ import annotations

import importlib.util
import io
import json
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from medhall.errors import MedhallError

__all__ = [
    "BODY_PARTS",
    "MODALITIES",
    "SampleUnavailable",
    "caption_record",
    "load_entries",
    "materialize",
    "render",
]

#: Modality labels an entry may carry (the project's modality vocabulary).
MODALITIES: frozenset[str] = frozenset(
    {
        "CT",
        "MR",
        "ultrasound",
        "radiograph",
        "nuclear_medicine",
        "PET",
        "fundus",
        "histology",
        "microscopy",
        "phantom",
        "other",
    }
)

#: Body-part labels an entry may carry.
BODY_PARTS: frozenset[str] = frozenset(
    {
        "head",
        "brain",
        "neck",
        "chest",
        "heart",
        "breast",
        "abdomen",
        "liver",
        "colon",
        "pelvis",
        "spine",
        "shoulder",
        "upper_limb",
        "lower_limb",
        "knee",
        "eye",
        "lymph_node",
        "whole_body",
        "cells",
        "unknown",
    }
)

DICOM_PACKAGES = frozenset({"pydicom", "pydicom-data"})
ARRAY_PACKAGES = {"scikit-image": "skimage"}
VOLUME_PACKAGES = {"nibabel": "nibabel", "nilearn": "nilearn"}

#: Fixed PNG encoder settings: Pillow writes no timestamp, so equal arrays give equal bytes.
PNG_PARAMS: dict[str, Any] = {"format": "PNG", "compress_level": 6, "optimize": False}

CAPTIONS_FILE = "captions.jsonl"
IMAGES_DIR = "images"


class SampleUnavailable(MedhallError, RuntimeError):
    """An entry cannot be rendered here: its source package or a pixel decoder is missing."""


# --------------------------------------------------------------------------- entries


def load_entries() -> list[dict[str, Any]]:
    """The corpus entries, in file order, read from the packaged ``corpus.json``."""
    text = resources.files(__package__).joinpath("corpus.json").read_text(encoding="utf-8")
    entries = json.loads(text)
    if not isinstance(entries, list):
        raise ValueError("corpus.json must hold a JSON list of entries")
    return entries


def image_filename(entry: dict[str, Any], fmt: str) -> str:
    """The file name an entry's image gets under ``images/``: ``<sample_id>.dcm|png``."""
    return f"{entry['sample_id']}.{'dcm' if fmt == 'DICOM' else 'png'}"


# --------------------------------------------------------------------------- rendering


def render(entry: dict[str, Any]) -> tuple[bytes, str]:
    """The entry's image as ``(bytes, format)``, format ``"DICOM"`` or ``"PNG"``.

    DICOM sources give the original file bytes when the file is single-frame and its pixel
    data decodes with the installed decoders; a multi-frame DICOM gives a windowed 8-bit PNG
    of ``entry["frame"]`` (the middle frame when null). Arrays (scikit-image) and volume
    slices (nibabel, nilearn) are encoded losslessly as 8-bit PNG, grayscale or RGB.

    Raises :class:`SampleUnavailable` when the source package or a needed decoder is not
    installed, and ``ValueError`` for an entry with an unknown package.
    """
    package = entry["package"]
    if package in DICOM_PACKAGES:
        return _render_dicom(entry)
    if package in ARRAY_PACKAGES:
        return encode_png(_skimage_array(entry)), "PNG"
    if package in VOLUME_PACKAGES:
        return encode_png(_volume_slice(entry)), "PNG"
    raise ValueError(f"{entry.get('sample_id')}: unknown package {package!r}")


def encode_png(array: np.ndarray) -> bytes:
    """Lossless, deterministic PNG bytes of a 2-D (grayscale) or H×W×3 (RGB) uint8 array."""
    from PIL import Image

    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {arr.dtype}")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"expected H×W or H×W×3, got shape {arr.shape}")
    image = Image.fromarray(arr)  # uint8: mode "L" for H×W, "RGB" for H×W×3
    buf = io.BytesIO()
    image.save(buf, **PNG_PARAMS)
    return buf.getvalue()


def window_to_uint8(
    values: np.ndarray,
    center: float | None = None,
    width: float | None = None,
    *,
    invert: bool = False,
) -> np.ndarray:
    """Map values to 0-255 through a linear window; the 1st-99th percentile when none is given."""
    data = np.asarray(values, dtype=np.float64)
    if center is not None and width is not None and width > 0:
        low, high = center - width / 2.0, center + width / 2.0
    else:
        low, high = (float(v) for v in np.percentile(data, [1.0, 99.0]))
    if high <= low:
        high = low + 1.0
    scaled = np.clip((data - low) / (high - low), 0.0, 1.0) * 255.0
    out = np.rint(scaled).astype(np.uint8)
    return 255 - out if invert else out


def to_uint8(array: np.ndarray) -> np.ndarray:
    """An array as uint8: unchanged when uint8, [0, 1] floats scaled, anything else windowed."""
    arr = np.asarray(array)
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0.0 and arr.max() <= 1.0:
        return np.rint(arr * 255.0).astype(np.uint8)
    return window_to_uint8(arr)


# ----- DICOM


def dicom_path(locator: str) -> Path:
    """The local path of a pydicom / pydicom-data test file (never downloads)."""
    try:
        from pydicom.data import get_testdata_file
    except ImportError as e:  # pragma: no cover - pydicom is a core dependency
        raise SampleUnavailable(f"pydicom is not installed: {e}") from e
    path = get_testdata_file(locator, download=False)
    if path is None:
        raise SampleUnavailable(
            f"DICOM test file {locator!r} not found locally (is pydicom-data installed?)"
        )
    return Path(str(path))


def _render_dicom(entry: dict[str, Any]) -> tuple[bytes, str]:
    import pydicom

    path = dicom_path(entry["locator"])
    with warnings.catch_warnings():  # test files carry known header oddities (e.g. bad UIDs)
        warnings.simplefilter("ignore", UserWarning)
        return _render_dicom_file(pydicom.dcmread(path), path, entry)


def _render_dicom_file(ds: Any, path: Path, entry: dict[str, Any]) -> tuple[bytes, str]:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames <= 1:
        _decode(ds, entry["sample_id"], index=None)  # proves the pixels decode here
        return path.read_bytes(), "DICOM"
    frame = entry.get("frame")
    index = frames // 2 if frame is None else int(frame)
    if not 0 <= index < frames:
        raise ValueError(f"{entry['sample_id']}: frame {index} outside 0..{frames - 1}")
    return encode_png(dicom_frame_uint8(ds, index, label=entry["sample_id"])), "PNG"


def _decode(ds: Any, label: str, index: int | None) -> np.ndarray:
    """Decoded pixels of frame ``index`` (all frames when None); a missing decoder raises
    :class:`SampleUnavailable`."""
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(ds, index=index)
    except (RuntimeError, NotImplementedError, ImportError) as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise SampleUnavailable(
            f"{label}: cannot decode {Path(str(ds.filename)).name} ({name}); "
            "install pylibjpeg and pylibjpeg-libjpeg for JPEG Lossless / JPEG-LS data: "
            f"{type(e).__name__}: {e}"
        ) from e


def dicom_frame_uint8(ds: Any, index: int | None = None, *, label: str = "") -> np.ndarray:
    """One frame of a DICOM dataset as a displayable uint8 array (grayscale or RGB).

    Grayscale frames get the modality LUT (rescale) and the stored window (top level, or
    the shared / per-frame functional groups of enhanced objects), else a 1st-99th
    percentile window; MONOCHROME1 is inverted. Palette colour goes through its LUT.
    """
    from pydicom.pixels import apply_color_lut

    arr = _decode(ds, label or str(ds.get("SOPInstanceUID", "?")), index)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return (rgb >> 8).astype(np.uint8) if bits > 8 else rgb.astype(np.uint8)
    if arr.ndim == 3:  # colour (pydicom converts YBR to RGB by default)
        if arr.dtype == np.uint8:
            return arr
        bits = int(ds.get("BitsStored", 8))
        return window_to_uint8(arr, (2**bits - 1) / 2.0, float(2**bits - 1))
    slope, intercept = _rescale(ds, index)
    values = arr.astype(np.float64) * slope + intercept
    center, width = _window(ds, index)
    return window_to_uint8(values, center, width, invert=photometric == "MONOCHROME1")


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued DICOM element, as float."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0])


def _functional_items(ds: Any, index: int | None) -> list[Any]:
    """Per-frame then shared functional-group items that apply to a frame (enhanced objects)."""
    items: list[Any] = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index is not None and index < len(per_frame):
        items.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        items.append(shared[0])
    return items


def _slope_intercept(item: Any) -> tuple[float, float]:
    return _first(item.get("RescaleSlope", 1) or 1), _first(item.get("RescaleIntercept", 0) or 0)


def _rescale(ds: Any, index: int | None) -> tuple[float, float]:
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return _slope_intercept(ds)
    for item in _functional_items(ds, index):
        seq = item.get("PixelValueTransformationSequence")
        if seq:
            return _slope_intercept(seq[0])
    return 1.0, 0.0


def _window(ds: Any, index: int | None) -> tuple[float | None, float | None]:
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return _first(ds.WindowCenter), _first(ds.WindowWidth)
    for item in _functional_items(ds, index):
        seq = item.get("FrameVOILUTSequence")
        if seq and seq[0].get("WindowCenter") is not None and seq[0].get("WindowWidth") is not None:
            return _first(seq[0].WindowCenter), _first(seq[0].WindowWidth)
    return None, None


# ----- scikit-image


def _skimage_array(entry: dict[str, Any]) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - scikit-image is a core dependency
        raise SampleUnavailable(f"scikit-image is not installed: {e}") from e
    loader = getattr(skimage.data, entry["locator"], None)
    if loader is None:
        raise ValueError(f"{entry['sample_id']}: skimage.data has no {entry['locator']!r}")
    try:
        array = loader()
    except (ModuleNotFoundError, OSError) as e:  # pooch-fetched data is not available offline
        where = f"skimage.data.{entry['locator']}()"
        raise SampleUnavailable(f"{entry['sample_id']}: {where}: {e}") from e
    return to_uint8(array)


# ----- NIfTI / PAR-REC volumes (nibabel, nilearn)


def package_dir(package: str) -> Path:
    """The installed directory of a package, found without importing it."""
    module = VOLUME_PACKAGES.get(package, ARRAY_PACKAGES.get(package, package))
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SampleUnavailable(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _volume_slice(entry: dict[str, Any]) -> np.ndarray:
    """A 2-D slice of a packaged volume, reoriented to RAS and shown in radiological layout.

    ``entry["slice"]`` is ``{"axis": 0|1|2, "index": int, "volume": int|null}`` in RAS voxel
    axes (0 sagittal, 1 coronal, 2 axial). The slice is rotated so superior (or anterior,
    for axial) is up and flipped so the patient's right (or anterior, for sagittal) is on
    the image left, then windowed to the 1st-99th percentile.
    """
    try:
        import nibabel as nib
        from nibabel.orientations import apply_orientation, io_orientation
    except ImportError as e:
        raise SampleUnavailable(f"nibabel is not installed: {e}") from e
    path = package_dir(entry["package"]) / entry["locator"]
    if not path.is_file():
        raise SampleUnavailable(f"{entry['sample_id']}: {path} not found")
    spec = entry.get("slice") or {}
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4:
        data = data[..., int(spec.get("volume") or 0)]
    data = apply_orientation(data, io_orientation(image.affine))  # to RAS voxel order
    axis = int(spec.get("axis", 2))
    index = spec.get("index")
    index = data.shape[axis] // 2 if index is None else int(index)
    plane = np.take(data, index, axis=axis)
    display = np.fliplr(np.rot90(plane))
    return window_to_uint8(display)


# --------------------------------------------------------------------------- materialize


def llava_domain(entry: dict[str, Any]) -> dict[str, bool]:
    """The LLaVA-Med ``domain`` flags for an entry."""
    modality = entry["modality"]
    return {
        "chest_xray": modality == "radiograph" and entry["body_part"] == "chest",
        "mri": modality == "MR",
        "histology": modality == "histology",
        "gross": False,
        "ct_scan": modality == "CT",
    }


def caption_record(entry: dict[str, Any], image_file: str) -> dict[str, Any]:
    """One ``captions.jsonl`` line: LLaVA-Med caption-record keys plus our labels."""
    return {
        "pair_id": entry["sample_id"],
        "pmid": None,
        "fig_id": entry["sample_id"],
        "fig_label": f"{entry['modality']} {entry['body_part']}",
        "fig_caption": entry["caption"],
        "in_text_mention": None,
        "domain": llava_domain(entry),
        "image": f"{IMAGES_DIR}/{image_file}",
        "modality": entry["modality"],
        "body_part": entry["body_part"],
        "findings": list(entry.get("findings") or []),
    }


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write bytes, leaving an identical existing file untouched (keeps re-runs cheap)."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def materialize(dest_dir: Path, *, skip_unavailable: bool = False) -> Path:
    """Write every sample image and ``captions.jsonl`` under ``dest_dir``; return the jsonl path.

    Images go to ``dest_dir/images/<sample_id>.dcm|png``. The output is deterministic, so a
    second run rewrites identical bytes. An entry whose package or decoder is missing raises
    :class:`SampleUnavailable`, or is left out when ``skip_unavailable`` is true.
    """
    dest = Path(dest_dir)
    images = dest / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for entry in load_entries():
        try:
            data, fmt = render(entry)
        except SampleUnavailable:
            if skip_unavailable:
                continue
            raise
        name = image_filename(entry, fmt)
        _write_if_changed(images / name, data)
        lines.append(json.dumps(caption_record(entry, name), ensure_ascii=False))
    captions = dest / CAPTIONS_FILE
    _write_if_changed(captions, ("\n".join(lines) + "\n").encode("utf-8"))
    return captions
