"""Retrieval metrics on ranked id lists: pure Python, shared by training validation and `kger eval`.

Conventions follow text-to-image retrieval benchmarks (CLIP, the ENTRep Track 3 leaderboard):
Recall@k is a hit rate: 1 when any relevant id is in the top k. With one relevant image per query (ENTRep) it
equals the textbook recall; with a class query it says "the right kind of image came up". Relevance is binary.
A query with no relevant id scores 0 everywhere (it is counted, not dropped, so a metric cannot look better
by losing queries).
"""
from __future__ import annotations

import math
from typing import Hashable, Iterable, Sequence

DEFAULT_KS = (1, 5, 10)


def _relevant(relevant: Iterable[Hashable]) -> set:
    return relevant if isinstance(relevant, (set, frozenset)) else set(relevant)


def recall_at_k(ranked_ids: Sequence[Hashable], relevant: Iterable[Hashable], k: int) -> float:
    """1.0 when any relevant id is among the first k, else 0.0."""
    rel = _relevant(relevant)
    return float(any(i in rel for i in ranked_ids[:k]))


def precision_at_k(ranked_ids: Sequence[Hashable], relevant: Iterable[Hashable], k: int) -> float:
    """Share of the first k slots holding a relevant id (a short list still divides by k)."""
    if k <= 0:
        raise ValueError("k must be positive")
    rel = _relevant(relevant)
    return sum(i in rel for i in ranked_ids[:k]) / k


def mrr(ranked_ids: Sequence[Hashable], relevant: Iterable[Hashable]) -> float:
    """Reciprocal rank of the first relevant id (0.0 when none is ranked)."""
    rel = _relevant(relevant)
    for rank, i in enumerate(ranked_ids, start=1):
        if i in rel:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked_ids: Sequence[Hashable], relevant: Iterable[Hashable], k: int = 10) -> float:
    """Binary-relevance nDCG: DCG of the first k over the DCG of an ideal list with min(|relevant|, k) hits."""
    rel = _relevant(relevant)
    dcg = sum(1.0 / math.log2(r + 2) for r, i in enumerate(ranked_ids[:k]) if i in rel)
    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(len(rel), k)))
    return dcg / ideal if ideal else 0.0


def summarize(
    results: Iterable[tuple[Sequence[Hashable], Iterable[Hashable]]], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Mean of every metric over (ranked ids, relevant ids) pairs: R@k for each k, MRR, nDCG@10, n."""
    rows = [(list(ranked), _relevant(rel)) for ranked, rel in results]
    n = len(rows)
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = sum(recall_at_k(r, rel, k) for r, rel in rows) / n if n else 0.0
    out["MRR"] = sum(mrr(r, rel) for r, rel in rows) / n if n else 0.0
    out["nDCG@10"] = sum(ndcg_at_k(r, rel, 10) for r, rel in rows) / n if n else 0.0
    out["n"] = n
    return out
