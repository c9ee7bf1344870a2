"""The tools the planner calls: text -> images and image -> images, over the retrieval core."""
from __future__ import annotations

import json
from typing import Annotated, Literal, Optional

from langchain_core.tools import tool
from langgraph.prebuilt import InjectedState
from langgraph.runtime import get_runtime

from agent.context import Context, Searcher
from agent.state import Answer
from retrieval.candidate import Candidate
from retrieval.errors import InputError
from retrieval.lexicon import classes_for

Region = Literal["ear", "nose", "throat", "larynx"]


def _tagged(results: list[Candidate], query: str, classes: Optional[tuple[str, ...]] = None) -> list[Candidate]:
    """The tool's candidates: ranked 1.. in this list, with the query and whether they met the filters:
    True when the known class (label or trusted prediction) is allowed, False when it is not, None when
    there is no filter or the class is not known (an untrusted prediction is never held against an image)."""
    def match(r: Candidate) -> Optional[bool]:
        known = r.known_class()
        return None if classes is None or known is None else known in classes

    return [r.model_copy(update={"rank": i, "query": query, "filter_match": match(r)})
            for i, r in enumerate(results, start=1)]


def filter_tier(c: Candidate) -> int:
    """Soft constraints: 0 matching (label or trusted prediction), 1 uncertain, 2 contradicting."""
    return {True: 0, None: 1, False: 2}[c.filter_match]


def filter_order(cands: list[Candidate]) -> list[Candidate]:
    """Matching first, then uncertain, then contradicting; the given (score) order within each."""
    return sorted(cands, key=filter_tier)


def _summary(cands: list[Candidate]) -> str:
    """What a chat model reads back: short, ids and labels only (the artifact holds the full candidates)."""
    return json.dumps([{"rank": c.rank, "id": c.id[:12], "label": c.label or c.predicted,
                        "score": round(c.score, 4)} for c in cands])


def _searcher() -> Searcher:
    return get_runtime(Context).context.searcher


def _filtered(search, k: int, query: str, region=None, side=None, state=None) -> list[Candidate]:
    """`search(n, classes)` with the filters, which match labels and trusted predictions only (the indexer's
    `cls`): images known to satisfy them first, then uncertain ones, then those known not to."""
    classes = classes_for(region, side, state) if (region or side or state) else None
    if classes is None:
        return _tagged(search(k, None), query)
    first = search(k, classes)
    matched = {r.id for r in first}
    rest = [] if len(first) >= k else [r for r in search(k, None) if r.id not in matched]
    return _tagged(filter_order(_tagged(first + rest, query, classes))[:k], query, classes)


@tool(response_format="content_and_artifact")
def retrieve(
    query: str,
    region: Optional[Region] = None,
    side: Optional[Literal["left", "right"]] = None,
    state: Optional[Literal["open", "closed"]] = None,
    k: int = 20,
):
    """Search the endoscopy image library with a short clinical phrase.

    Optional filters: region (ear, nose, throat, larynx), side (left/right, ear and nose only), state
    (open/closed, vocal folds only). Images known to satisfy the filters come first, then those whose class
    is uncertain, then those known not to.
    """
    searcher = _searcher()
    vec = searcher.encode_text(query)
    cands = _filtered(lambda n, classes: searcher.by_vector(vec, n, classes), max(1, min(int(k), 200)), query,
                      region, side, state)
    return _summary(cands), cands


@tool(response_format="content_and_artifact")
def similar(
    image: str,
    answer: Annotated[Optional[Answer], InjectedState("answer")] = None,
    region: Optional[Region] = None,
    side: Optional[Literal["left", "right"]] = None,
    state: Optional[Literal["open", "closed"]] = None,
    k: int = 20,
):
    """Find images that look like one image: '#N' (rank N of the previous answer), an image id, or a file path.

    Optional filters as for `retrieve` (a follow-up keeps the conversation's region, side and state)."""
    searcher = _searcher()
    ref = image.strip()
    if ref.startswith("#") and ref[1:].isdigit():
        rows = answer.rows if answer else []
        n = int(ref[1:])
        if not 1 <= n <= len(rows):
            raise InputError(f"there is no image #{n} in the previous answer")
        ref = rows[n - 1].id
    cands = _filtered(lambda n, classes: searcher.similar(ref, n, classes), max(1, min(int(k), 200)),
                      f"like {image}", region, side, state)
    return _summary(cands), cands


TOOLS = [retrieve, similar]
