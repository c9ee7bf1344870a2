"""The judge contract: what a judge sees of a candidate and what it must say back.

Both judges (Gemini and offline) take the same `Candidate`s (retrieval/candidate.py, the one candidate type)
and return one `Verdict` per candidate, in the same order, so the graph, the fusion and the traces never
care which judge ran.
"""
from __future__ import annotations

from typing import Callable, Literal, Optional, Protocol, Sequence

from pydantic import BaseModel, Field

from retrieval.candidate import Candidate

__all__ = ["Candidate", "Judge", "Verdict", "match_score"]


class Verdict(BaseModel):
    """A judge's answer for one candidate; everything a trace needs to show it later without a model."""

    id: str
    score: float = Field(ge=0.0, le=1.0, description="relevance in [0, 1]")
    justification: str
    region_seen: Optional[str] = None
    judge: Literal["gemini", "offline"]
    model: str = Field(description="model id, or 'offline-lexicon' for the offline judge")
    prompt_hash: Optional[str] = None
    raw: Optional[str] = Field(default=None, description="the raw answer text as returned by the model")
    cached: bool = False
    fallback: Optional[str] = Field(default=None, description="why the offline judge stood in, if it did")
    latency_ms: float = 0.0


def match_score(score: Optional[float]) -> Optional[int]:
    """A judge score as the 0-100 match the answer shows first (readable alone, unlike a fused score, which
    only orders one answer); None when not judged."""
    return None if score is None else round(100 * min(1.0, max(0.0, score)))


class Judge(Protocol):
    name: str

    def judge(self, query: str, candidates: Sequence[Candidate],
              on_progress: Optional[Callable[[int], None]] = None) -> list[Verdict]:
        """One verdict per candidate, in the candidates' order. Must not raise for a single bad candidate.
        `on_progress(done)` is told how many are judged as they finish (the CLI's and serve's "judged 7/20")."""
        ...
