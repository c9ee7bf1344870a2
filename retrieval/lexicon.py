"""The ENT lexicon: what a clinical description says about site, side and vocal-fold state.

Half of the seven ENTRep classes differ only by side, and the towers find side hard (DESIGN.md §4), so the
words that name a side, a site or an open/closed glottis are spelled out here once. Training uses them for
class captions and for the side swap that must accompany a horizontal flip; the agent uses them to plan
focused queries and to judge candidates offline. Pure Python on purpose: no model, no data, deterministic.

Decisions the ENTRep annotations settle (annotations/.../t2i.json with cls.json):
- the nasopharynx, adenoids and choanae are seen through the nose: every labelled "nasopharynx"
  description is a nose-left/right image, so they are nose terms, not throat terms;
- the pyriform sinuses and the hypopharynx are seen on laryngoscopy ("mucus in the left pyriform sinus" is
  vc-closed), so they are larynx terms, and "pyriform sinus" wins over the nasal word "sinus";
- "incomplete glottic closure" describes a phonation (vc-closed) image: any "glottic closure" is closed;
- the vocal folds and the throat carry no side in the classes: a side named for them constrains nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


CLASSES = ("nose-right", "nose-left", "ear-right", "ear-left", "vc-open", "vc-closed", "throat")
SITES = ("ear", "nose", "throat", "larynx")

_CLASS_SITE = {
    "nose-right": "nose", "nose-left": "nose", "ear-right": "ear", "ear-left": "ear",
    "vc-open": "larynx", "vc-closed": "larynx", "throat": "throat",
}
_CLASS_SIDE = {"nose-right": "right", "nose-left": "left", "ear-right": "right", "ear-left": "left"}
_CLASS_STATE = {"vc-open": "open", "vc-closed": "closed"}
_SIDED_SITES = ("ear", "nose")


def class_site(cls: str) -> str | None:
    """ear / nose / throat / larynx for an ENTRep class, None for another label."""
    return _CLASS_SITE.get(cls)


def class_side(cls: str) -> str | None:
    """left / right for a sided class (ear, nose), else None."""
    return _CLASS_SIDE.get(cls)

# A term is a regex fragment; a literal space inside it matches any run of spaces or hyphens.
_SITE_TERMS: dict[str, tuple[str, ...]] = {
    "ear": (
        r"ears?", r"auricular", r"auricles?", r"pinnae?", r"oto(?:scopy|scopic|endoscopy|endoscopic)",
        r"tympanic membranes?", r"tympanic", r"tms?", r"(?:ear[\s-]*)?drums?", r"external auditory (?:canals?|meatus)",
        r"auditory (?:canals?|meatus)", r"eacs?", r"ear canals?", r"middle ears?", r"otitis(?: media| externa)?",
        r"otorrh(?:o)?ea", r"otomycosis", r"cerumen", r"ceruminous", r"(?:ear)?wax", r"cone of light",
        r"light reflex", r"malleus", r"malleolar", r"umbo", r"pars (?:flaccida|tensa)", r"attic",
        r"(?:antero|postero)[\s-]?(?:inferior|superior) quadrants?", r"quadrants?", r"tympanosclerosis",
        r"myringosclerosis", r"myringotomy", r"grommets?", r"tympanostomy tubes?", r"ventilation tubes?",
        r"mastoid\w*", r"cholesteatoma", r"tragus",
    ),
    "nose": (
        r"noses?", r"nasal(?:ly)?", r"nasal cavit(?:y|ies)", r"nasal septum", r"sept(?:um|al)", r"turbinates?",
        r"conchae?", r"concha bullosa", r"meat(?:us|al)", r"middle meatus", r"nostrils?", r"nares", r"naris",
        r"sinus(?:es)?", r"paranasal", r"sinonasal", r"sinusitis", r"rhinitis", r"rhino\w*", r"uncinate(?: process)?",
        r"ethmoid\w*", r"bulla", r"sphenoid\w*", r"maxillary", r"osteomeatal complex", r"ostiomeatal complex",
        r"choanae?", r"choanal", r"nasopharyn\w*", r"adenoids?", r"adenoidal", r"torus tubarius",
        r"eustachian tubes?", r"epistaxis", r"columella", r"nasal polyps?",
    ),
    "throat": (
        r"throats?", r"pharynx", r"pharyn(?:geal|gitis)", r"oropharyn\w*", r"tonsils?", r"tonsill\w*",
        r"uvula\w*", r"tongue base", r"base of (?:the )?tongue", r"tongue", r"lingual", r"palat\w*",
        r"oral cavity", r"mouth", r"fauc\w*", r"posterior pharyngeal wall",
    ),
    "larynx": (
        r"vocal (?:cords?|folds?)", r"false vocal (?:cords?|folds?)", r"vcs?", r"glott\w*", r"subglott\w*",
        r"supraglott\w*", r"laryn\w*", r"endolaryn\w*", r"epiglott\w*", r"arytenoids?", r"arytenoid cartilages?",
        r"interarytenoid\w*", r"aryepiglottic\w*", r"(?:anterior|posterior) commissure", r"commissure",
        r"ventricular (?:folds?|bands?|obliteration)", r"(?:laryngeal )?ventricles?", r"vallecul\w*",
        r"p[iy]riform (?:sinus(?:es)?|foss(?:a|ae)|recess(?:es)?)", r"hypopharyn\w*", r"postcricoid", r"cricoid",
        r"reinke\w*", r"abduct\w*", r"adduct\w*", r"phonat\w*",
    ),
}

# Ophthalmology-style ear abbreviations; case-sensitive, and ignored in all-caps text where "AS" is a word.
_EAR_ABBREV = {"AD": "right", "AS": "left", "AU": "bilateral"}

_FINDING_TERMS: dict[str, tuple[str, ...]] = {
    "discharge": (r"discharges?", r"otorrh(?:o)?ea", r"rhinorrh(?:o)?ea", r"purulent", r"pus", r"secretions?",
                  r"exudates?", r"mucopurulent"),
    "mucus": (r"mucus", r"mucous", r"mucoid"),
    "perforation": (r"perforat\w*",),
    "erythema": (r"erythema\w*", r"redness", r"red", r"hyperaemi\w*", r"hyperemi\w*", r"inflamed",
                 r"inflammation", r"injected"),
    "edema": (r"o?edema\w*", r"swelling", r"swollen"),
    "polyp": (r"polyps?", r"polypoid", r"polyposis"),
    "wax": (r"(?:ear)?wax", r"cerumen", r"ceruminous"),
    "foreign body": (r"foreign bod(?:y|ies)",),
    "hypertrophy": (r"hypertroph\w*", r"enlarge\w*"),
    "deviation": (r"deviat\w*", r"spurs?"),
    "retraction": (r"retract\w*",),
    "thickening": (r"thicken\w*", r"thick"),
    "pallor": (r"pale", r"pallor"),
    "fungal infection": (r"fung(?:al|us|i)(?: infections?)?", r"otomycosis", r"mycosis"),
    "infection": (r"infect\w*", r"otitis", r"sinusitis", r"rhinitis", r"tonsillitis", r"pharyngitis",
                  r"laryngitis"),
    "debris": (r"debris", r"keratin"),
    "scar": (r"scar(?:s|ring|red)?", r"tympanosclerosis", r"myringosclerosis"),
    "cholesteatoma": (r"cholesteatoma",),
    "mass": (r"mass(?:es)?", r"tumou?rs?", r"lesions?", r"nodules?", r"cysts?", r"papilloma\w*", r"granuloma\w*",
             r"leukoplakia", r"neoplasm\w*"),
    "bleeding": (r"bleed\w*", r"blood", r"ha?emorrhag\w*", r"epistaxis", r"clots?"),
    "crusting": (r"crust\w*",),
    "atrophy": (r"atroph\w*",),
    "ulcer": (r"ulcer\w*",),
    "paralysis": (r"paralysis", r"palsy", r"paresis", r"immobil\w*"),
    "obliteration": (r"obliterat\w*",),
    "ventilation tube": (r"grommets?", r"tympanostomy tubes?", r"ventilation tubes?"),
    "post-surgical": (r"\w+ectomy", r"post[\s-]?operative", r"postsurgical"),
    "normal": (r"normal", r"intact", r"unremarkable"),
}

# Vocal-fold state. Strong words say it on their own; weak ones only where the larynx (or nothing else) is meant.
_STATE_STRONG = {
    "open": (r"abduct\w*",),
    "closed": (r"adduct\w*", r"phonat\w*", r"glottic closure", r"closure of the glottis",
               r"(?:vocal (?:cord|fold) )closure"),
}
_STATE_WEAK = {
    "open": (r"open(?:ed|ing)?", r"apart", r"inspirat\w*", r"inhal\w*", r"breathing", r"respirat\w*"),
    "closed": (r"clos(?:ed|ing|ure)", r"close", r"together"),
}

_NEGATION = re.compile(r"(?<![A-Za-z0-9])(?:no|not|without|absence of|absent|negative for|free of|nor)"
                       r"(?:\s+[\w-]+){0,2}\s*$", re.I)


def _rx(fragment: str) -> str:
    return r"(?<![A-Za-z0-9])(?:" + fragment.replace(" ", r"[\s-]+") + r")(?![A-Za-z0-9])"


def _compile_table(table: dict[str, tuple[str, ...]]) -> list[tuple[re.Pattern, str]]:
    return [(re.compile(_rx(term), re.I), key) for key, terms in table.items() for term in terms]


_SITE_RX = _compile_table(_SITE_TERMS)
_FINDING_RX = _compile_table(_FINDING_TERMS)
_STRONG_RX = _compile_table(_STATE_STRONG)
_WEAK_RX = _compile_table(_STATE_WEAK)
_ANY_SITE = "(?:" + "|".join(t.replace(" ", r"[\s-]+") for ts in _SITE_TERMS.values() for t in ts) + ")"
_ABBREV_RX = re.compile(r"(?<![A-Za-z0-9])(AD|AS|AU)(?![A-Za-z0-9])")

# Side words. "L"/"R"/"Lt"/"Rt" count only right before a site ("L ear", "Rt. TM"); "both" only before a site.
_SIDE_WORD_RX = re.compile(r"(?<![A-Za-z0-9])(left|right)(?![A-Za-z0-9])", re.I)
_SIDE_LETTER_RX = re.compile(r"(?<![A-Za-z0-9])([LR]t?)\.?(?=[\s-]+" + _ANY_SITE + r"(?![A-Za-z0-9]))", re.I)
_BILATERAL_RX = re.compile(
    r"(?<![A-Za-z0-9])(?:bilateral(?:ly)?|both[\s-]+sides|both(?=(?:[\s-]+[\w-]+){0,2}?[\s-]+" + _ANY_SITE
    + r"(?![A-Za-z0-9])))(?![A-Za-z0-9])", re.I)


@dataclass(frozen=True)
class ParsedQuery:
    """What a description pins down; `classes` is the authority when the other fields cannot say it alone."""

    text: str
    site: str | None  # "ear" | "nose" | "throat" | "larynx" | None (nothing, or several sites)
    side: str | None  # "left" | "right" | "bilateral" | None
    state: str | None  # "open" | "closed" | None (vocal folds only)
    findings: tuple[str, ...]  # canonical finding names, in order of first mention, negated ones left out
    classes: tuple[str, ...]  # ENTRep classes compatible with the parse, in CLASSES order (all 7 if nothing known)
    parts: tuple["ParsedQuery", ...] = ()  # one parse per focused query when the text names several sites
    corrections: tuple = ()  # retrieval.reading.Correction: typos and lay words read as the lexicon's words


def _is_shouting(text: str) -> bool:
    """All-caps prose ("LEFT EAR AS SEEN"), where AD/AS/AU are ordinary words, not ear abbreviations."""
    return not any(ch.islower() for ch in text) and len(re.findall(r"[A-Za-z]+", text)) >= 3


def _longest_spans(found: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Non-overlapping mentions, longest first: "pyriform sinus" is larynx, not the nasal "sinus"."""
    found.sort(key=lambda s: (-(s[1] - s[0]), s[0]))
    chosen: list[tuple[int, int, str]] = []
    for span in found:
        if all(span[1] <= c[0] or span[0] >= c[1] for c in chosen):
            chosen.append(span)
    return sorted(chosen)


def _site_spans(text: str) -> list[tuple[int, int, str]]:
    found = [(m.start(), m.end(), site) for rx, site in _SITE_RX for m in rx.finditer(text)]
    if not _is_shouting(text):
        found += [(m.start(), m.end(), "ear") for m in _ABBREV_RX.finditer(text)]
    return _longest_spans(found)


def _sides(text: str) -> set[str]:
    sides = {m.group(1).lower() for m in _SIDE_WORD_RX.finditer(text)}
    sides |= {"left" if m.group(1)[0] in "lL" else "right" for m in _SIDE_LETTER_RX.finditer(text)}
    if not _is_shouting(text):
        sides |= {_EAR_ABBREV[m.group(1)] for m in _ABBREV_RX.finditer(text)}
    if _BILATERAL_RX.search(text):
        sides.add("bilateral")
    return sides


def _state(text: str, larynx_possible: bool) -> str | None:
    strong = {state for rx, state in _STRONG_RX if rx.search(text)}
    if len(strong) == 1:
        return strong.pop()
    if strong or not larynx_possible:
        return None  # both states named outright (ambiguous), or "closed" said of an ear or a nose
    weak = {state for rx, state in _WEAK_RX if rx.search(text)}
    return weak.pop() if len(weak) == 1 else None


def _findings(text: str) -> tuple[str, ...]:
    found = [(m.start(), m.end(), name) for rx, name in _FINDING_RX for m in rx.finditer(text)
             if not _NEGATION.search(text[: m.start()])]
    return tuple(dict.fromkeys(name for _, _, name in _longest_spans(found)))


def _classes_for(sites: list[str], side: str | None, state: str | None) -> tuple[str, ...]:
    if not sites:
        if side in ("left", "right"):
            return tuple(c for c in CLASSES if _CLASS_SIDE.get(c, side) == side)
        return CLASSES
    keep = set()
    for cls in CLASSES:
        site = _CLASS_SITE[cls]
        if site not in sites:
            continue
        if site in _SIDED_SITES and side in ("left", "right") and _CLASS_SIDE[cls] != side:
            continue
        if site == "larynx" and state and _CLASS_STATE[cls] != state:
            continue
        keep.add(cls)
    return tuple(c for c in CLASSES if c in keep)


def classes_for(site: str | None = None, side: str | None = None, state: str | None = None) -> tuple[str, ...]:
    """The ENTRep classes that a site / side / open-closed filter allows (planner filters use this)."""
    if site is not None and site not in SITES:
        raise ValueError(f"unknown region {site!r}; one of {', '.join(SITES)}")
    return _classes_for([site] if site else [], side, state)


@lru_cache(maxsize=4096)
def _parse_simple(text: str) -> ParsedQuery:
    sites = list(dict.fromkeys(site for _, _, site in _site_spans(text)))
    sides = _sides(text)
    side = None
    if "bilateral" in sides or {"left", "right"} <= sides:
        side = "bilateral"
    elif sides:
        side = sides.pop()
    state = _state(text, larynx_possible=not sites or "larynx" in sites)
    if state and not sites:
        sites = ["larynx"]  # "phonation", "abducted", a bare "closed": only the vocal folds open and close
    site = sites[0] if len(sites) == 1 else None
    return ParsedQuery(text, site, side, state, _findings(text), _classes_for(sites, side, state))


def _combine(text: str, parts: list[ParsedQuery]) -> ParsedQuery:
    def common(values):
        values = set(values)
        return values.pop() if len(values) == 1 else None

    site = common(p.site for p in parts)
    side = common(p.side for p in parts)
    if site in _SIDED_SITES and side is None and {p.side for p in parts} >= {"left", "right"}:
        side = "bilateral"
    findings = tuple(dict.fromkeys(f for p in parts for f in p.findings))
    classes = tuple(c for c in CLASSES if any(c in p.classes for p in parts))
    return ParsedQuery(text, site, side, common(p.state for p in parts), findings, classes, tuple(parts))


def parse_plain(text: str) -> ParsedQuery:
    """Parse text as it stands (no reading of requests, negatives or typos); `retrieval.reading.parse` is for
    descriptions."""
    pieces = split_plain(text)
    if len(pieces) == 1:
        return _parse_simple(text)
    return _combine(text, [_parse_simple(p) for p in pieces])



def site_mentions(text: str) -> list[str]:
    """The sites named in the text, in order, longest mention first where they overlap."""
    return [site for _, _, site in _site_spans(text)]


_CLAUSE_SEP = re.compile(
    r"\s*[;,]\s*|(?<!\b[LRlr])(?<!\b[LRlr]t)\.(?:\s+|$)"
    r"|\s+(?:and|with|plus|as well as|also|while|whereas|but|together with)\s+", re.I)



def split_plain(text: str) -> list[str]:
    """Split a description that names several sites or sides into focused queries, one per image sought.

    Clauses (split at punctuation and conjunctions) that name no site belong to the query before them (or the
    first one); a clause with a site starts a new query when its compatible classes differ and it adds a
    finding or another site ("left ear wax and right nasal polyp" -> two), so "edema and erythema of the
    vocal cords" or "wax in the left and the right ear" stay one.
    """
    spans, pos = [], 0
    for m in _CLAUSE_SEP.finditer(text):
        if m.start() > pos:
            spans.append((pos, m.start()))
        pos = m.end()
    if pos < len(text):
        spans.append((pos, len(text)))
    groups: list[list] = []  # [start, end, classes, site]
    pending_start = None
    for start, end in spans:
        clause = _parse_simple(text[start:end])
        located = clause.site is not None or bool(_site_spans(clause.text))
        if groups and (not located or clause.classes == groups[-1][2]
                       or (clause.site == groups[-1][3] and not clause.findings)):
            groups[-1][1] = end
            continue
        if not located:
            pending_start = start if pending_start is None else pending_start
            continue
        groups.append([start if pending_start is None else pending_start, end, clause.classes, clause.site])
        pending_start = None
    if len(groups) <= 1:
        return [text]
    return [text[g[0]:g[1]].strip(" \t\n,;.") for g in groups]


def class_consistency(parsed: ParsedQuery, cls: str | None) -> tuple[float, str]:
    """How well an image of class `cls` fits the parse: 0 on any contradiction, 1 when everything stated matches.

    Each attribute that decides the class (site; side for ear and nose; state for the vocal folds) is matched,
    contradicted or unstated; the score is 0.5 + 0.5 * (matched / deciding attributes), 0 on a contradiction.
    """
    if parsed.parts:
        scored = [(class_consistency(p, cls), p.text) for p in parsed.parts]
        (score, reason), part = max(scored, key=lambda s: s[0][0])
        return score, f"{reason} (for '{part}')"
    if cls is None:
        return 0.5, "the image's class is unknown"
    if cls not in _CLASS_SITE:
        return 0.5, f"{cls} is not an ENTRep class"
    if parsed.site is None and parsed.side is None and parsed.state is None and parsed.classes == CLASSES:
        return 0.5, "the description names no site, side or state, so consistency is neutral"
    site = _CLASS_SITE[cls]
    if parsed.site is not None and parsed.site != site:
        return 0.0, f"site mismatch: query {parsed.site}, image {cls}"
    if site in _SIDED_SITES and parsed.side in ("left", "right") and parsed.side != _CLASS_SIDE[cls]:
        return 0.0, f"side mismatch: query {parsed.side}, image {cls}"
    if site == "larynx" and parsed.state and parsed.state != _CLASS_STATE[cls]:
        return 0.0, f"state mismatch: query {parsed.state}, image {cls}"
    if cls not in parsed.classes:
        return 0.0, f"mismatch: image {cls} is none of {', '.join(parsed.classes)}"
    side = parsed.side if parsed.side in ("left", "right") else None  # "bilateral" names no one side
    stated = {"site": parsed.site and site, "side": side, "state": parsed.state}
    deciding = ["site"] + (["side"] if site in _SIDED_SITES else []) + (["state"] if site == "larynx" else [])
    matched = [f"{key} {stated[key]}" for key in deciding if stated[key]]
    missing = [key for key in deciding if not stated[key]]
    score = 0.5 + 0.5 * len(matched) / len(deciding)
    either = "; bilateral, so either side fits" if parsed.side == "bilateral" and "side" in missing else ""
    if not matched:
        return score, f"{cls} is compatible, but the description states no {' or '.join(missing)}{either}"
    verb = "matches" if len(matched) == 1 else "match"
    reason = f"{' and '.join(matched)} {verb} {cls}"
    return score, reason + (either or (f"; {' or '.join(missing)} not stated" if missing else ""))


_DESCRIPTIONS = {
    "nose-right": "right nasal cavity", "nose-left": "left nasal cavity", "ear-right": "right ear",
    "ear-left": "left ear", "vc-open": "open vocal cords", "vc-closed": "closed vocal cords", "throat": "throat",
}


def class_description(cls: str) -> str:
    """A plain phrase for a class ("left ear"); a label outside ENTRep reads as itself."""
    return _DESCRIPTIONS.get(cls, cls.replace("-", " ").replace("_", " "))


_SWAP_RX = re.compile(
    r"(?P<word>(?i:(?<![A-Za-z0-9])(?:left|right)(?![A-Za-z0-9])))"
    r"|(?P<letter>(?i:(?<![A-Za-z0-9])[LR]t?(?=\.?[\s-]+" + _ANY_SITE + r"(?![A-Za-z0-9]))))"
    r"|(?P<abbrev>(?<![A-Za-z0-9])A[DS](?![A-Za-z0-9]))")
_SWAP_WORDS = {"left": "right", "right": "left", "l": "r", "r": "l", "lt": "rt", "rt": "lt"}


def _match_case(src: str, dst: str) -> str:
    if src.isupper() and len(src) > 1:
        return dst.upper()
    if src[0].isupper():
        return dst[0].upper() + dst[1:]
    return dst


def swap_side_text(text: str) -> str:
    """Mirror a description: left <-> right in every form the lexicon knows, case kept; "cleft" stays."""
    shouting = _is_shouting(text)

    def repl(m: re.Match) -> str:
        tok = m.group(0)
        if m.group("abbrev"):
            return tok if shouting else {"AD": "AS", "AS": "AD"}[tok]
        return _match_case(tok, _SWAP_WORDS[tok.lower()])

    return _SWAP_RX.sub(repl, text)


_LABEL_SIDE_RX = re.compile(r"(?<![A-Za-z0-9])(left|right)(?![A-Za-z0-9])", re.I)


def swap_side_label(label: str) -> str:
    """"ear-left" <-> "ear-right" (any label with a left/right token); labels without a side are unchanged."""
    return _LABEL_SIDE_RX.sub(lambda m: _match_case(m.group(0), _SWAP_WORDS[m.group(0).lower()]), label)
