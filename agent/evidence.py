"""What "usual" evidence looks like in this store, measured from the store itself (issue 23 item 3).

A cosine of 0.46 means little alone: an untrained 2-fold bundle and a trained 10-fold one give very different
scales. So "usual" is calibrated per store, once per session: every class prototype caption that training
uses (retrieval/captions.py, ~57 phrasings of the 7 classes) is sent through the store's own text towers,
and the best cosine each gets is kept. A turn whose best retrieval cosine is below the `WEAK_QUANTILE`
quantile of that distribution, minus `WEAK_SLACK` of its spread, is weak evidence: the answer says so in one
line and the chat suggests a rephrase. The same signal is one of the corrective loop's triggers
(agent/reflect.py), so the notice and the loop never disagree about what "weak" is.

Why the captions: they are what the towers were trained to place near their class's images, so their best
cosines are what a clearly worded description reaches in this store; ENTRep's own descriptions land inside
that distribution (bench/agent_loop.py reports both), a garbled or off-topic text far below it.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

from retrieval.captions import class_captions
from retrieval.lexicon import CLASSES

WEAK_QUANTILE = 0.05  # the low end of what a clear caption gets in this store ...
WEAK_SLACK = 1.5  # ... minus 1.5 interquartile ranges: "far below", not "a bit below" (chosen on split 0 of
# bench/agent_loop.py: at 0.5 the line fired on 10 of 37 ENTRep descriptions, clinicians' own wording; at 1.5 on
# none of them, and still on text far off the store's vocabulary)
_CACHE_ATTR = "_kger_usual_best"


@dataclass(frozen=True)
class Usual:
    """The store's best-cosine distribution over the class captions, and the weak-evidence line drawn on it."""

    n: int
    low: float  # the WEAK_QUANTILE quantile
    median: float
    iqr: float

    @property
    def weak_below(self) -> float:
        return self.low - WEAK_SLACK * self.iqr

    def record(self) -> dict:
        return {"n": self.n, "low": round(self.low, 4), "median": round(self.median, 4),
                "weak_below": round(self.weak_below, 4)}


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def usual_best(searcher) -> Optional[Usual]:
    """The store's calibration, measured on first use and kept on the searcher (None if it cannot be made:
    an empty store, a searcher without text towers)."""
    cached = getattr(searcher, _CACHE_ATTR, False)
    if cached is not False:
        return cached
    best: list[float] = []
    try:
        for cls in CLASSES:
            for caption in class_captions(cls):
                hits = searcher.by_vector(searcher.encode_text(caption), 1)
                if hits:
                    best.append(float(hits[0].score))
    except Exception:  # noqa: BLE001 - no calibration means no notice, never a failed turn
        best = []
    usual = None
    if len(best) >= 5:
        usual = Usual(n=len(best), low=_quantile(best, WEAK_QUANTILE), median=statistics.median(best),
                      iqr=_quantile(best, 0.75) - _quantile(best, 0.25))
    try:
        setattr(searcher, _CACHE_ATTR, usual)
    except Exception:  # noqa: BLE001 - a searcher that takes no attribute is calibrated per turn
        pass
    return usual


def weak_notice(best: Optional[float], usual: Optional[Usual]) -> Optional[str]:
    """One line when the turn's best retrieval cosine is far below the store's usual, else None."""
    if best is None or usual is None or best >= usual.weak_below:
        return None
    return (f"Weak evidence: the best match scores {best:.2f}, far below what this store usually gives "
            f"(median {usual.median:.2f}); the images below are the nearest, not necessarily right.")
