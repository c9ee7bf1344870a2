"""The ENT lexicon: parsing site / side / state, splitting, captions and the left-right swap."""
from __future__ import annotations

import json
import re

import pytest

from conftest import T2I_JSON, need_entrep
from retrieval.captions import class_captions
from retrieval.lexicon import (
    CLASSES,
    class_consistency,
    class_description,
    swap_side_label,
    swap_side_text,
)
from retrieval.reading import parse, split_queries  # descriptions are read first (request, negation, typos)


# text -> (site, side, state)
PHRASINGS = {
    "left ear": ("ear", "left", None),
    "Right tympanic membrane": ("ear", "right", None),
    "perforation of the left eardrum": ("ear", "left", None),
    "perforated drum": ("ear", None, None),  # clinic shorthand: the drum is the eardrum
    "dull retracted drum, left": ("ear", "left", None),
    "L ear": ("ear", "left", None),
    "R TM perforation": ("ear", "right", None),
    "Rt. ear canal": ("ear", "right", None),
    "Lt external auditory canal": ("ear", "left", None),
    "AD: wax": ("ear", "right", None),
    "AS otoscopy": ("ear", "left", None),
    "AU cerumen": ("ear", "bilateral", None),
    "bilateral otitis media": ("ear", "bilateral", None),
    "wax in both ears": ("ear", "bilateral", None),
    "discharge in the left and right ear canals": ("ear", "bilateral", None),
    "RIGHT EAR": ("ear", "right", None),
    "LEFT EAR AS SEEN": ("ear", "left", None),  # all caps: "AS" is a word, not the left-ear abbreviation
    "middle ear effusion": ("ear", None, None),
    "the cone of light is visualized": ("ear", None, None),
    "external auditory meatus": ("ear", None, None),
    "left-sided nasal polyp": ("nose", "left", None),
    "right nostril": ("nose", "right", None),
    "septal deviation": ("nose", None, None),
    "middle meatus": ("nose", None, None),
    "polypoid degeneration of the middle turbinate": ("nose", None, None),
    "mucus on the nasopharynx": ("nose", None, None),
    "R nasal cavity": ("nose", "right", None),
    "tonsillar hypertrophy": ("throat", None, None),
    "lingual tonsillar hypertrophy": ("throat", None, None),
    "erythema of the posterior wall of the oropharynx": ("throat", None, None),
    "cleft palate": ("throat", None, None),
    "uvula": ("throat", None, None),
    "vocal cords abducted": ("larynx", None, "open"),
    "vocal folds adducted during phonation": ("larynx", None, "closed"),
    "open glottis on inspiration": ("larynx", None, "open"),
    "incomplete glottic closure": ("larynx", None, "closed"),
    "the left vocal cord is edematous": ("larynx", "left", None),
    "VC closed": ("larynx", None, "closed"),
    "phonation": ("larynx", None, "closed"),
    "white discharge in the pyriform sinuses": ("larynx", None, None),  # not the nasal "sinus"
    "edema of the arytenoid cartilages": ("larynx", None, None),
    "vocal cords open and closed": ("larynx", None, None),  # contradictory: no state
    "the ear canal is closed": ("ear", None, None),  # "closed" is a vocal-fold state only
    "year-old patient with a clear discharge": (None, None, None),  # neither "ear" nor "left" inside words
    "bright light on the cleft": (None, None, None),
    "normal": (None, None, None),
}


@pytest.mark.parametrize("text,expected", PHRASINGS.items(), ids=list(PHRASINGS))
def test_parse_phrasings(text, expected):
    p = parse(text)
    assert (p.site, p.side, p.state) == expected


@pytest.mark.parametrize("text,classes", [
    ("left ear", ("ear-left",)),
    ("ear", ("ear-right", "ear-left")),
    ("bilateral nasal polyps", ("nose-right", "nose-left")),
    ("vocal folds abducted", ("vc-open",)),
    ("the left vocal cord is edematous", ("vc-open", "vc-closed")),  # the folds carry no side in the classes
    ("throat", ("throat",)),
    ("left", ("nose-left", "ear-left", "vc-open", "vc-closed", "throat")),
    ("normal", CLASSES),
    ("left ear wax and right nasal polyp", ("nose-right", "ear-left")),
])
def test_parse_classes(text, classes):
    assert parse(text).classes == classes


def test_findings_are_canonical_ordered_and_skip_negations():
    assert parse("cerumen with superimposed fungal infection").findings == ("wax", "fungal infection")
    assert parse("the vocal cords are oedematous and erythematous").findings == ("edema", "erythema")
    assert parse("foreign body (a hair) in the EAC").findings == ("foreign body",)
    assert parse("no perforation, but white discharge").findings == ("discharge",)
    assert parse("nasal polyp").findings == ("polyp",)


@pytest.mark.parametrize("text,queries", [
    ("left ear wax and right nasal polyp", ["left ear wax", "right nasal polyp"]),
    ("wax in the left ear and perforation of the right TM", ["wax in the left ear", "perforation of the right TM"]),
    ("mucus in the left nasal cavity. Erythema of the tonsils", ["mucus in the left nasal cavity",
                                                                "Erythema of the tonsils"]),
    ("bilateral otitis media, nasal polyps; vocal cords adducted",
     ["bilateral otitis media", "nasal polyps", "vocal cords adducted"]),
    ("edema and erythema of the vocal cords", ["edema and erythema of the vocal cords"]),
    ("enlargement of the uncinate process and ethmoid bulla", ["enlargement of the uncinate process and "
                                                               "ethmoid bulla"]),
    ("wax in the left ear and the right ear", ["wax in the left ear and the right ear"]),
    ("cerumen with superimposed fungal infection in the external auditory canal",
     ["cerumen with superimposed fungal infection in the external auditory canal"]),
    ("the tympanic membrane is intact but thickened", ["the tympanic membrane is intact but thickened"]),
    ("normal", ["normal"]),
])
def test_split_queries(text, queries):
    assert split_queries(text) == queries


def test_parse_of_several_sites_keeps_a_part_per_query():
    p = parse("left ear wax and right nasal polyp")
    assert [part.classes for part in p.parts] == [("ear-left",), ("nose-right",)]
    assert p.site is None and p.findings == ("wax", "polyp")
    assert class_consistency(p, "nose-right")[0] == 1.0
    assert class_consistency(p, "ear-left")[0] == 1.0
    assert class_consistency(p, "ear-right")[0] == 0.0


def test_class_consistency_scores_and_reasons():
    left_ear = parse("left ear")
    assert class_consistency(left_ear, "ear-left") == (1.0, "site ear and side left match ear-left")
    assert class_consistency(left_ear, "ear-right") == (0.0, "side mismatch: query left, image ear-right")
    assert class_consistency(left_ear, "nose-left") == (0.0, "site mismatch: query ear, image nose-left")
    assert class_consistency(parse("vocal cords abducted"), "vc-closed")[0] == 0.0
    assert class_consistency(parse("ear discharge"), "ear-right")[0] == 0.75  # side not stated
    bilateral = class_consistency(parse("bilateral ear wax"), "ear-right")  # "bilateral" is no one side
    assert bilateral == (0.75, "site ear matches ear-right; bilateral, so either side fits")
    neutral = class_consistency(parse("suspected of polyp"), "ear-left")
    assert neutral[0] == 0.5 and "no site, side or state" in neutral[1]
    assert class_consistency(left_ear, None)[0] == 0.5
    assert class_consistency(left_ear, "kidney")[0] == 0.5


@pytest.mark.parametrize("cls", CLASSES)
def test_captions_are_varied_and_parse_back_to_their_class_only(cls):
    captions = class_captions(cls)
    assert len(captions) >= 6 and len(set(captions)) == len(captions)
    for caption in captions:
        parsed = parse(caption)
        assert class_consistency(parsed, cls)[0] == 1.0, caption
        assert all(class_consistency(parsed, other)[0] < 1.0 for other in CLASSES if other != cls), caption


def test_captions_use_the_synonyms():
    ear_left = " | ".join(class_captions("ear-left")).lower()
    for phrase in ("left ear", "left tympanic membrane", "left external auditory canal", "left eardrum", "l tm"):
        assert phrase in ear_left
    vc_closed = " | ".join(class_captions("vc-closed"))
    for phrase in ("vocal folds adducted", "closed glottis", "phonation", "vocal cords closed"):
        assert phrase in vc_closed
    assert "vocal folds abducted" in class_captions("vc-open")


@pytest.mark.parametrize("cls,other", [("ear-left", "right"), ("ear-right", "left"),
                                       ("nose-left", "right"), ("nose-right", "left")])
def test_sided_captions_name_only_their_own_side(cls, other):
    opposite = re.compile(rf"\b{other}\b|\b{other[0].upper()}t?\b|\b{'AD' if other == 'right' else 'AS'}\b", re.I)
    for caption in class_captions(cls):
        assert not opposite.search(caption), caption
        assert parse(caption).side == cls.split("-")[1]


@pytest.mark.parametrize("cls", ["ear-left", "ear-right", "nose-left", "nose-right"])
def test_swapped_caption_is_a_caption_of_the_mirrored_class(cls):
    mirrored = swap_side_label(cls)
    for caption in class_captions(cls):
        swapped = swap_side_text(caption)
        assert swapped in class_captions(mirrored)
        assert parse(swapped).classes == (mirrored,)


def test_unsided_captions_survive_the_swap_unchanged():
    for cls in ("vc-open", "vc-closed", "throat"):
        assert [swap_side_text(c) for c in class_captions(cls)] == class_captions(cls)


@pytest.mark.parametrize("text,swapped", [
    ("left ear", "right ear"),
    ("Left ear", "Right ear"),
    ("LEFT EAR", "RIGHT EAR"),
    ("left-sided nasal polyp", "right-sided nasal polyp"),
    ("L ear and R TM", "R ear and L TM"),
    ("Lt. ear canal", "Rt. ear canal"),
    ("otoscopy AD", "otoscopy AS"),
    ("otoscopy AS, wax", "otoscopy AD, wax"),
    ("otoscopy AU", "otoscopy AU"),
    ("cleft palate on the right", "cleft palate on the left"),
    ("leftover debris", "leftover debris"),
    ("brighter light", "brighter light"),
    ("the L is a letter", "the L is a letter"),  # L/R only as a side before a site
    ("the left vocal cord and the right one", "the right vocal cord and the left one"),
])
def test_swap_side_text(text, swapped):
    assert swap_side_text(text) == swapped


def test_swap_side_text_is_an_involution():
    for cls in CLASSES:
        for caption in class_captions(cls):
            assert swap_side_text(swap_side_text(caption)) == caption


def test_swap_side_label():
    assert swap_side_label("ear-left") == "ear-right"
    assert swap_side_label("nose-right") == "nose-left"
    assert [swap_side_label(c) for c in ("vc-open", "vc-closed", "throat")] == ["vc-open", "vc-closed", "throat"]


def test_class_description():
    assert class_description("ear-left") == "left ear"
    assert class_description("vc-closed") == "closed vocal cords"
    assert len({class_description(c) for c in CLASSES}) == len(CLASSES)
    with pytest.raises(ValueError):
        class_captions("kidney")


def test_real_entrep_descriptions_parse_compatibly_with_their_labels():
    """Each of the 71 official descriptions whose image has a class must keep that class compatible."""
    t2i = json.loads(need_entrep(T2I_JSON).read_text())
    cls = json.loads(need_entrep(T2I_JSON.with_name("cls.json")).read_text())
    labelled = {text: cls[img] for text, img in t2i.items() if img in cls}
    assert len(labelled) >= 30
    for text, label in labelled.items():
        assert label in parse(text).classes, (text, label)
    located = [text for text in t2i if parse(text).site is not None]
    assert len(located) >= len(t2i) - 3  # only "normal"-like texts name no site
