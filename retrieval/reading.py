"""Reading a description as a clinician writes it: what is sought, with the negatives and the typos handled.

A clinic note is not a query. It has a history, sections ("Ears:", "Nose:"), normal and negated findings
("tympanic membranes intact", "no polyps", "nasal cavities patent bilaterally") and, usually, one request
sentence ("Please find images of the glottis with a lesion on the right vocal fold"). Searching every part of
it found nose images for a larynx request (issue 23). `read` returns the focus: the text the lexicon parses
and the towers search.

- The request sentence decides what is searched; history and the other sections only add context (when the
  request names no site, the positive findings of the examination stand in for it).
- Negation, ConText-style: a pre-trigger ("no", "without", "negative for", ...) negates to the end of its
  clause and through a comma list that names no new site ("no polyps, discharge or masses"); a normal word
  ("normal", "intact", "clear", "patent", "unremarkable", "not examined") removes its whole clause, region
  included, unless a later clause of the sentence gives that region a positive finding ("the tympanic
  membrane is intact but thickened"). A negated or normal part is never a query, so never a filter either.
- A negated state with a degree ("do not close completely", "not fully open") is that state, partly; the phase
  a negated part is said in ("no lesion on phonation") still names the phase. A deviation's direction
  ("septum deviated to the left") is no side once the focus names the cavity's side ("right nasal cavity").
- A section header that names a site scopes the sentences under it that name none ("Ears: right wax").
- Typos are corrected against the lexicon's vocabulary (symspellpy's edit-distance lookup); a word that is a
  real English word (symspellpy's frequency dictionary) is never corrected, and a correction is kept only
  when one vocabulary word is closest. Lay words ("voice box", "earhole") are read as their clinical word.

Why hand rules and not medspaCy's ConText: measured on this machine, `import medspacy` took 5.4 s, building
its pipeline 1.2 s and each note 30-40 ms, and out of the box it did not negate "tympanic membranes intact"
or "nasal cavities patent" nor find "Ears:" as a section; negspacy cannot be installed beside it (pip:
conflicting dependencies). The rules below take about 18 ms for a 900-character note and 1 ms for a short
query (plus about 0.25 s once per process to load the English word list), and are tested one by one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

from retrieval import lexicon

# The lexicon's plain words that typos are corrected to (tests check that the lexicon reads each of them).
VOCAB = (
    "left", "right", "bilateral", "ear", "ears", "eardrum", "tympanic", "membrane", "canal", "auditory", "otitis",
    "cerumen", "wax", "nose", "nasal", "nostril", "septum", "septal", "turbinate", "turbinates", "polyp",
    "polyps", "sinus", "meatus", "adenoid", "adenoids", "nasopharynx", "throat", "tonsil", "tonsils", "uvula",
    "palate", "tongue", "oropharynx", "pharynx", "larynx", "laryngeal", "vocal", "cord", "cords", "fold", "folds",
    "glottis", "glottic", "epiglottis", "arytenoid", "arytenoids", "perforation", "perforated", "discharge",
    "mucus", "erythema", "edema", "oedema", "swelling", "swollen", "redness", "inflamed", "lesion", "nodule",
    "cyst", "papilloma", "leukoplakia", "otorrhea", "abducted", "adducted", "phonation", "closed", "open",
    "closure", "retraction", "retracted", "hypertrophy", "enlarged", "deviation", "deviated", "crusting",
    "bleeding", "foreign", "debris", "scarring", "cholesteatoma", "fungal", "infection",
    "otorrhoea", "oedematous", "haemorrhage", "tympanosclerosis",
)

# Lay and common misspelt phrases, read as the lexicon's word (shown like a typo correction).
LAY = {
    "voice box": "larynx", "voicebox": "larynx", "adam's apple": "larynx", "windpipe": "larynx",
    "vocal chords": "vocal cords", "vocal chord": "vocal cord", "voice cords": "vocal cords",
    "earhole": "ear canal", "ear hole": "ear canal", "lughole": "ear canal", "ear passage": "ear canal",
    "hole in the eardrum": "perforated eardrum", "hole in the ear drum": "perforated eardrum",
    "hole in the drum": "perforated eardrum", "burst eardrum": "perforated eardrum",
    "nose hole": "nostril", "nose holes": "nostrils", "inside of the nose": "nasal cavity",
    "back of the mouth": "oropharynx", "back of the throat": "oropharynx", "roof of the mouth": "palate",
    "snot": "mucus", "bogey": "crusting", "lump": "mass", "growth": "mass", "gunk": "discharge",
    "breathing in": "inspiration", "saying eee": "phonation", "saying ee": "phonation", "humming": "phonation",
    "talking": "phonation", "speaking": "phonation", "making a sound": "phonation",
}
_LAY_RX = re.compile(r"(?<![A-Za-z0-9'])(" + "|".join(re.escape(k).replace(r"\ ", r"[\s-]+")
                                                      for k in sorted(LAY, key=len, reverse=True))
                     + r")(?![A-Za-z0-9])", re.I)

_WORD_RX = re.compile(r"(?<![A-Za-z0-9'])[A-Za-z]{3,}(?![A-Za-z0-9'])")

_REQUEST_RX = re.compile(
    r"\b(?:please\s+)?(?:(?:can|could|would)\s+you\s+)?(?:kindly\s+)?"
    r"(?:show(?:\s+me)?|find(?:\s+me)?|retrieve|get(?:\s+me)?|pull\s+up|display|search(?:\s+for)?|look(?:ing)?\s+for"
    r"|(?:i|we)\s+(?:need|want|would\s+like)|need|want|requesting|request)\b"
    r"(?:\s+(?:some|any|the|all|similar|matching|reference|example|endoscopic|endoscopy|representative))*"
    r"(?:\s+(?:images?|pictures?|photos?|views?|frames?|examples?|endoscopies|scans?)(?:\s+(?:of|showing|with|from))?)?"
    r"\s*:?\s*", re.I)
_REQUEST_HEAD = re.compile(r"^\W*(?:please\b|(?:can|could|would)\s+you\b|kindly\b|(?:i|we)\s+(?:need|want|would)\b"
                           r"|looking\s+for\b|need\b|show\b|find\b|retrieve\b|search\b|request\b)", re.I)

_PRE_NEG = re.compile(
    r"(?<![A-Za-z0-9])(?:no(?:\s+(?:evidence|sign|signs)\s+of)?|not|without|absence\s+of|absent|negative\s+for"
    r"|free\s+of|denies|denied|nor|never)(?![A-Za-z0-9])", re.I)
_NORMAL = re.compile(
    r"(?<![A-Za-z0-9])(?:normal(?:ly)?|unremarkable|intact|patent|healthy|wnl|within\s+normal\s+limits"
    r"|not\s+(?:examined|assessed|seen|visuali[sz]ed)|nad|(?:clear|fine|ok|okay|good)(?=\s*(?:$|bilaterally|on\s+both|throughout|and\b)))"
    r"(?![A-Za-z0-9])", re.I)
_CLAUSE_RX = re.compile(r"\s*,\s*|\s+(?=(?:but|however|although|though|whereas|except)\b)", re.I)
_LOCATION = re.compile(r"\b(?:in|on|at|from|within|of|behind)\s", re.I)
_CONTRAST = re.compile(r"^(?:but|however|although|though|whereas|except)\b[\s,]*", re.I)
_SENTENCE_RX = re.compile(r"(?<!\b[LRlr])(?<!\b[LRlr]t)\.(?:\s+|$)|[;!?\n]+\s*")
_HEADER_RX = re.compile(r"^\s*([A-Za-z][A-Za-z /&()-]{0,30}?)\s*:\s*")
_HISTORY_HEADERS = re.compile(r"^(?:history|hx|hpi|pmh|pmhx|background|complaint|presenting complaint|c/o|"
                              r"indication|reason for referral|referral|medications?|allergies|social|family|plan|follow[\s-]?up|"
                              r"recommendations?|advice)",
                              re.I)
_HISTORY_SENTENCE = re.compile(r"^\W*(?:\d+[\s-]*(?:year|yr|y)[\s-]*old|(?:a|an|the)\s+\d+|patient\s+(?:presents|"
                               r"reports|complains|is|was|has)|presents|presenting|complains|c/o|history\s+of|hx\s+of|"
                               r"referred|previous|prior|known|s/p|since|for\s+the\s+(?:past|last)|he\s|she\s|they\s)",
                               re.I)

# A negated state verb with a degree ("do not close completely", "not fully open") is a partial state: the
# image is of that phase, with a gap. It is read as "incompletely close" before negation is looked at.
_DEGREE = r"(?:fully|completely|entirely|totally|quite|properly|adequately|wholly)"
_STATE_VERB = r"(?:open(?:s|ed|ing)?|clos(?:e|es|ed|ing)|adduct\w*|abduct\w*|approximat\w*|meet)"
_NOT = r"(?:(?:do|does|did|is|are|was|were)\s+not|(?:do|does|did|is|are|was|were)n't|not)"
_PARTIAL_RX = re.compile(rf"(?<![A-Za-z0-9]){_NOT}\s+(?:{_DEGREE}\s+({_STATE_VERB})|({_STATE_VERB})\s+{_DEGREE})"
                         r"(?![A-Za-z0-9])", re.I)
# The phase a negated part is said in ("do not close on phonation") still names the image's phase.
_PHASE_RX = re.compile(r"(?<![A-Za-z0-9])(?:on|during|with|in)\s+(?:quiet\s+)?(?:phonation|inspiration|expiration"
                       r"|respiration|breathing|inhalation)(?![A-Za-z0-9])", re.I)
# "deviated to the left" says where the septum points, not which side is imaged, once another side is named.
_DIRECTION_RX = re.compile(r"(?<![A-Za-z0-9])((?:deviat|convex|bow|buckl|shift|displac|spur|curv)\w*\s+"
                           r"(?:[\w-]+\s+){0,3}?)(?:to(?:wards?)?|toward)\s+(?:the\s+)?(left|right)(?![A-Za-z0-9])",
                           re.I)


@dataclass(frozen=True)
class Correction:
    """One word (or lay phrase) read as another: shown once to the user and kept in the trace."""

    word: str
    read_as: str

    def __str__(self) -> str:
        return f"read '{self.word}' as '{self.read_as}'"


@dataclass(frozen=True)
class Reading:
    """What a description asks for: `focus` is what the lexicon parses and the towers search."""

    text: str
    focus: str
    corrections: tuple[Correction, ...] = ()
    negated: tuple[str, ...] = ()  # clauses read as negated or normal: never a query, never a filter
    context: tuple[str, ...] = ()  # history and other text that only adds context
    request: bool = False  # whether a request sentence decided the focus


@lru_cache(maxsize=1)
def _english() -> frozenset[str]:
    """The 82,765 words of symspellpy's English frequency dictionary: a real word is never 'corrected'."""
    import importlib.resources

    path = importlib.resources.files("symspellpy") / "frequency_dictionary_en_82_765.txt"
    return frozenset(line.split(" ", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())


@lru_cache(maxsize=1)
def _speller():
    from symspellpy import SymSpell

    sym = SymSpell(max_dictionary_edit_distance=2, prefix_length=7)
    for word in VOCAB:
        sym.create_dictionary_entry(word, 1)
    return sym


def _known_to_lexicon(word: str) -> bool:
    return bool(lexicon.parse_plain(word).classes != lexicon.CLASSES or lexicon.parse_plain(word).findings)


def correct_word(word: str) -> str | None:
    """The vocabulary word a typo stands for, or None: real words, lexicon words and unclear cases stay."""
    from symspellpy import Verbosity

    low = word.lower()
    if len(low) < 3 or low in VOCAB or low in _english():
        return None
    known = _known_to_lexicon(low)  # "perforaton" is read already: corrected only when one letter is off
    found = _speller().lookup(low, Verbosity.ALL, max_edit_distance=1 if len(low) <= 5 or known else 2)
    if not found:
        return None
    best = min(s.distance for s in found)
    closest = [s.term for s in found if s.distance == best]
    if len(closest) != 1 or closest[0][0] != low[0]:
        return None
    fix = closest[0]
    if known and low.startswith(fix) and low[len(fix):] in ("s", "es", "ed", "ing", "al", "ar", "ous"):
        return None  # an inflection the lexicon reads, not a typo
    return fix.capitalize() if word[0].isupper() else fix


def correct(text: str) -> tuple[str, tuple[Correction, ...]]:
    """The text with lay phrases and typos read as the lexicon's words, and each correction once."""
    fixes: dict[tuple[str, str], Correction] = {}

    def lay(m: re.Match) -> str:
        key = re.sub(r"[\s-]+", " ", m.group(1).lower())
        fixes.setdefault((m.group(1).lower(), LAY[key]), Correction(m.group(1), LAY[key]))
        return LAY[key]

    def typo(m: re.Match) -> str:
        fix = correct_word(m.group(0))
        if fix is None:
            return m.group(0)
        fixes.setdefault((m.group(0).lower(), fix.lower()), Correction(m.group(0), fix))
        return fix

    out = _WORD_RX.sub(typo, _LAY_RX.sub(lay, text))
    return out, tuple(fixes.values())


def _names_site(text: str) -> bool:
    return lexicon.parse_plain(text).site is not None or bool(lexicon.site_mentions(text))


def _has_finding(text: str) -> bool:
    p = lexicon.parse_plain(text)
    return bool([f for f in p.findings if f != "normal"]) or p.state is not None


def _header_adds(header: str, part: str) -> bool:
    """Whether a section header says where a sentence is that does not say it itself (site or side)."""
    head = lexicon.parse_plain(header)
    return ((_names_site(header) and not _names_site(part))
            or (head.side in ("left", "right") and lexicon.parse_plain(_DIRECTION_RX.sub(r"\1", part)).side is None))


def _location(span: str) -> str | None:
    """The place a negated finding is said to be absent from ("in the right ear"), the shortest that names a site."""
    for m in reversed(list(_LOCATION.finditer(span))):
        if _names_site(span[m.start():]):
            return span[m.start():].strip()
    return None


def _lacks_place(clause: str, dropped: list[tuple[str, str | None]]) -> bool:
    """Whether a positive clause needs the site (or side) of a negated part of its sentence to say where it is."""
    if not _names_site(clause):
        return True
    return lexicon.parse_plain(clause).side is None and any(lexicon.parse_plain(d).side for d, _ in dropped)


def _clauses(sentence: str) -> tuple[list[str], list[str]]:
    """(kept, negated) parts of one sentence, ConText-style (see the module docstring)."""
    kept: list[tuple[str, bool]] = []  # (text, names a site)
    negated: list[str] = []
    dropped_sites: list[tuple[str, str | None]] = []  # (where a negated part is, its entry in `negated`)
    carrying = False  # a pre-trigger's scope runs on through a comma list that names no new site
    clauses = [c.strip() for c in _CLAUSE_RX.split(sentence) if c and c.strip()]
    for clause in clauses:
        if _CONTRAST.match(clause):
            carrying = False  # "but", "however": the end of a negation's scope
            clause = _CONTRAST.sub("", clause, count=1)
        site = _names_site(clause)
        if carrying and not site and not _PRE_NEG.search(clause) and not _NORMAL.search(clause):
            negated.append(clause)
            continue
        carrying = False
        if _NORMAL.search(clause):
            negated.append(clause)
            if site:
                dropped_sites.append((clause, clause))
            continue
        m = _PRE_NEG.search(clause)
        if m:
            negated.append(clause[m.start():])
            carrying = True
            where = _location(clause[m.start():])
            if where:  # "no perforation in the right ear": the perforation is negated, not the ear
                dropped_sites.append((where, None))
            phase = _PHASE_RX.search(clause, m.start())
            before = re.sub(r"\s+(?:do|does|did|is|are|was|were)$", "", clause[: m.start()].strip(), flags=re.I)
            clause = " ".join(p for p in (before, phase and phase.group(0)) if p)
            if not clause or not re.search(r"[A-Za-z]", clause):
                continue
            site = _names_site(clause)
        if dropped_sites and _has_finding(clause) and not any(s for _, s in kept) and _lacks_place(clause, dropped_sites):
            kept.extend((d, True) for d, _ in dropped_sites)  # "the TM is intact but thickened": keep the TM
            negated = [n for n in negated if n not in {entry for _, entry in dropped_sites}]
            dropped_sites = []
        kept.append((clause, site))
    if not negated:
        return [sentence], []  # nothing negated: the sentence as written
    return [k for k, _ in kept], negated


def _sentences(text: str) -> list[tuple[str | None, str]]:
    """(section header, sentence) pairs; a header names the section that each following sentence is in."""
    out, header = [], None
    for raw in _SENTENCE_RX.split(text):
        sentence = (raw or "").strip()
        m = _HEADER_RX.match(sentence)
        if m and len(m.group(1).split()) <= 4:
            header = m.group(1).strip()
            sentence = sentence[m.end():].strip()
        if sentence:
            out.append((header, sentence))
    return out


def _strip_request(sentence: str) -> str:
    m = _REQUEST_RX.search(sentence)
    rest = sentence[m.end():] if m else sentence
    return re.sub(r"^(?:of|showing|with)\s+", "", rest.strip(), flags=re.I).strip(" .")


def _read(text: str) -> Reading:
    requests, findings, history, negated = [], [], [], []
    for header, sentence in _sentences(text):
        if _REQUEST_HEAD.search(sentence) or (header and header.lower().startswith("request")):
            kept, neg = _clauses(_strip_request(sentence)) if _strip_request(sentence) else ([], [])
            requests.append(", ".join(kept))
            negated += neg
            continue
        is_history = bool(header and _HISTORY_HEADERS.match(header)) or bool(_HISTORY_SENTENCE.match(sentence))
        kept, neg = _clauses(sentence)
        negated += neg
        if not kept:
            continue
        part = ", ".join(kept)
        if header and not is_history and _header_adds(header, part):
            part = f"{header} {part}"  # "Ears: right perforation" is a perforation of the right ear
        (history if is_history else findings).append(part)
    requests = [r for r in requests if r]
    if requests and any(_names_site(r) or _has_finding(r) for r in requests):
        focus = ", ".join(requests)
        if not any(_names_site(r) for r in requests) and findings:
            focus = ", ".join([focus, *findings])
        return Reading(text, focus, (), tuple(negated), tuple(history + findings), True)
    if findings or history:
        return Reading(text, ", ".join(findings or history), (), tuple(negated), tuple(history if findings else ()))
    fallback = _PRE_NEG.split(text)[0].strip(" ,.;:") or text  # only negatives and normals: the text itself
    return Reading(text, fallback, (), tuple(negated))


def _partial_states(text: str) -> str:
    """"do not close completely" -> "incompletely close": a degree of a state, not its absence."""
    return _PARTIAL_RX.sub(lambda m: "incompletely " + (m.group(1) or m.group(2)), text)


def _directions(focus: str) -> str:
    """A deviation's direction ("septum deviated to the left") is no side once the focus names a side
    elsewhere ("right nasal cavity, ..."): it is written "leftward", which the lexicon reads as no side."""
    if not _DIRECTION_RX.search(focus):
        return focus
    rest = lexicon.parse_plain(_DIRECTION_RX.sub(r"\1", focus))  # the focus without the directions
    if not any(p.side in ("left", "right") for p in rest.parts or (rest,)):
        return focus
    return _DIRECTION_RX.sub(lambda m: m.group(1) + m.group(2) + "ward", focus)


@lru_cache(maxsize=4096)
def read(text: str) -> Reading:
    """Read a description: corrections first, then the request, sections and negation decide the focus."""
    corrected, corrections = correct(text)
    r = _read(_partial_states(corrected))
    focus = _directions(r.focus.strip()) or corrected
    return Reading(text, focus, corrections, r.negated, r.context, r.request)


def parse(text: str) -> "lexicon.ParsedQuery":
    """Parse a description as read here (its request, no negated or normal part, typos corrected); a text
    naming several sites keeps one parse per focused query in `parts`. `lexicon.parse_plain` parses as is."""
    reading = read(text)
    parsed = lexicon.parse_plain(reading.focus)
    return replace(parsed, corrections=reading.corrections) if reading.corrections else parsed


def split_queries(text: str) -> list[str]:
    """The focused queries of a description as read: its request, without the negated or normal parts, typos
    corrected; one query per image sought (`lexicon.split_plain`)."""
    return lexicon.split_plain(read(text).focus)
