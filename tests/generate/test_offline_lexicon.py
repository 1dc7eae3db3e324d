"""Entity extraction, the tables, and caption rephrasing."""

from __future__ import annotations

from medhall.generate import default_lexicon, extract_entities
from medhall.generate.tables import default_tables, template_hash
from medhall.generate.text import CaptionText, clean_sentence


def _by_entity(caption: str) -> dict:
    return {m.entity: m for m in extract_entities(caption)}


def test_longest_match_wins_and_word_boundaries():
    found = _by_entity("Left pleural effusion. The left ventricle is dilated. A massive hematoma.")
    assert "pleural_effusion" in found and "left_ventricle" in found
    assert "mass" not in found  # "massive" is not "mass" ...
    assert [(a.group, a.value) for a in found["hematoma"].attributes] == [
        ("size", "large")
    ]  # ... it is a size


def test_case_hyphen_and_plural_forms():
    m = _by_entity("Bilateral Ground glass opacities on CT.")["ground_glass_opacity"]
    assert m.is_plural and m.display == "ground-glass opacities"
    assert [(a.group, a.value) for a in m.attributes] == [("laterality", "bilateral")]


def test_negation_hedge_and_scope():
    found = _by_entity(
        "No pleural effusion or pneumothorax, but a large consolidation. Likely a cholesteatoma."
    )
    assert found["pleural_effusion"].negated and found["pneumothorax"].negated
    assert not found["consolidation"].negated and found["consolidation"].certain
    assert found["cholesteatoma"].hedged and not found["cholesteatoma"].certain
    assert _by_entity("The fracture is not seen.")["fracture"].negated


def test_attributes_attach_to_the_nearest_noun_in_the_sentence():
    found = _by_entity(
        "Chest x-ray showing large airspace consolidation in the left midlung. A hypodense lesion in the right kidney."
    )
    assert {(a.group, a.value) for a in found["consolidation"].attributes} == {
        ("size", "large"),
        ("laterality", "left"),
    }
    assert [(a.group, a.value) for a in found["lesion"].attributes] == [("density", "hypodense")]
    assert [(a.group, a.value) for a in found["kidney"].attributes] == [("laterality", "right")]


def test_tables_load_with_valid_references():
    lex, tables = default_lexicon(), default_tables()
    assert 200 <= len(lex.entities) <= 500
    assert 60 <= len(tables.premises) <= 130
    assert all(p.triggers <= lex.entities.keys() for p in tables.premises)
    assert all(lex.attributes[(g, to)] for (g, _), a in lex.attributes.items() for to in a.swaps)
    assert len(template_hash()) == 16


def test_clean_sentence_removes_legend_apparatus():
    s = clean_sentence(
        "Figure 2. (A) The provided image shows a mass (white arrows) in the liver (*), as indicated by the red arrows ."
    )
    assert s == "This image shows a mass in the liver."


def test_caption_text_drops_legend_noise_and_leakage():
    caption = "Axial CT shows a large mass in the liver. Scale bar = 50 um. As mentioned in the caption, it enhances."
    facts = default_lexicon().analyse(caption)
    text = CaptionText(caption, facts.lower, facts.sentence_ends)
    assert text.describe() == "Axial CT shows a large mass in the liver."
