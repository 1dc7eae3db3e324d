"""Modality and body part: normalising what a source says, and inferring from a caption.

Three origins, tried in order by :func:`resolve_modality` / :func:`resolve_body_part`:

1. ``source``: the corpus states it (PubMedVision's ``modality`` / ``body_part``, LLaVA-Med's
   ``domain`` flags, a generic column). The text is normalised: an exact synonym table first
   (:data:`MODALITY_SYNONYMS`, :data:`BODY_PART_SYNONYMS`, compared lower-case with
   punctuation collapsed), then the caption keyword rule run on the text itself. A modality
   still not recognised becomes ``other`` (the vocabulary is closed); a body part not
   recognised is kept as the source wrote it, lower-case with ``_`` for spaces (open vocabulary).
2. ``header``: a DICOM file's ``Modality`` tag (:data:`DICOM_MODALITY`) and
   ``BodyPartExamined`` (normalised like a source value).
3. ``caption``: the keyword rule below.
4. Otherwise ``unknown`` (origin ``unknown``).

The keyword rule (:func:`infer_modality`, :func:`infer_body_part`): each table maps keyword
patterns to a label. A keyword matches only as a whole word (no letter, digit or ``_``
directly before or after it). Acronyms (CT, MR, US, PET, ...) match only in the case shown;
words match in any case. The match that starts **earliest** in the caption wins; when two
keywords start at the same place, the **longer** keyword wins ("chest x-ray" over "chest",
"CT angiography" over "CT", "fundus photograph" over "fundus", "PET/CT" over "PET").
docs/ingest.md lists the tables.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

MODALITIES = (
    "CT", "MR", "ultrasound", "radiograph", "nuclear_medicine", "PET", "fundus", "histology",
    "microscopy", "endoscopy", "photograph", "phantom", "other", "unknown",
)  # fmt: skip

UNKNOWN = "unknown"

# (pattern, label, case_sensitive). Patterns are regular expressions for one keyword.
MODALITY_KEYWORDS: tuple[tuple[str, str, bool], ...] = (
    (r"computed tomograph(?:y|ic)", "CT", False),
    (r"computeri[sz]ed tomograph(?:y|ic)", "CT", False),
    (r"CT", "CT", True),
    (r"CTA", "CT", True),
    (r"HRCT", "CT", True),
    (r"MDCT", "CT", True),
    (r"CBCT", "CT", True),
    (r"cone[- ]beam CT", "CT", False),
    (r"CT angiograph(?:y|ic)", "CT", True),
    (r"magnetic resonance", "MR", False),
    (r"MRI", "MR", True),
    (r"MRA", "MR", True),
    (r"fMRI", "MR", True),
    (r"MR", "MR", True),
    (r"MR angiograph(?:y|ic)", "MR", True),
    (r"T[12][- ]weighted", "MR", False),
    (r"FLAIR", "MR", True),
    (r"diffusion[- ]weighted", "MR", False),
    (r"ultrasound", "ultrasound", False),
    (r"ultrasonograph(?:y|ic)", "ultrasound", False),
    (r"sonograph(?:y|ic)", "ultrasound", False),
    (r"sonograms?", "ultrasound", False),
    (r"echocardiograph(?:y|ic)", "ultrasound", False),
    (r"echocardiograms?", "ultrasound", False),
    (r"doppler", "ultrasound", False),
    (r"US", "ultrasound", True),
    (r"x-?rays?", "radiograph", False),
    (r"x rays?", "radiograph", False),
    (r"radiograph(?:s|y|ic)?", "radiograph", False),
    (r"roentgenograms?", "radiograph", False),
    (r"CXR", "radiograph", True),
    (r"mammogra(?:ms?|phy|phic)", "radiograph", False),
    (r"fluoroscop(?:y|ic)", "radiograph", False),
    (r"angiogra(?:ms?|phy|phic)", "radiograph", False),
    (r"plain films?", "radiograph", False),
    (r"orthopantomogra(?:ms?|phs?)", "radiograph", False),
    (r"PET", "PET", True),
    (r"PET/CT", "PET", True),
    (r"PET-CT", "PET", True),
    (r"FDG", "PET", True),
    (r"positron emission tomography", "PET", False),
    (r"SPECT", "nuclear_medicine", True),
    (r"single[- ]photon emission", "nuclear_medicine", False),
    (r"scintigra(?:ms?|phy|phic)", "nuclear_medicine", False),
    (r"bone scans?", "nuclear_medicine", False),
    (r"nuclear medicine", "nuclear_medicine", False),
    (r"gamma camera", "nuclear_medicine", False),
    (r"fundus", "fundus", False),
    (r"fundus photograph(?:s|y)?", "fundus", False),
    (r"fundus(?:copy|copic|oscopy|oscopic)", "fundus", False),
    (r"retinal photograph(?:s|y)?", "fundus", False),
    (r"fluorescein angiogra(?:ms?|phy)", "fundus", False),
    (r"histolog(?:y|ic|ical)", "histology", False),
    (r"histopatholog(?:y|ic|ical)", "histology", False),
    (r"H&E", "histology", True),
    (r"H and E", "histology", True),
    (r"ha?ematoxylin", "histology", False),
    (r"immunohistochemi(?:stry|cal)", "histology", False),
    (r"IHC", "histology", True),
    (r"microscop(?:y|e|ic)", "microscopy", False),
    (r"micrographs?", "microscopy", False),
    (r"photomicrographs?", "microscopy", False),
    (r"endoscop(?:y|ic)", "endoscopy", False),
    (r"colonoscop(?:y|ic)", "endoscopy", False),
    (r"gastroscop(?:y|ic)", "endoscopy", False),
    (r"bronchoscop(?:y|ic)", "endoscopy", False),
    (r"laparoscop(?:y|ic)", "endoscopy", False),
    (r"cystoscop(?:y|ic)", "endoscopy", False),
    (r"arthroscop(?:y|ic)", "endoscopy", False),
    (r"EGD", "endoscopy", True),
    (r"photographs?", "photograph", False),
    (r"photos?", "photograph", False),
    (r"dermoscop(?:y|ic)", "photograph", False),
    (r"dermatoscop(?:y|ic)", "photograph", False),
    (r"gross (?:specimen|appearance|pathology|photograph)", "photograph", False),
    (r"optical coherence tomography", "other", False),
    (r"OCT", "other", True),
    (r"phantom", "phantom", False),
)

BODY_PART_KEYWORDS: tuple[tuple[str, str, bool], ...] = (
    (r"brain", "brain", False),
    (r"cerebr(?:al|um)", "brain", False),
    (r"cerebell(?:ar|um)", "brain", False),
    (r"intracranial", "brain", False),
    (r"hippocamp(?:us|al)", "brain", False),
    (r"thalam(?:us|ic)", "brain", False),
    (r"basal ganglia", "brain", False),
    (r"white matter", "brain", False),
    (r"pituitary", "brain", False),
    (r"head", "head", False),
    (r"head and neck", "head", False),
    (r"skull", "head", False),
    (r"face", "head", False),
    (r"facial", "head", False),
    (r"maxill(?:a|ary|ofacial)", "head", False),
    (r"mandib(?:le|ular)", "head", False),
    (r"jaws?", "head", False),
    (r"nasal sinus(?:es)?", "head", False),
    (r"paranasal sinus(?:es)?", "head", False),
    (r"sinus(?:es)?", "head", False),
    (r"oral cavity", "head", False),
    (r"tongue", "head", False),
    (r"teeth", "head", False),
    (r"tooth", "head", False),
    (r"dental", "head", False),
    (r"ears?", "head", False),
    (r"eyes?", "eye", False),
    (r"retina(?:l)?", "eye", False),
    (r"ocular", "eye", False),
    (r"cornea(?:l)?", "eye", False),
    (r"orbit(?:al|s)?", "eye", False),
    (r"macula(?:r)?", "eye", False),
    (r"optic dis[ck]", "eye", False),
    (r"fundus", "eye", False),
    (r"neck", "neck", False),
    (r"thyroid", "neck", False),
    (r"laryn(?:x|geal)", "neck", False),
    (r"pharyn(?:x|geal)", "neck", False),
    (r"carotid", "neck", False),
    (r"spine", "spine", False),
    (r"spinal", "spine", False),
    (r"vertebra(?:l|e)?", "spine", False),
    (r"intervertebral", "spine", False),
    (r"lumbar", "spine", False),
    (r"sacr(?:um|al)", "spine", False),
    (r"cervical spine", "spine", False),
    (r"thoracic spine", "spine", False),
    (r"chest", "chest", False),
    (r"chest x-?rays?", "chest", False),
    (r"thora(?:x|cic)", "chest", False),
    (r"lungs?", "chest", False),
    (r"pulmonary", "chest", False),
    (r"pleura(?:l)?", "chest", False),
    (r"mediastin(?:um|al)", "chest", False),
    (r"bronch(?:us|i|ial)", "chest", False),
    (r"trache(?:a|al)", "chest", False),
    (r"ribs?", "chest", False),
    (r"CXR", "chest", True),
    (r"heart", "heart", False),
    (r"cardiac", "heart", False),
    (r"coronary", "heart", False),
    (r"myocardi(?:um|al)", "heart", False),
    (r"pericardi(?:um|al)", "heart", False),
    (r"aort(?:a|ic)", "heart", False),
    (r"mitral", "heart", False),
    (r"atri(?:um|a|al)", "heart", False),
    (r"left ventric(?:le|ular)", "heart", False),
    (r"right ventric(?:le|ular)", "heart", False),
    (r"echocardiogra(?:ms?|phy|phic)", "heart", False),
    (r"breasts?", "breast", False),
    (r"mammogra(?:ms?|phy|phic)", "breast", False),
    (r"mammary", "breast", False),
    (r"abdom(?:en|inal)", "abdomen", False),
    (r"liver", "abdomen", False),
    (r"hepat(?:ic)", "abdomen", False),
    (r"pancrea(?:s|tic)", "abdomen", False),
    (r"spleen", "abdomen", False),
    (r"splenic", "abdomen", False),
    (r"kidneys?", "abdomen", False),
    (r"renal", "abdomen", False),
    (r"gall ?bladder", "abdomen", False),
    (r"biliary", "abdomen", False),
    (r"stomach", "abdomen", False),
    (r"gastric", "abdomen", False),
    (r"bowel", "abdomen", False),
    (r"colon(?:ic)?", "abdomen", False),
    (r"intestin(?:e|es|al)", "abdomen", False),
    (r"duoden(?:um|al)", "abdomen", False),
    (r"adrenal", "abdomen", False),
    (r"appendi(?:x|ceal)", "abdomen", False),
    (r"peritone(?:um|al)", "abdomen", False),
    (r"retroperitone(?:um|al)", "abdomen", False),
    (r"pelvi(?:s|c)", "pelvis", False),
    (r"hips?", "pelvis", False),
    (r"uter(?:us|ine)", "pelvis", False),
    (r"ovar(?:y|ies|ian)", "pelvis", False),
    (r"prostat(?:e|ic)", "pelvis", False),
    (r"bladder", "pelvis", False),
    (r"urinary bladder", "pelvis", False),
    (r"cervix", "pelvis", False),
    (r"rect(?:um|al)", "pelvis", False),
    (r"testi(?:s|cular|cle)", "pelvis", False),
    (r"scrot(?:um|al)", "pelvis", False),
    (r"placenta(?:l)?", "pelvis", False),
    (r"shoulders?", "upper_limb", False),
    (r"elbows?", "upper_limb", False),
    (r"wrists?", "upper_limb", False),
    (r"hands?", "upper_limb", False),
    (r"fingers?", "upper_limb", False),
    (r"thumbs?", "upper_limb", False),
    (r"humer(?:us|al)", "upper_limb", False),
    (r"forearms?", "upper_limb", False),
    (r"upper arms?", "upper_limb", False),
    (r"ulna(?:r)?", "upper_limb", False),
    (r"carpal", "upper_limb", False),
    (r"metacarpal", "upper_limb", False),
    (r"legs?", "lower_limb", False),
    (r"knees?", "lower_limb", False),
    (r"ankles?", "lower_limb", False),
    (r"foot", "lower_limb", False),
    (r"feet", "lower_limb", False),
    (r"femur", "lower_limb", False),
    (r"femoral", "lower_limb", False),
    (r"tibia(?:l)?", "lower_limb", False),
    (r"fibula(?:r)?", "lower_limb", False),
    (r"thighs?", "lower_limb", False),
    (r"toes?", "lower_limb", False),
    (r"patella(?:r)?", "lower_limb", False),
    (r"calcane(?:us|al)", "lower_limb", False),
    (r"skin", "skin", False),
    (r"cutaneous", "skin", False),
    (r"subcutaneous", "skin", False),
    (r"derm(?:al|is)", "skin", False),
    (r"epiderm(?:is|al)", "skin", False),
    (r"whole[- ]body", "whole_body", False),
)

# Exact synonyms for what sources say (compared after _clean()).
MODALITY_SYNONYMS: dict[str, str] = {
    "ct": "CT", "ct computed tomography": "CT", "computed tomography": "CT", "ct scan": "CT",
    "mri": "MR", "mr": "MR", "magnetic resonance imaging": "MR", "mri magnetic resonance imaging": "MR",
    "x ray": "radiograph", "xray": "radiograph", "chest x ray": "radiograph", "radiograph": "radiograph",
    "radiography": "radiograph", "digital radiography": "radiograph", "mammography": "radiograph",
    "microscopy images": "microscopy", "microscopy": "microscopy",
    "histopathology": "histology", "histology": "histology", "h e": "histology", "pathology": "histology",
    "fundus photography": "fundus", "fundus": "fundus",
    "ultrasound": "ultrasound", "sonography": "ultrasound", "us": "ultrasound", "ultrasonography": "ultrasound",
    "pet": "PET", "pet ct": "PET",
    "spect": "nuclear_medicine", "scintigraphy": "nuclear_medicine", "nuclear medicine": "nuclear_medicine",
    "endoscopy": "endoscopy",
    "dermoscopy": "photograph", "dermatoscopy": "photograph", "digital photography": "photograph",
    "photograph": "photograph", "photography": "photograph", "clinical photograph": "photograph",
    "optical coherence tomography": "other", "oct": "other",
    "phantom": "phantom", "other": "other", "unknown": "unknown",
}  # fmt: skip

BODY_PART_SYNONYMS: dict[str, str] = {
    "cspine": "spine", "tspine": "spine", "lspine": "spine", "sspine": "spine",
    "wholebody": "whole_body", "whole body": "whole_body",
    "lung": "chest", "thorax": "chest",
    "head and neck": "head", "oral cavity": "head",
    "extremity": "other", "unknown": "unknown",
}  # fmt: skip

# DICOM (0008,0060) Modality defined terms.
DICOM_MODALITY: dict[str, str] = {
    "CT": "CT", "MR": "MR", "US": "ultrasound", "IVUS": "ultrasound",
    "CR": "radiograph", "DX": "radiograph", "DR": "radiograph", "RG": "radiograph", "MG": "radiograph",
    "XA": "radiograph", "RF": "radiograph", "PX": "radiograph", "IO": "radiograph",
    "NM": "nuclear_medicine", "PT": "PET",
    "OP": "fundus", "OPT": "other", "XC": "photograph", "GM": "photograph", "SM": "microscopy",
    "ES": "endoscopy", "OT": "other",
}  # fmt: skip


def _compile(table: tuple[tuple[str, str, bool], ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    """One pattern for a keyword table, fast and with the documented tie rule.

    Keywords are grouped by first letter into one branch each, which starts with that
    letter's character set (``[cC]``): the regex engine skips a branch whose letter does not
    match without backtracking, which makes a caption search about 2x faster than one flat
    alternation. Inside a branch the keywords are ordered longest first, so at one position
    the longer keyword wins. A case-sensitive keyword checks its first letter's case with a
    look-behind. Whole words: a look-behind before the first letter, a look-ahead after.
    """
    branches: dict[str, list[tuple[int, str]]] = {}
    labels: dict[str, str] = {}
    for i, (pattern, label, case_sensitive) in enumerate(table):
        first, rest = pattern[0], pattern[1:]
        if not first.isalpha() or rest[:1] in ("?", "*", "{"):
            raise ValueError(f"keyword pattern must start with a letter: {pattern!r}")
        name = f"k{i}"
        labels[name] = label
        body = f"(?<={re.escape(first)}){rest}" if case_sensitive else f"(?i:{rest})"
        branches.setdefault(first.lower(), []).append((len(pattern), f"(?P<{name}>{body})"))
    alts = []
    for letter, items in branches.items():
        inner = "|".join(b for _, b in sorted(items, key=lambda t: -t[0]))
        alts.append(f"[{letter}{letter.upper()}](?:{inner})")
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)"), labels


@cache
def _rule(kind: str) -> tuple[re.Pattern[str], dict[str, str]]:
    return _compile(MODALITY_KEYWORDS if kind == "modality" else BODY_PART_KEYWORDS)


def _first(kind: str, text: str | None) -> str | None:
    if not text:
        return None
    pattern, labels = _rule(kind)
    m = pattern.search(text)
    return labels[m.lastgroup] if m and m.lastgroup else None


def infer_modality(text: str | None) -> str | None:
    """The modality named earliest in ``text`` by the keyword rule, or None."""
    return _first("modality", text)


def infer_body_part(text: str | None) -> str | None:
    """The body part named earliest in ``text`` by the keyword rule, or None."""
    return _first("body_part", text)


_CLEAN = re.compile(r"[^0-9a-z]+")


def _clean(value: str) -> str:
    return _CLEAN.sub(" ", value.lower()).strip()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s or None


def normalise_modality(value: Any) -> str | None:
    """A source's modality text as a vocabulary label; ``other`` when not recognised.

    ``"CT(Computed Tomography)"`` and ``"CT scan"`` -> CT; ``"MRI"`` -> MR; ``"X-Ray"`` ->
    radiograph; ``"Microscopy Images"`` -> microscopy; ``"H&E"`` -> histology; ...
    None for an empty value.
    """
    s = _text(value)
    if s is None:
        return None
    if s in MODALITIES:
        return s
    key = _clean(s)
    if key in MODALITY_SYNONYMS:
        return MODALITY_SYNONYMS[key]
    return infer_modality(s) or infer_modality(s.upper()) or "other"


def normalise_body_part(value: Any) -> str | None:
    """A source's body-part text as a label; kept (lower-case, ``_``) when not recognised."""
    s = _text(value)
    if s is None:
        return None
    key = _clean(s)
    if not key:
        return None
    if key in BODY_PART_SYNONYMS:
        return BODY_PART_SYNONYMS[key]
    return infer_body_part(s) or key.replace(" ", "_")


def modality_from_dicom(code: Any) -> str | None:
    """A DICOM ``Modality`` code (CT, MR, US, CR, DX, NM, PT, ...) as a vocabulary label."""
    s = _text(code)
    if s is None:
        return None
    return DICOM_MODALITY.get(s.upper(), "other")


def resolve_modality(source: Any, header: Any, caption: str | None) -> tuple[str, str]:
    """``(modality, origin)``: source, else DICOM header code, else caption rule, else unknown."""
    if (m := normalise_modality(source)) and m != UNKNOWN:
        return m, "source"
    if (m := modality_from_dicom(header)) is not None:
        return m, "header"
    if (m := infer_modality(caption)) is not None:
        return m, "caption"
    return UNKNOWN, "unknown"


def resolve_body_part(source: Any, header: Any, caption: str | None) -> tuple[str, str]:
    """``(body_part, origin)``: source, else DICOM BodyPartExamined, else caption rule, else unknown."""
    if (b := normalise_body_part(source)) and b != UNKNOWN:
        return b, "source"
    if (b := normalise_body_part(header)) and b != UNKNOWN:
        return b, "header"
    if (b := infer_body_part(caption)) is not None:
        return b, "caption"
    return UNKNOWN, "unknown"


def _markdown_table(title: str, table: tuple[tuple[str, str, bool], ...]) -> list[str]:
    by_label: dict[str, list[str]] = {}
    for pattern, label, case_sensitive in table:
        by_label.setdefault(label, []).append(
            f"`{pattern}`" + (" (case)" if case_sensitive else "")
        )
    out = [f'| {title} | keywords (regular expressions; "(case)" = case-sensitive) |', "|---|---|"]
    out += [
        f"| {label} | {', '.join(words).replace('|', chr(92) + '|')} |"
        for label, words in by_label.items()
    ]
    return out


def _grouped(title: str, head: str, mapping: dict[str, str]) -> list[str]:
    by_label: dict[str, list[str]] = {}
    for key, label in mapping.items():
        by_label.setdefault(label, []).append(f"`{key}`")
    return [f"| {title} | {head} |", "|---|---|"] + [
        f"| {label} | {', '.join(keys)} |" for label, keys in by_label.items()
    ]


def keyword_tables_markdown() -> str:
    """The rule's tables as Markdown (docs/ingest.md embeds this text; a test checks it)."""
    lines = (
        _markdown_table("modality", MODALITY_KEYWORDS)
        + [""]
        + _markdown_table("body part", BODY_PART_KEYWORDS)
    )
    lines += [""] + _grouped(
        "modality",
        "a source's text, cleaned (lower-case, punctuation as one space)",
        MODALITY_SYNONYMS,
    )
    lines += [""] + _grouped("body part", "a source's text, cleaned", BODY_PART_SYNONYMS)
    lines += [""] + _grouped("modality", "DICOM Modality code", DICOM_MODALITY)
    return "\n".join(lines)
