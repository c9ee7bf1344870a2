"""The one candidate type: an image found for a query, from the Chroma hit to the judges and the answer.

Born in retrieval/search.py (one per store hit, with its per-fold scores), tagged by the agent's tools with
the query that found it and whether it met the planner's filters, read by both judges, and copied into the
answer rows. One pydantic model all the way, so no step reads it by string keys; `model_dump()` is its JSON
form (traces, `kger search --json`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, Field, computed_field

TOOL_FIELDS = frozenset({"filter_match", "query"})  # set by the agent's tools; `kger search` leaves them out


class Candidate(BaseModel):
    """One retrieved image."""

    rank: int = Field(description="1-based rank in the retrieval list")
    id: str = Field(description="content hash of the image file (the Chroma id)")
    path: str = Field(description="where the image file lives on this machine")
    score: float = Field(description="ensemble cosine similarity (mean of the per-fold cosines)")
    fold_scores: list[float] = Field(default_factory=list, description="per-fold cosine similarities")
    label: Optional[str] = Field(default=None, description="known ENTRep class, from the labels file")
    predicted: Optional[str] = Field(default=None, description="class predicted by the bundle's classifier head")
    predicted_prob: Optional[float] = Field(default=None, description="probability of `predicted`")
    filter_match: Optional[bool] = Field(
        default=None, description="whether it meets the planner's region/side/state filter (None: no filter)")
    query: Optional[str] = Field(default=None, description="the tool query that found it")
    display: Optional[str] = Field(default=None, exclude=True,
                                   description="how a person sees it: `exam.mp4 @ 00:01:23` for a video frame")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def name(self) -> str:
        return self.display or Path(self.path).name
