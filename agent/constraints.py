"""What the description pins down (region / side / state), decided by the lexicon, never by the planner.

A chat-model planner may call `retrieve` without the filters the description names, or with the opposite side
(a real model does both). The description, parsed by retrieval/lexicon.py and resolved against the previous
turn for follow-ups, is therefore the authority: `resolve` gives the question the judge checks and the
constraints; `enforce` writes them into every `retrieve` call, keeping filters the planner added and
replacing ones it dropped or contradicted, and reports each such conflict with both values for the trace.
The same constraints are the hard rule after fusion (agent/fuse.py).
"""
from __future__ import annotations

import re
from typing import Optional

from agent.state import Answer
from retrieval.lexicon import swap_side_text
from retrieval.reading import parse, split_queries

FILTERS = ("region", "side", "state")
FILTERED_TOOLS = ("retrieve", "similar")  # the tools that take the filters (agent/tools.py)
LIKE = re.compile(r"\b(?:more\s+)?(?:like|similar\s+to)\s+(?:number\s+|no\.?\s*|#\s*)?(\d+)\b", re.I)
# "left or right ear", "right and left tympanic membrane", "left/right": both sides named for one finding
BOTH_SIDES = re.compile(r"\b(left|right)\s*(?:or|and|/|&)\s*(?!\1)(left|right)\b", re.I)
MEANT_BOTH = re.compile(r"\b(?:both|bilateral(?:ly)?|either)\b", re.I)  # "both" is an answer, not a question


def names_both_sides(text: str) -> bool:
    """Whether one finding is given both sides ("wax in the left or right ear") without saying both are meant
    ("bilateral", "both"): an image shows one side, so which one is a question (agent/reflect.py asks it)."""
    pieces = split_queries(text)
    return len(pieces) == 1 and bool(BOTH_SIDES.search(text)) and not MEANT_BOTH.search(text)


def with_side(text: str, side: str) -> str:
    """The description restricted to one side: the other side's words swapped, or the side appended; a
    description of several findings gets it per finding ("left ear wax and right polyp" -> both left)."""
    pieces = split_queries(text)
    if len(pieces) > 1 and len({parse(p).side for p in pieces} - {None}) > 1:
        return ", ".join(with_side(p, side) for p in pieces)
    if names_both_sides(text):  # "wax in the left or right ear" -> "wax in the right ear"
        return BOTH_SIDES.sub(side, text, count=1)
    current = filters_of(text).get("side") or parse(text).side
    if current == side:
        return text
    if current in ("left", "right"):
        return swap_side_text(text)
    return f"{text}, {side} side"


def filters_of(text: str) -> dict[str, str]:
    """The retrieve filters a text pins down: its site, its side (ear and nose only) and its glottis state.

    A text the lexicon splits into several parts keeps what holds for all of them: the site they share; a
    side that some parts name and none contradicts, when every part is an ear, a nose or unplaced ("left ear
    with wax": the wax is in the left ear too; "left ear wax and throat redness": no side, the throat has
    none); likewise an open/closed state when every part is the larynx or unplaced."""
    p = parse(text)
    parts = p.parts or (p,)
    out: dict[str, str] = {}
    if p.site:
        out["region"] = p.site
    sides = {q.side for q in parts if q.side}
    if len(sides) == 1 and sides <= {"left", "right"} and all(q.site in (None, "ear", "nose") for q in parts):
        out["side"] = sides.pop()  # a side means nothing for the throat or the larynx
    states = {q.state for q in parts if q.state}
    if len(states) == 1 and all(q.site in (None, "larynx") for q in parts):
        out["state"] = states.pop()
    return out


def resolve(question: str, previous: Optional[Answer]) -> tuple[str, dict[str, str], bool]:
    """(question the judge checks, constraints, whether it is a 'more like #N' turn), from the text alone.

    A follow-up ("only the left side", "more like number 2", "with discharge") says little by itself: it is
    resolved against the previous turn's description, so the judge and the filters stay about the clinical
    question. A "more like #N" turn keeps the previous constraints. After an ask-back ("which region do you
    mean?", agent/reflect.py) a message naming a region answers it: the region joins the previous description;
    after "which side?" a side answers it (`with_side`) and "both" keeps both."""
    prev_q = previous.question if previous else None
    if prev_q and LIKE.search(question):
        return prev_q, dict(previous.constraints), True
    p = parse(question)
    refines = prev_q and not (p.site or p.state or p.findings)
    if prev_q and previous.asked_back and p.site and not p.findings:  # the answer to "which region?"
        judge_q = f"{prev_q} ({question.strip()})"
    elif refines and p.side in ("left", "right"):
        judge_q = with_side(prev_q, p.side)
    elif refines:
        judge_q = f"{prev_q} ({question.strip()})"
    else:
        judge_q = question
    return judge_q, filters_of(judge_q), False


def enforce(calls: list[dict], constraints: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """Every `retrieve` (and `similar`) call with the constraints written into its args, and the conflicts found.

    A filter the planner added is kept; one it left out ("dropped") or set otherwise ("contradicted") is
    replaced by the description's value, and the conflict names the call, the filter and both values."""
    out, conflicts = [], []
    for c in calls:
        if c["name"] not in FILTERED_TOOLS:
            out.append(c)
            continue
        args = dict(c["args"])
        for key in FILTERS:
            want, have = constraints.get(key), args.get(key)
            if want is None or have == want:
                continue
            conflicts.append({"call": c.get("id"), "tool": c["name"], "query": args.get("query") or args.get("image"),
                              "filter": key, "description": want, "planner": have,
                              "kind": "dropped" if have is None else "contradicted"})
            args[key] = want
        out.append({**c, "args": args})
    return out, conflicts
