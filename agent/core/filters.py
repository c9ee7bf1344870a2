"""The one filter model: region, side and state of an image, and what a filter does to a ranking.

Semantics (the same for the agent's tools, the MCP tools and the HTTP API): a filter ORDERS, it does not
remove. Images whose known class (a label, or a prediction the bundle trusts) satisfies the filter come first,
then images whose class is uncertain (no label, an untrusted prediction), then images known to contradict it;
the similarity order holds within each tier. Why soft by default: most images in a clinic's store carry no
label and only some predictions are trusted, so a hard filter would silently drop every uncertain image,
often the right one, and answer "nothing" on an unlabelled store. The contradicting images stay visible but
last, and each candidate says whether it matched (`filter_match`: True, None, False).

`strict=True` makes it hard: only images known to satisfy the filter are returned (fewer than k, or none,
when the store does not know enough). For callers that want exactly "ear-left images and nothing else".
"""
from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict

from retrieval.candidate import Candidate
from retrieval.lexicon import classes_for

Region = Literal["ear", "nose", "throat", "larynx"]
Side = Literal["left", "right"]
State = Literal["open", "closed"]

Search = Callable[[int, Optional[Sequence[str]]], list[Candidate]]  # (n, classes or None) -> best first


class Filters(BaseModel):
    """region (ear, nose, throat, larynx), side (left/right: ear and nose), state (open/closed: vocal folds);
    soft ordering unless `strict` (see the module's docstring for why)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: Optional[Region] = None
    side: Optional[Side] = None
    state: Optional[State] = None
    strict: bool = False

    def classes(self) -> Optional[tuple[str, ...]]:
        """The classes that satisfy the filter, or None when no filter is set."""
        if not (self.region or self.side or self.state):
            return None
        return tuple(classes_for(self.region, self.side, self.state))

    def named(self) -> dict:
        """{region, side, state} as given (for a response that echoes its filters)."""
        return {"region": self.region, "side": self.side, "state": self.state}


def tagged(results: list[Candidate], query: str, classes: Optional[Sequence[str]] = None) -> list[Candidate]:
    """The candidates ranked 1.. in this list, with the query and whether they met the filter: True when the
    known class (label or trusted prediction) is allowed, False when it is not, None when there is no filter
    or the class is not known (an untrusted prediction is never held against an image)."""
    def match(r: Candidate) -> Optional[bool]:
        known = r.known_class()
        return None if classes is None or known is None else known in classes

    return [r.model_copy(update={"rank": i, "query": query, "filter_match": match(r)})
            for i, r in enumerate(results, start=1)]


def filter_tier(c: Candidate) -> int:
    """0 matching (label or trusted prediction), 1 uncertain, 2 contradicting."""
    return {True: 0, None: 1, False: 2}[c.filter_match]


def filter_order(cands: list[Candidate]) -> list[Candidate]:
    """Matching first, then uncertain, then contradicting; the given (score) order within each."""
    return sorted(cands, key=filter_tier)


def filtered_search(search: Search, k: int, query: str, filters: Optional[Filters] = None) -> list[Candidate]:
    """The top k of `search` under `filters`: the class-filtered search first (the indexer's `cls` holds
    labels and trusted predictions only), then, unless strict, the rest in tier order."""
    classes = filters.classes() if filters is not None else None
    if classes is None:
        return tagged(search(k, None), query)
    first = search(k, classes)
    if filters.strict:
        return tagged(first, query, classes)
    matched = {r.id for r in first}
    rest = [] if len(first) >= k else [r for r in search(k, None) if r.id not in matched]
    return tagged(filter_order(tagged(first + rest, query, classes))[:k], query, classes)
