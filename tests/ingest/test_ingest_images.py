"""medhall.images: existence, full decode, size, hash; DICOM windowing to PNG; load_rgb."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medhall.images import ImageProblem, check_image, dicom_image, dicom_to_png, is_dicom, load_rgb


def test_png_and_jpeg(make):
    for name, fmt in (("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.tif", "TIFF")):
        p = make.image(name, seed=1, size=(40, 30))
        info = check_image(p)
        assert (info.format, info.width, info.height) == (fmt, 40, 30)
        assert info.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
        assert info.header_modality is None


def test_dicom_by_preamble_and_by_extension(make):
    p = make.dicom("scan.dcm")
    info = check_image(p)
    assert (info.format, info.width, info.height, info.header_modality) == ("DICOM", 128, 128, "CT")
    no_ext = make.copy(p, "scan_without_extension")
    assert is_dicom(no_ext.read_bytes()) and check_image(no_ext).sha256 == info.sha256
    mr = check_image(make.dicom("head.dcm", "emri_small.dcm"))
    assert (mr.header_modality, mr.header_body_part) == ("MR", "HEAD")


@pytest.mark.parametrize(
    "writer, reason, words",
    [
        (lambda m: m.truncated_png("t.png"), "corrupt_image", "truncated"),
        (
            lambda m: m.text("fake.jpg", "plain text, not a JPEG"),
            "corrupt_image",
            "not an image format",
        ),
        (lambda m: m.text("empty.png", b""), "corrupt_image", "empty"),
        (lambda m: m.text("bad.dcm", b"\0" * 128 + b"DICM" + b"garbage"), "corrupt_image", "DICOM"),
        (lambda m: m.root / "absent.png", "missing_image", "no such file"),
        (lambda m: m.path("folder.png/x").parent, "missing_image", "directory"),
    ],
)
def test_problems(make, writer, reason, words):
    with pytest.raises(ImageProblem) as e:
        check_image(writer(make))
    assert e.value.reason == reason and words in e.value.detail


def test_truncated_jpeg_caught_by_full_decode(make):
    p = make.image("big.jpg", seed=2, size=(256, 256))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    Image.open(p).verify()  # verify() alone lets it through
    for full in (False, True):  # draft-mode decode catches it as the full decode does
        with pytest.raises(ImageProblem, match="truncated"):
            check_image(p, full=full)


def test_jpeg_draft_check_reports_full_size(make):
    p = make.image("big.jpg", seed=3, size=(300, 200))
    assert check_image(p) == check_image(p, full=True)
    assert (check_image(p).width, check_image(p).height) == (300, 200)


def test_dicom_to_png_deterministic_and_windowed(make):
    src = get_testdata_file("CT_small.dcm")
    png = dicom_to_png(src)
    assert png == dicom_to_png(open(src, "rb").read())  # same bytes from a path or bytes
    im = Image.open(io.BytesIO(png))
    assert (im.format, im.mode, im.size) == ("PNG", "L", (128, 128))
    arr = np.asarray(im)
    # no window in the header: 1st-99th percentile stretch
    assert arr.min() == 0 and arr.max() == 255
    lo_share = (arr == 0).mean()
    assert 0.005 <= lo_share <= 0.2

    ds = pydicom.dcmread(src)
    ds.WindowCenter, ds.WindowWidth = 40, 400  # a soft-tissue window
    windowed = make.path("win.dcm")
    ds.save_as(windowed)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = np.asarray(Image.open(io.BytesIO(dicom_to_png(windowed))))
    assert (out[hu <= 40 - 200] == 0).all() and (out[hu >= 40 + 200] == 255).all()


def test_monochrome1_is_inverted(make):
    src = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(src)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inv = make.path("inv.dcm")
    ds.save_as(inv)
    a = np.asarray(dicom_image(src), dtype=int)
    b = np.asarray(dicom_image(inv), dtype=int)
    assert (a + b == 255).all()


def test_multiframe_middle_frame():
    src = get_testdata_file("emri_small.dcm")  # 10 frames
    ds = pydicom.dcmread(src)
    assert int(ds.NumberOfFrames) == 10
    assert np.array_equal(np.asarray(dicom_image(src)), np.asarray(dicom_image(src, frame=5)))
    assert not np.array_equal(
        np.asarray(dicom_image(src, frame=0)), np.asarray(dicom_image(src, frame=5))
    )
    with pytest.raises(ValueError):
        dicom_image(src, frame=10)


def test_load_rgb(make):
    assert load_rgb(get_testdata_file("CT_small.dcm")).mode == "RGB"
    p = make.image("c.png", seed=3)
    assert load_rgb(p).size == (32, 24)
    deep = make.path("deep.png")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(deep)
    rgb = np.asarray(load_rgb(deep))
    assert rgb.shape == (64, 64, 3) and rgb.max() == 255 and rgb.min() == 0  # scaled, not clipped
    with pytest.raises(ImageProblem):
        load_rgb(make.truncated_png("t.png"))
