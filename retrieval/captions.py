"""Training captions per class: varied clinical phrasings from the lexicon's synonyms.

Kept apart from the query parser (retrieval/lexicon.py): training and the export checks read them, query-time
code does not. A sided class's captions name only its own side, so `lexicon.swap_side_text` maps each left
caption onto the matching right one (what a horizontal flip needs).
"""
from __future__ import annotations

from retrieval.lexicon import CLASSES, class_side, class_site

_SIDED_CAPTIONS = {
    "ear": (
        "{side} ear",
        "endoscopic view of the {side} ear",
        "{Side} tympanic membrane on otoscopy",
        "otoscopy of the {side} external auditory canal and tympanic membrane",
        "{side} eardrum seen through the ear canal",
        "{side}-sided ear canal, otoendoscopic image",
        "{L} ear endoscopy",
        "{L} TM at the end of the {side} external auditory canal",
        "otoscopy {AX}: {side} ear canal and eardrum",
        "{side} middle ear seen through the tympanic membrane",
    ),
    "nose": (
        "{side} nasal cavity",
        "endoscopic view of the {side} nasal cavity",
        "{Side} nostril on nasal endoscopy",
        "{side} side of the nose with the septum and inferior turbinate",
        "{side} middle meatus and middle turbinate",
        "{side}-sided nasal endoscopy",
        "{L} nasal cavity, septum and turbinates",
        "nasal endoscopy of the {side} side toward the nasopharynx",
    ),
}
_PLAIN_CAPTIONS = {
    "vc-open": (
        "vocal cords open",
        "vocal folds abducted",
        "open glottis during inspiration",
        "laryngoscopy with the vocal folds abducted during breathing",
        "larynx with open vocal cords",
        "glottis open, vocal cords apart on inspiration",
        "abducted vocal folds seen on laryngoscopy",
    ),
    "vc-closed": (
        "vocal cords closed",
        "vocal folds adducted",
        "closed glottis during phonation",
        "laryngoscopy with the vocal folds adducted during phonation",
        "larynx with closed vocal cords",
        "glottic closure on phonation",
        "adducted vocal folds seen on laryngoscopy",
    ),
    "throat": (
        "throat",
        "oropharynx with the palatine tonsils",
        "endoscopic view of the throat",
        "tonsils and uvula",
        "oral cavity and oropharynx with the tongue base",
        "posterior pharyngeal wall and tonsils",
        "throat examination showing the uvula",
    ),
}


def class_captions(cls: str) -> list[str]:
    """Varied clinical captions for a class, using the lexicon's synonyms; a sided class's captions name only
    its own side, so `swap_side_text` maps each left caption onto the matching right one."""
    if cls in _PLAIN_CAPTIONS:
        return list(_PLAIN_CAPTIONS[cls])
    side = class_side(cls)
    if side is None:
        raise ValueError(f"unknown class {cls!r}; expected one of {', '.join(CLASSES)}")
    words = {"side": side, "Side": side.capitalize(), "L": side[0].upper(),
             "AX": "AS" if side == "left" else "AD"}
    return [t.format(**words) for t in _SIDED_CAPTIONS[class_site(cls)]]
