"""Deterministic rephrasing of caption text into answer text.

Captions are figure legends: they carry panel labels ("(A)", "Figure 2."), arrow references,
statistics and methods. Answers take the caption's own sentences after these transformations:

- "The provided image(s) ..." / "The given figure ..." becomes "This image ..." / "These images ...";
- figure numbers, panel labels and parenthesised pointers ("(arrows)", "(white arrowhead)")
  are removed, as are "indicated by the red arrows" phrases;
- sentences that read as legend or methods text (scale bars, magnification, mean ± SD,
  p-values, n =, "we", "our", "this study") are dropped, and so is any sentence containing a
  QC leakage phrase (so an answer never says "the caption says").

The legend-noise and leakage patterns run once over the whole (lower-case) caption; a
sentence's clean-up patterns run only when a cheap test says they can match.
"""

from __future__ import annotations

import re

from medhall.qc.rules import leakage_spans

MAX_DESCRIPTION_WORDS = 90
MAX_SENTENCE_WORDS = 45
MIN_SENTENCE_WORDS = 3

_SUBJECT_WORDS = ("provided", "given", "presented", "accompanying", "attached", "included")
_SUBJECT = re.compile(
    r"\b(?:the|this)\s+(?:provided|given|presented|accompanying|attached|included)\s+"
    r"(?:medical\s+|clinical\s+)?(image|figure|picture|scan|photograph|micrograph)(s?)\b",
    re.IGNORECASE,
)
_FIGURE_REF = re.compile(
    r"\b(?:Supplementary\s+)?(?:Figure|Fig\.?)\s*\d+[A-Za-z]?\s*[.:]?\s*", re.IGNORECASE
)
_PANEL_START = re.compile(r"^\s*(?:\(?[A-Ha-h]\)|[A-H][.:])\s+")
_POINTER_WORDS = ("arrow", "asterisk", "circle", "star", "line", "box")
_POINTER = re.compile(
    r"\s*\((?:[*#\u2020\s]*|[A-Za-z](?:\s*[,\-\u2013&]\s*[A-Za-z])*|[ivx]+|(?:[a-z]+\s+)?(?:arrows?|arrowheads?|arrow heads?|"
    r"asterisks?|stars?|circles?|dashed lines?|dotted lines?|boxes|box)\b[^()]*)\)",
    re.IGNORECASE,
)
_POINTER_PHRASE = re.compile(
    r",?\s*\b(?:as\s+)?(?:indicated|marked|shown|highlighted|pointed)\s+(?:by|with)\s+(?:the\s+)?(?:[a-z]+\s+)?"
    r"(?:arrows?|arrowheads?|arrow heads?|asterisks?|circles?)\b",
    re.IGNORECASE,
)
# Legend or methods text (lower case; no leading \b so the scan can skip ahead, the left word
# boundary is checked on each hit).
_LEGEND_NOISE = re.compile(
    r"(?:scale bars?|bar\s*=|magnification|mean\s*\u00b1|\u00b1\s*(?:sd|sem|s\.d\.)|p\s*[<=>\u2264]\s*0?\.\d|"
    r"n\s*=\s*\d|statistical(?:ly)?|we|our|this study|data (?:are|were|is) (?:shown|presented|expressed)|"
    r"panels?|figure|supplementary|graphs?|plots?|charts?|flowchart|diagram|schematic|workflow|pipeline|"
    r"curves?|percentage|western blot|cell lines?|assays?|cascade|calculated|quantified|were counted|"
    r"(?:was|were) measured)\b|="
)
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_SPACED_PUNCT = (" ,", " .", " ;", " :", " !", " ?")


def _subject(m: re.Match[str]) -> str:
    return ("these " if m.group(2) else "this ") + m.group(1).lower() + m.group(2)


def clean_sentence(sentence: str) -> str:
    """One caption sentence with figure references, panel labels and pointers removed."""
    low = sentence.lower()
    s = sentence.lstrip()
    if ")" in s[:3] or s[1:2] in (".", ":"):
        s = _PANEL_START.sub("", s)
    if "fig" in low:
        s = _FIGURE_REF.sub("", s)
    if any(w in low for w in _POINTER_WORDS):
        s = _POINTER_PHRASE.sub("", s)
    if "(" in s:
        s = _POINTER.sub("", s)
    if any(w in low for w in _SUBJECT_WORDS):
        s = _SUBJECT.sub(_subject, s)
    if "  " in s or "\n" in s or "\t" in s:
        s = _SPACES.sub(" ", s)
    if any(p in s for p in _SPACED_PUNCT):
        s = _SPACE_BEFORE_PUNCT.sub(r"\1", s)
    s = s.strip(" ,;:\n\t")
    if s and s[-1] not in ".!?":
        s += "."
    return s[:1].upper() + s[1:]


def _noise_starts(lower: str) -> list[int]:
    return [
        m.start()
        for m in _LEGEND_NOISE.finditer(lower)
        if not (m.start() and lower[m.start() - 1].isalnum())
    ]


class CaptionText:
    """A caption's sentences, cleaned and screened once, for answers."""

    def __init__(self, caption: str, lower: str, sentence_ends: tuple[int, ...]) -> None:
        bounds = [0, *sentence_ends]
        if bounds[-1] < len(caption):
            bounds.append(len(caption))
        self._spans = list(zip(bounds, bounds[1:], strict=False))
        bad = _noise_starts(lower) + [start for start, _ in leakage_spans(lower)]
        self._bad = {i for i, (a, b) in enumerate(self._spans) for p in bad if a <= p < b}
        self._caption = caption
        self._clean: dict[int, str | None] = {}

    def sentence(self, index: int, max_words: int = MAX_SENTENCE_WORDS) -> str | None:
        """Sentence ``index`` cleaned, or None when it is legend text, leaks, or is too short or long."""
        if index not in self._clean:
            s = None
            if index < len(self._spans) and index not in self._bad:
                a, b = self._spans[index]
                s = clean_sentence(self._caption[a:b])
                if len(s.split()) < MIN_SENTENCE_WORDS:
                    s = None
            self._clean[index] = s
        s = self._clean[index]
        return s if s and len(s.split()) <= max_words else None

    def describe(self, lead: str | None = None) -> str | None:
        """A description from the usable sentences (about 90 words), after ``lead``; None if none."""
        parts = [lead] if lead else []
        words = len(lead.split()) if lead else 0
        for i in range(len(self._spans)):
            s = self.sentence(i, MAX_DESCRIPTION_WORDS)
            if s is None:
                continue
            n = len(s.split())
            if words and words + n > MAX_DESCRIPTION_WORDS:
                break
            parts.append(s)
            words += n
        if len(parts) == (1 if lead else 0):
            return None
        return " ".join(parts)
