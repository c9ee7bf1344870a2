"""Reading clinical text (retrieval/reading.py): the request decides, negatives and normals never become a query
or a filter, section headers scope, "bilateral" is no side, and typos are corrected without touching real words."""
from __future__ import annotations

import pytest

from agent.constraints import filters_of
from agent.plan import plan_description
from retrieval.lexicon import parse_plain
from retrieval.reading import parse, split_queries
from retrieval.reading import LAY, VOCAB, correct, correct_word, read

# history, negatives and normals in every section, then the request: the pattern of issue 23's 898-character note
NOTE = (
    "History: 58-year-old man, ex-smoker, referred by his GP with four months of progressive "
    "hoarseness, vocal fatigue by the end of the day and occasional throat clearing. No dysphagia, no odynophagia, "
    "no weight loss. Previous septoplasty in 2015 for a left septal spur; he reports nasal blockage in "
    "the past, now resolved. Stopped smoking in 2019. Examination: Ears: tympanic membranes intact bilaterally, "
    "external auditory canals clear, no discharge, no retraction. Nose: nasal cavities patent bilaterally, septum "
    "midline, no polyps, no purulent secretions in the middle meatus, inferior turbinates normal. Oral cavity and "
    "oropharynx: tonsils normal size, no lesions on the tongue base, uvula central. Neck: no "
    "palpable lymphadenopathy, thyroid unremarkable. Flexible laryngoscopy under topical anaesthesia. "
    "Please find images of the glottis with a lesion on the right vocal fold and "
    "incomplete closure.")


def test_the_note_is_the_issue_pattern():
    assert 850 <= len(NOTE) <= 950


def test_the_request_sentence_decides_what_is_searched():
    r = read(NOTE)
    assert r.request and r.focus == "the glottis with a lesion on the right vocal fold and incomplete closure"
    p = parse(NOTE)
    assert (p.site, p.state) == ("larynx", "closed") and set(p.classes) <= {"vc-open", "vc-closed"}
    assert split_queries(NOTE) == [r.focus]
    calls = plan_description(NOTE)
    assert len(calls) == 1 and calls[0]["args"]["region"] == "larynx"
    assert "polyp" not in calls[0]["args"]["query"] and "side" not in calls[0]["args"]  # the folds carry no side
    assert filters_of(NOTE) == {"region": "larynx", "state": "closed"}
    assert any("tympanic membranes intact" in n for n in r.negated)
    assert any("nasal cavities patent" in n for n in r.negated)


@pytest.mark.parametrize("text,focus", [
    ("right ear without discharge", "right ear"),
    ("no polyps, discharge or masses. Left ear wax.", "Left ear wax"),  # the scope runs through the list
    ("no perforation, but white discharge", "white discharge"),  # "but" ends it
    ("Left TM: no perforation. Right TM: retracted.", "Right TM retracted"),
    ("the tympanic membrane is intact but thickened", "the tympanic membrane is intact but thickened"),
    ("Nasal cavities patent bilaterally. Left tonsil enlarged.", "Left tonsil enlarged"),
    ("Oral cavity clear. Mucus in the left nasal cavity.", "Mucus in the left nasal cavity"),
    ("clear discharge from the right ear", "clear discharge from the right ear"),  # "clear" as an adjective
    ("left tympanic membrane intact", "left tympanic membrane intact"),  # only normal: a normal eardrum is sought
    ("Larynx not examined. Right ear: otorrhoea.", "Right ear otorrhoea"),
])
def test_negation_scope(text, focus):
    assert read(text).focus == focus


def test_a_negated_or_normal_region_is_never_a_filter():
    assert filters_of("Ears: normal. Nose: patent, no polyps. Throat: tonsillitis.") == {"region": "throat"}
    assert filters_of("No nasal polyps in the left nasal cavity. Right ear wax.") == {"region": "ear", "side": "right"}
    text = "Right tympanic membrane intact. Please show the left ear with wax."
    assert filters_of(text) == {"region": "ear", "side": "left"}
    assert parse("No discharge from the right ear. Please find images of the throat.").site == "throat"


@pytest.mark.parametrize("text,filters", [
    ("There is no evidence of perforation in the right ear but there is wax.", {"region": "ear", "side": "right"}),
    ("the left is fine, the right ear has a discharge", {"region": "ear", "side": "right"}),
    ("Nose: left side polyp, right side normal.", {"region": "nose", "side": "left"}),
    ("otoscopy AS: wax, AD: clear", {"region": "ear", "side": "left"}),
    ("pharynx is red, larynx normal", {"region": "throat"}),
    ("Plan: review in 6 weeks. Findings: throat erythema.", {"region": "throat"}),
])
def test_the_negated_finding_goes_but_its_place_stays_when_the_sentence_goes_on(text, filters):
    assert filters_of(text) == filters


def test_history_only_adds_context():
    r = read("History: recurrent left otitis media as a child. Findings: right nasal polyp.")
    assert r.focus == "right nasal polyp" and not r.request
    assert "recurrent left otitis media as a child" in r.context
    assert parse("A 40-year-old woman with left ear pain for a week. Exam: red bulging right eardrum.").side == "right"


def test_a_request_without_a_site_takes_the_site_from_the_findings():
    p = parse("Left tympanic membrane: central perforation. Please find similar images of this perforation.")
    assert (p.site, p.side) == ("ear", "left")


def test_section_headers_scope_the_sentences_under_them():
    assert (parse("Ears: right perforation.").site, parse("Ears: right perforation.").side) == ("ear", "right")
    p = parse("Nose: left-sided crusting. Ears: normal.")
    assert (p.site, p.side) == ("nose", "left")
    assert parse("AD: wax").side == "right"


@pytest.mark.parametrize("text", ["bilateral nasal polyps", "nasal polyps bilaterally", "wax in both ears",
                                  "Nose: polyps bilaterally. Please find images of the nose."])
def test_bilateral_is_never_a_side(text):
    assert "side" not in filters_of(text)
    assert parse(text).side in (None, "bilateral")
    assert all("side" not in c["args"] for c in plan_description(text))


@pytest.mark.parametrize("typo,fix", [("rigth", "right"), ("leftt", "left"), ("nasall", "nasal"), ("polip", "polyp"),
                                      ("eer", "ear"), ("perforaton", "perforation"), ("tonsills", "tonsils"),
                                      ("Rigth", "Right"), ("laryngx", "larynx"), ("ephiglottis", "epiglottis")])
def test_typos_are_read_as_the_lexicon_word(typo, fix):
    assert correct_word(typo) == fix


@pytest.mark.parametrize("word", ["left", "lip", "ear", "near", "tear", "clear", "year", "bear", "right", "night",
                                  "light", "nasal", "polyps", "perforations", "tonsillar", "otorrhoea", "cords",
                                  "chords", "pale", "rest", "tone", "hear"])
def test_real_words_are_never_corrected(word):
    assert correct_word(word) is None
    assert correct(f"the {word} is seen")[1] == ()


def test_corrections_are_shown_once_and_carried_by_the_parse():
    p = parse("rigth eer drum perforaton, rigth side")
    assert (p.site, p.side) == ("ear", "right") and "perforation" in p.findings
    assert [str(c) for c in p.corrections] == ["read 'rigth' as 'right'", "read 'eer' as 'ear'",
                                               "read 'perforaton' as 'perforation'"]
    assert parse("right ear wax").corrections == ()


@pytest.mark.parametrize("text,expected", [
    ("voice box while breathing in", ("larynx", None, "open")),
    ("vocal chords closed", ("larynx", None, "closed")),
    ("hole in the eardrum on the left", ("ear", "left", None)),
    ("right earhole is itchy", ("ear", "right", None)),
    ("back of the mouth looks red", ("throat", None, None)),
    ("snot in the left nose hole", ("nose", "left", None)),
])
def test_lay_words(text, expected):
    p = parse(text)
    assert (p.site, p.side, p.state) == expected and p.corrections


def test_every_vocabulary_word_is_the_lexicons():
    """The lexicon stays the vocabulary: each word typos are corrected to, and each lay reading, is read by it."""
    from retrieval import lexicon

    terms = [t for table in (lexicon._SITE_TERMS, lexicon._FINDING_TERMS) for ts in table.values() for t in ts]
    for word in [*VOCAB, *LAY.values()]:
        p = parse_plain(word)
        in_a_term = any(word in t for t in terms)  # "membrane" of "tympanic membranes?", "cord" of "vocal cords?"
        assert p.site or p.side or p.state or p.findings or in_a_term, word


@pytest.mark.parametrize("text,filters", [
    ("vocal cords do not close completely on phonation", {"region": "larynx", "state": "closed"}),
    ("glottis not fully open", {"region": "larynx", "state": "open"}),
    ("the vocal folds don't fully close", {"region": "larynx", "state": "closed"}),
    ("cords are not completely abducted", {"region": "larynx", "state": "open"}),
    ("vocal cords do not close on phonation", {"region": "larynx", "state": "closed"}),  # the phase stays
    ("vocal cords open during quiet breathing with no lesion", {"region": "larynx", "state": "open"}),
])
def test_a_negated_state_with_a_degree_or_a_phase_keeps_the_state(text, filters):
    """"not fully open" is a partly open glottis, not a closed or unknown one; "on phonation" names the phase."""
    assert filters_of(text) == filters
    assert all(c["args"].get("state") == filters["state"] for c in plan_description(text))


def test_a_negated_state_without_a_degree_or_phase_still_says_nothing():
    assert "state" not in filters_of("the glottis does not open")


@pytest.mark.parametrize("text,side", [
    ("right nasal cavity, septum deviated to the left", "right"),
    ("left nasal cavity with septal deviation towards the right", "left"),
    ("deviated septum to the left, right nasal cavity polyp", "right"),
    ("deviation of the septum towards the right in the left nasal cavity", "left"),
    ("Left nose: septum deviated to the right", "left"),
    ("septum deviated to the left", "left"),  # the only side named: kept, as before
])
def test_a_deviations_direction_is_not_the_imaged_side(text, side):
    """The side of the cavity is the request; "deviated to the left" only says where the septum points."""
    assert filters_of(text) == {"region": "nose", "side": side}
    assert {c["args"].get("side") for c in plan_description(text)} == {side}
