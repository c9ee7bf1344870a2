"""The offline judge: knowledge-grounded, deterministic, and the fallback whenever the Gemini judge fails.

It checks what the description says (site, side, vocal-fold state; retrieval/lexicon.py) against what is
known of the image (its label, else the bundle's predicted class), because left/right swaps are the
towers' commonest error (DESIGN.md §4); and it asks how many of the K fold models agree that the image
belongs near the top, because an image only one fold likes is a weak candidate.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from agent.judges.base import Candidate, Verdict
from retrieval.lexicon import ParsedQuery, class_consistency, class_description
from retrieval.reading import parse

MODEL = "offline-lexicon"
CONSISTENCY_WEIGHT = 0.7  # score = 0.7 * class consistency + 0.3 * fold agreement
NEUTRAL = 0.5


def fold_agreement(candidates: Sequence[Candidate], top_k: int) -> dict[str, tuple[int, int]]:
    """id -> (folds ranking it in their top_k among these candidates, folds that scored it).

    Within a fold, ties go to the better retrieval rank, then the id; a NaN score ranks last.
    """
    n_folds = max((len(c.fold_scores) for c in candidates), default=0)
    hits = {c.id: [0, len(c.fold_scores)] for c in candidates}
    for f in range(n_folds):
        scored = [c for c in candidates if len(c.fold_scores) > f]

        def key(c: Candidate, f: int = f) -> tuple:
            s = c.fold_scores[f]
            return (-s if not math.isnan(s) else math.inf, c.rank, c.id)

        for c in sorted(scored, key=key)[:top_k]:
            hits[c.id][0] += 1
    return {cid: (h[0], h[1]) for cid, h in hits.items()}


def _consistency(parsed: ParsedQuery, cand: Candidate) -> tuple[float, str, Optional[str]]:
    """(score, sentence, class seen) from the label if known; else the expected consistency under the
    calibrated class probabilities, shrunk to neutral for an image unlike the training images (whose
    probabilities were never measured); else the bare prediction weighed by its probability."""
    if cand.label:
        score, reason = class_consistency(parsed, cand.label)
        return score, f"Labelled {cand.label}: {reason}.", cand.label
    if cand.class_probs:
        expected = sum(p * class_consistency(parsed, c)[0] for c, p in cand.class_probs.items())
        asked = sum(p for c, p in cand.class_probs.items() if class_consistency(parsed, c)[0] > 0)
        if cand.familiar is False:
            return NEUTRAL, (f"Predicted {cand.predicted}, but the image is unlike the training images "
                             f"(familiarity {cand.familiarity:.2f}), so class consistency is neutral (0.5)."), None
        return expected, (f"Calibrated P(what the description asks) = {asked:.2f} (predicted {cand.predicted}"
                          f"{', trusted' if cand.trusted else ''})."), cand.predicted
    if cand.predicted:
        p = NEUTRAL if cand.predicted_prob is None else min(max(cand.predicted_prob, 0.0), 1.0)
        score, reason = class_consistency(parsed, cand.predicted)
        prob = "p unknown, taken as 0.50" if cand.predicted_prob is None else f"p={p:.2f}"
        return p * score + (1 - p) * NEUTRAL, f"Predicted {cand.predicted} ({prob}): {reason}.", cand.predicted
    return NEUTRAL, "No label or predicted class, so class consistency is neutral (0.5).", None


def _verdict(parsed: ParsedQuery, cand: Candidate, folds: dict[str, tuple[int, int]], top_k: int,
             reason: Optional[str] = None) -> Verdict:
    consistency, sentence, cls = _consistency(parsed, cand)
    agree, total = folds.get(cand.id, (0, 0))
    # what separates candidates of one class comes first: the folds' agreement and the retrieval itself
    seen = f"retrieved #{cand.rank} (cosine {cand.score:.2f})"
    if cand.familiarity is not None and cand.familiar is not False:  # an unfamiliar image's sentence says it
        seen += f", familiarity {cand.familiarity:.2f}"
    if total:
        score = CONSISTENCY_WEIGHT * consistency + (1 - CONSISTENCY_WEIGHT) * agree / total
        sentence = f"{agree}/{total} folds rank it in their top {top_k}; {seen}. {sentence}"
    else:
        score = consistency
        sentence = f"No per-fold scores to compare; {seen}. {sentence}"
    return Verdict(
        id=cand.id, score=min(max(score, 0.0), 1.0), justification=sentence,
        region_seen=class_description(cls) if cls else None,
        judge="offline", model=MODEL, fallback=reason,
    )


def offline_verdict(query: str, candidate: Candidate, candidates: Sequence[Candidate],
                    reason: Optional[str] = None, top_fold_k: int = 3) -> Verdict:
    """One candidate's verdict, for the Gemini judge to stand in with when a single call fails (`reason`)."""
    pool = list(candidates) if any(c.id == candidate.id for c in candidates) else [*candidates, candidate]
    return _verdict(parse(query), candidate, fold_agreement(pool, top_fold_k), top_fold_k, reason)


class OfflineJudge:
    """Scores = 0.7 * class consistency with the description + 0.3 * share of folds ranking it top-k."""

    name = "offline"

    def __init__(self, top_fold_k: int = 3) -> None:
        if top_fold_k < 1:
            raise ValueError(f"top_fold_k must be >= 1, got {top_fold_k}")
        self.top_fold_k = top_fold_k

    def judge(self, query: str, candidates: Sequence[Candidate],
              on_progress: Optional[Callable[[int], None]] = None,
              context: Optional[Sequence[Candidate]] = None) -> list[Verdict]:
        """`context`: every candidate of the turn so far (the corrective loop judges a round's new images only):
        fold agreement is measured against them all, so a later round's images are not favoured by being
        compared with fewer."""
        parsed = parse(query)
        ids = {c.id for c in candidates}
        pool = list(candidates) + [c for c in (context or ()) if c.id not in ids]
        folds = fold_agreement(pool, self.top_fold_k)
        verdicts = []
        for cand in candidates:
            try:
                verdicts.append(_verdict(parsed, cand, folds, self.top_fold_k))
            except Exception as exc:  # one odd candidate must not sink the whole list (the Judge contract)
                verdicts.append(Verdict(
                    id=cand.id, score=NEUTRAL, judge="offline", model=MODEL,
                    justification=f"Could not be judged offline ({type(exc).__name__}: {exc}); neutral 0.5.",
                ))
            if on_progress is not None:
                on_progress(len(verdicts))
        return verdicts
