"""Pos-Fuse: the final order as a pure, deterministic function of the retrieval and judge rankings.

KGER's fusion (posfuse_combiner.py of the H3N1 ENTRep submission), kept number for number:
- a list of n items gives position probabilities decay**i normalised over the list (0.8: .2975, .2380, ...);
- the judge side of an image is 0.6 * its judge position prob + 0.4 * its min-max normalised judge score
  (all scores equal -> every normalised score is 0, as in KGER);
- the final score is the weighted mean, over the sources that contain the image, with weights 0.4
  (retrieval) and 0.6 (judge).
KGER's other strategies are kept under the same names as there: confidence-weighted (judge side =
position prob * (0.3 + 0.7 * normalised score)), max, min (0 unless both lists hold the image) and
reciprocal rank fusion (k = 60). Ties are broken by retrieval rank, then id, never by hash order, and every
row carries its arithmetic so an auditor can redo it.

`rank` is the answer's order, the one rule the fuse node and `kger eval` share: Pos-Fuse, then the images
whose known class contradicts the description moved last (keeping their fused order).

The retrieval list of a turn of several rounds (the corrective loop, agent/reflect.py) is the union of its
rounds, fused once: round 1's merged list in its order (filter tier, then cosine), then each later round's
images that no earlier round found and that the loop kept (judged above the turn's best so far, or meeting the
description while too few did: agent/reflect.keep_improving), in that round's merged order, round after round.
An image found again keeps its first place. `retrieval_rank` in the answer rows is the place in that union, so an
outside Pos-Fuse over the rows' (retrieval_rank, judge) pairs reproduces the ranking.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Optional, Sequence

CONFIDENCE_FLOOR = 0.3  # KGER's confidence-weighted judge side: pos * (floor + (1 - floor) * normalised score)


@dataclass(frozen=True)
class FuseConfig:
    strategy: str = "posfuse"  # a key of STRATEGIES: posfuse | confidence_weighted | max | min | rrf
    decay: float = 0.8  # position-probability decay per rank, in (0, 1]
    w_retrieval: float = 0.4  # weight of the retrieval side in the weighted mean
    w_judge: float = 0.6  # weight of the judge side in the weighted mean
    judge_pos_weight: float = 0.6  # judge side = this * position prob + (1 - this) * min-max judge score
    rrf_k: int = 60  # reciprocal-rank-fusion constant

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown fusion strategy {self.strategy!r}; expected one of {', '.join(STRATEGIES)}")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")
        if self.w_retrieval < 0 or self.w_judge < 0 or self.w_retrieval + self.w_judge <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {self.w_retrieval}, {self.w_judge}")
        if not 0.0 <= self.judge_pos_weight <= 1.0:
            raise ValueError(f"judge_pos_weight must be in [0, 1], got {self.judge_pos_weight}")
        if isinstance(self.rrf_k, bool) or not isinstance(self.rrf_k, int) or self.rrf_k < 0:
            raise ValueError(f"rrf_k must be a non-negative integer, got {self.rrf_k!r}")


@dataclass(frozen=True)
class FusedRow:
    id: str
    final: float  # the fused score the order is by
    retrieval_rank: Optional[int]  # 1-based, None when the retrieval list lacks the image
    judge_rank: Optional[int]  # 1-based rank by judge score, None when the judge did not score it
    retrieval_prob: Optional[float]  # the retrieval side's term as the strategy uses it
    judge_prob: Optional[float]  # the judge side's term as the strategy uses it
    judge_score: Optional[float]  # the judge's raw score in [0, 1]
    formula: str  # human-readable arithmetic that gives `final`
    demoted: Optional[str] = None  # why it is ranked after the rest (set by `rank`), None when it is not


@dataclass(frozen=True)
class SourceHit:
    """One image's place in one source's list: what a strategy combines."""

    rank: int  # 1-based
    prob: float  # position probability of that rank in that list
    score: float  # the source's raw score
    norm: float = 0.0  # min-max normalised score (judge only)


# (retrieval hit or None, judge hit or None, cfg) -> (final, retrieval term, judge term, formula)
Strategy = Callable[[Optional[SourceHit], Optional[SourceHit], FuseConfig], tuple]


def position_probs(n: int, decay: float = 0.8) -> list[float]:
    """decay**i for ranks i = 0..n-1, normalised to sum to 1 (KGER's exponential position prior)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    raw = [decay**i for i in range(n)]
    total = sum(raw)
    return [r / total for r in raw]


def _judge_side(j: SourceHit, cfg: FuseConfig) -> tuple[float, str]:
    a = cfg.judge_pos_weight
    value = a * j.prob + (1 - a) * j.norm
    return value, f"({a:g}*{j.prob:.4f}+{1 - a:g}*{j.norm:.3f})"


def _confidence_side(j: SourceHit, cfg: FuseConfig) -> tuple[float, str]:
    value = j.prob * (CONFIDENCE_FLOOR + (1 - CONFIDENCE_FLOOR) * j.norm)
    return value, f"{j.prob:.4f}*({CONFIDENCE_FLOOR:g}+{1 - CONFIDENCE_FLOOR:g}*{j.norm:.3f})"


def _weighted_mean(r: Optional[SourceHit], j: Optional[SourceHit], cfg: FuseConfig, side) -> tuple:
    terms, total, parts = 0.0, 0.0, []
    r_val = j_val = None
    if r is not None:
        r_val = r.prob
        terms += cfg.w_retrieval * r_val
        total += cfg.w_retrieval
        parts.append(f"{cfg.w_retrieval:g}*{r_val:.4f}")
    if j is not None:
        j_val, text = side(j, cfg)
        terms += cfg.w_judge * j_val
        total += cfg.w_judge
        parts.append(f"{cfg.w_judge:g}*{text}")
    final = terms / total if total > 0 else 0.0
    return final, r_val, j_val, f"({' + '.join(parts)}) / {total:g} = {final:.4f}"


def _posfuse(r, j, cfg):
    return _weighted_mean(r, j, cfg, _judge_side)


def _confidence_weighted(r, j, cfg):
    return _weighted_mean(r, j, cfg, _confidence_side)


def _sides(r, j, cfg) -> tuple[Optional[float], Optional[float]]:
    return (r.prob if r else None), (_judge_side(j, cfg)[0] if j else None)


def _max(r, j, cfg):
    r_val, j_val = _sides(r, j, cfg)
    shown = [0.0 if v is None else v for v in (r_val, j_val)]  # KGER: a list that lacks the image gives it 0
    final = max(shown)
    return final, r_val, j_val, f"max({shown[0]:.4f}, {shown[1]:.4f}) = {final:.4f}"


def _min(r, j, cfg):
    r_val, j_val = _sides(r, j, cfg)
    if r_val is None or j_val is None:
        return 0.0, r_val, j_val, "min: not in both lists = 0.0000"
    final = min(r_val, j_val)
    return final, r_val, j_val, f"min({r_val:.4f}, {j_val:.4f}) = {final:.4f}"


def _rrf(r, j, cfg):
    k = cfg.rrf_k
    r_val = 1.0 / (k + r.rank) if r else None
    j_val = 1.0 / (k + j.rank) if j else None
    parts = [f"1/({k}+{h.rank})" for h in (r, j) if h is not None]
    final = sum(v for v in (r_val, j_val) if v is not None)
    return final, r_val, j_val, f"{' + '.join(parts)} = {final:.4f}"


STRATEGIES: dict[str, Strategy] = {
    "posfuse": _posfuse,
    "confidence_weighted": _confidence_weighted,
    "max": _max,
    "min": _min,
    "rrf": _rrf,
}


def _check_ids(items: Sequence[tuple[str, float]], what: str) -> None:
    seen: set[str] = set()
    for item_id, score in items:
        if item_id in seen:
            raise ValueError(f"duplicate id {item_id!r} in the {what} list")
        seen.add(item_id)
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"{what} score for {item_id!r} is not a finite number: {score!r}")


def fuse(
    retrieval: Sequence[tuple[str, float]],
    judge: Sequence[tuple[str, float]],
    cfg: FuseConfig = FuseConfig(),
) -> list[FusedRow]:
    """Fuse a retrieval list (id, score) in retrieval order with judge scores (id, score in [0, 1]) in any order.

    The judge ranking is by judge score, high first, ties by retrieval rank then id, so the result never
    depends on the order the judge answered in. The lists may differ in length and members.
    """
    _check_ids(retrieval, "retrieval")
    _check_ids(judge, "judge")
    for item_id, score in judge:
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"judge score for {item_id!r} must be in [0, 1], got {score}")

    r_rank = {item_id: i + 1 for i, (item_id, _) in enumerate(retrieval)}
    never = len(retrieval) + 1  # images the retrieval list lacks sort after all that it has

    def tie_key(item_id: str) -> tuple[int, str]:
        return r_rank.get(item_id, never), item_id

    r_probs = position_probs(len(retrieval), cfg.decay)
    r_hits = {item_id: SourceHit(i + 1, r_probs[i], float(s)) for i, (item_id, s) in enumerate(retrieval)}

    ordered = sorted(judge, key=lambda js: (-js[1], *tie_key(js[0])))
    j_probs = position_probs(len(ordered), cfg.decay)
    scores = [float(s) for _, s in ordered]
    lo, hi = (min(scores), max(scores)) if scores else (0.0, 0.0)
    span = hi - lo if hi > lo else 1.0
    j_hits = {
        item_id: SourceHit(i + 1, j_probs[i], float(s), (float(s) - lo) / span)
        for i, (item_id, s) in enumerate(ordered)
    }

    strategy = STRATEGIES[cfg.strategy]
    rows = []
    for item_id in list(r_hits) + sorted(set(j_hits) - set(r_hits)):
        r, j = r_hits.get(item_id), j_hits.get(item_id)
        final, r_val, j_val, formula = strategy(r, j, cfg)
        rows.append(FusedRow(
            id=item_id, final=final,
            retrieval_rank=r.rank if r else None, judge_rank=j.rank if j else None,
            retrieval_prob=r_val, judge_prob=j_val, judge_score=j.score if j else None,
            formula=formula,
        ))
    rows.sort(key=lambda row: (-round(row.final, 12), *tie_key(row.id)))
    return rows


def rank(
    retrieval: Sequence[tuple[str, float]],
    judge: Sequence[tuple[str, float]],
    demoted: Mapping[str, Optional[str]],
    cfg: FuseConfig = FuseConfig(),
) -> list[FusedRow]:
    """The answer's order: `fuse`, then the rows with a reason in `demoted` last, in their fused order.

    A side / region / state the description names is a hard constraint, so an image whose known class
    contradicts it never ranks above one that does not, whatever the scores; the reason travels with the row.
    """
    rows = [replace(r, demoted=demoted.get(r.id)) for r in fuse(retrieval, judge, cfg)]
    return sorted(rows, key=lambda r: r.demoted is not None)  # stable: Pos-Fuse order within each group
