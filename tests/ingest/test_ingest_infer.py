"""medhall.sources.infer: the documented modality / body-part rule."""

from __future__ import annotations

import pytest

from medhall.sources.infer import (
    BODY_PART_KEYWORDS,
    MODALITIES,
    MODALITY_KEYWORDS,
    infer_body_part,
    infer_modality,
    modality_from_dicom,
    normalise_body_part,
    normalise_modality,
    resolve_body_part,
    resolve_modality,
)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("CT(Computed Tomography)", "CT"), ("CT scan", "CT"), ("Computed Tomography", "CT"),
        ("MRI", "MR"), ("MR", "MR"), ("Magnetic Resonance Imaging", "MR"),
        ("X-Ray", "radiograph"), ("chest x-ray", "radiograph"), ("radiograph", "radiograph"),
        ("Microscopy Images", "microscopy"), ("microscopy", "microscopy"),
        ("histopathology", "histology"), ("H&E", "histology"),
        ("fundus photography", "fundus"), ("Fundus Photography", "fundus"),
        ("ultrasound", "ultrasound"), ("sonography", "ultrasound"), ("US", "ultrasound"),
        ("PET", "PET"), ("SPECT", "nuclear_medicine"), ("scintigraphy", "nuclear_medicine"),
        ("endoscopy", "endoscopy"), ("dermoscopy", "photograph"), ("Digital Photography", "photograph"),
        ("Optical Coherence Tomography", "other"), ("something odd", "other"), ("", None), (None, None),
    ],
)  # fmt: skip
def test_normalise_modality(source, expected):
    assert normalise_modality(source) == expected


def test_normalise_body_part():
    assert [normalise_body_part(x) for x in ("Chest", "Lung", "Brain", "KNEE", "Oral Cavity", "CSPINE", "Cell", "Lymph Node", "")] == [
        "chest", "chest", "brain", "lower_limb", "head", "spine", "cell", "lymph_node", None,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "caption, modality, body",
    [
        ("Initial chest x-ray showing consolidation in the left midlung.", "radiograph", "chest"),
        ("A computed tomography (CT) scan of the abdomen; MRI was normal.", "CT", "abdomen"),
        ("MRI was normal but CT of the abdomen showed a mass.", "MR", "abdomen"),  # earliest wins
        ("CT angiography of the brain.", "CT", "brain"),  # longer keyword at the same place
        ("PET/CT of the whole body.", "PET", "whole_body"),
        ("Fundus photograph of the right eye.", "fundus", "eye"),
        ("Photomicrograph of the biopsy (H&E, x400).", "microscopy", None),
        ("Liver biopsy, H&E stain.", "histology", "abdomen"),
        ("Tell us more about Mr. Smith's acts.", None, None),  # acronyms are case-sensitive
        ("The subCT and ctx markers; ultrasounds-like.", None, None),  # whole words only
        ("Transthoracic echocardiography, apical view.", "ultrasound", "heart"),
        ("Sagittal T2-weighted image of the lumbar spine.", "MR", "spine"),
        ("", None, None),
        (None, None, None),
    ],
)
def test_caption_rule(caption, modality, body):
    assert infer_modality(caption) == modality
    assert infer_body_part(caption) == body


def test_resolve_order_and_origins():
    assert resolve_modality("CT scan", "MR", "An ultrasound.") == ("CT", "source")
    assert resolve_modality(None, "MR", "An ultrasound.") == ("MR", "header")
    assert resolve_modality("", None, "An ultrasound.") == ("ultrasound", "caption")
    assert resolve_modality(None, None, "A figure.") == ("unknown", "unknown")
    assert resolve_modality("unknown", None, "X-ray of the hand.") == ("radiograph", "caption")
    assert resolve_body_part("Chest", "HEAD", "knee") == ("chest", "source")
    assert resolve_body_part(None, "HEAD", "knee") == ("head", "header")
    assert resolve_body_part(None, None, "Knee MRI") == ("lower_limb", "caption")
    assert resolve_body_part(None, None, "") == ("unknown", "unknown")


def test_dicom_codes():
    assert [modality_from_dicom(c) for c in ("CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "OP", "SM", "XYZ", None)] == [
        "CT", "MR", "ultrasound", "radiograph", "radiograph", "radiograph", "nuclear_medicine", "PET", "fundus", "microscopy", "other", None,
    ]  # fmt: skip


def test_tables_use_the_vocabulary():
    assert {label for _, label, _ in MODALITY_KEYWORDS} <= set(MODALITIES)
    assert all(p[0].isalpha() for p, _, _ in (*MODALITY_KEYWORDS, *BODY_PART_KEYWORDS))


def test_docs_carry_the_current_tables():
    from pathlib import Path

    from medhall.sources.infer import keyword_tables_markdown

    doc = Path(__file__).resolve().parents[2] / "docs" / "ingest.md"
    assert keyword_tables_markdown() in doc.read_text(encoding="utf-8"), (
        "regenerate the tables in docs/ingest.md"
    )
