"""Stage-wise evaluation and fusion tuning: pure functions over answers, so no metric ever calls a model.

One agent run per query yields every stage at once, because an answer made with k = pool keeps all candidates
with their retrieval rank, judge score and fused score:
- ensemble: the NanoCLIP ensemble on the raw description (what `kger search` shows), no planner, no labels;
- retrieval: the agent's candidates in retrieval order (the planner's focused queries and region/side filters);
- judge: the same candidates ordered by judge score alone (ties: retrieval rank, then id);
- fused: the answer (Pos-Fuse, then images that contradict the description ranked last).
KGER picked its fusion without ground truth; `tune_fusion` re-fuses the stored candidates and verdicts over a
grid on one half of the queries and reports the winner on the other half, next to the default.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from agent.core.queries import Truth
from agent.posfuse import STRATEGIES, FuseConfig, rank
from agent.state import Answer, AnswerRow
from retrieval.errors import InputError
from retrieval.lexicon import SITES, classes_for
from retrieval.metrics import summarize

STAGES = ("ensemble", "retrieval", "judge", "fused")
STAGE_HELP = {
    "ensemble": "NanoCLIP ensemble on the description (kger search)",
    "retrieval": "agent candidates: planned queries + filters",
    "judge": "candidates by judge score",
    "fused": "the answer (Pos-Fuse + constraints)",
}
# (before, after): what adding one step changes. Negative deltas are printed as they are.
COMPARISONS = (("ensemble", "retrieval"), ("retrieval", "judge"), ("retrieval", "fused"), ("judge", "fused"))
METRICS = ("R@1", "R@5", "R@10", "MRR", "nDCG@10")
OBJECTIVE = ("MRR", "R@1", "nDCG@10")  # tuning picks the best by these, in order (ENTRep ranks by R@1 and MRR)

# The tuning grid (DESIGN.md §7: choose fusion by ground truth, not by agreement as KGER did).
W_RETRIEVAL = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DECAYS = (0.5, 0.7, 0.8, 0.9, 1.0)
JUDGE_POS_WEIGHTS = (0.0, 0.3, 0.6, 1.0)


@dataclass
class EvalRecord:
    """One evaluated query: what is relevant, each stage's ranking, and the rows to re-fuse."""

    query: str
    relevant: frozenset
    rankings: dict[str, list[str]]
    rows: list[AnswerRow] = field(default_factory=list)
    run_id: Optional[str] = None


# -- ground truth against a store --------------------------------------------------------------------------

def _name_index(records: Iterable[tuple[str, dict]]) -> dict[str, set[str]]:
    """Lookup keys (file name, lower-cased name, lower-cased stem) -> ids of the store's images."""
    index: dict[str, set[str]] = {}
    for rid, meta in records:
        name = meta.get("name") or Path(str(meta.get("path", ""))).name
        if not name:
            continue
        for key in (name, name.lower(), Path(name).stem.lower()):
            index.setdefault(key, set()).add(rid)
    return index


def _lookup(index: dict[str, set[str]], name: str) -> set[str]:
    for key in (name, name.lower(), Path(name).stem.lower()):
        if key in index:
            return index[key]
    return set()


def resolve_truth(
    truths: Sequence[Truth], records: Sequence[tuple[str, dict]], labels: Optional[dict[str, str]] = None
) -> tuple[list[tuple[Truth, frozenset]], list[dict]]:
    """(query, relevant ids) pairs, and the queries excluded because nothing relevant is in the store.

    Images match the store's file names (exact, then case-insensitive, then by stem). Classes match the
    store's *labels* (`labels`, image name -> class, when given; else each record's `label`), never a
    predicted class: a prediction is what is being tested.
    """
    names = _name_index(records)
    by_class: dict[str, set[str]] = {}
    for rid, meta in records:
        name = meta.get("name") or Path(str(meta.get("path", ""))).name
        cls = labels.get(name) if labels is not None else meta.get("label")
        if cls:
            by_class.setdefault(cls, set()).add(rid)
    resolved, excluded = [], []
    for t in truths:
        relevant: set[str] = set()
        missing = []
        for img in t.images:
            found = _lookup(names, img) or by_class.get(img, set())  # a class the labels file defines
            relevant |= found
            if not found:
                missing.append(img)
        for cls in t.classes:
            found = class_members(by_class, cls)
            relevant |= found
            if not found:
                missing.append(f"class {cls}")
        if relevant:
            resolved.append((t, frozenset(relevant)))
        else:
            excluded.append({"query": t.query, "line": t.line,
                             "reason": "not in the store: " + ", ".join(missing)})
    return resolved, excluded


def class_members(by_class: dict[str, set[str]], name: str) -> set[str]:
    """Images of a truth class: labelled with it, or, for a region (ear / nose / throat / larynx), labelled
    with any class of that region. The labels decide which classes exist, so any granularity can be scored."""
    found = set(by_class.get(name, set()))
    if name in SITES:
        for cls in classes_for(name):
            found |= by_class.get(cls, set())
    return found


# -- stages ------------------------------------------------------------------------------------------------

def _retrieval_order(rows: Sequence[AnswerRow]) -> list[AnswerRow]:
    return sorted(rows, key=lambda r: (r.retrieval_rank or math.inf, r.id))


def judge_order(rows: Sequence[AnswerRow]) -> list[str]:
    """Candidates by judge score, high first; ties by retrieval rank, then id; unjudged ones last."""
    def key(r: AnswerRow) -> tuple:
        return (r.judge is None, -(r.judge or 0.0), r.retrieval_rank or math.inf, r.id)

    return [r.id for r in sorted(rows, key=key)]


def stage_rankings(answer: Answer, ensemble: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
    """Every stage's ranked ids from one answer (made with k = pool, so its rows hold all candidates)."""
    out = {
        "retrieval": [r.id for r in _retrieval_order(answer.rows)],
        "judge": judge_order(answer.rows),
        "fused": [r.id for r in answer.rows],
    }
    if ensemble is not None:
        out = {"ensemble": list(ensemble)} | out
    return out


def fused_order(rows: Sequence[AnswerRow], cfg: FuseConfig) -> list[str]:
    """The answer's order under another fusion config: `posfuse.rank` (the fuse node's own rule) over the
    rows' stored scores and demotion reasons, so no model is called. Demotion does not depend on `cfg`."""
    return [r.id for r in rank([(r.id, r.retrieval) for r in _retrieval_order(rows)],
                               [(r.id, r.judge) for r in rows if r.judge is not None],
                               {r.id: r.demoted for r in rows}, cfg)]


def first_hit(ranking: Sequence[str], relevant: frozenset) -> Optional[int]:
    return next((n for n, i in enumerate(ranking, start=1) if i in relevant), None)


def stage_metrics(records: Sequence[EvalRecord], stages: Sequence[str] = STAGES) -> dict[str, dict]:
    """retrieval.metrics.summarize per stage, over the records that have that stage."""
    out = {}
    for s in stages:
        pairs = [(r.rankings[s], r.relevant) for r in records if s in r.rankings]
        if pairs:
            out[s] = summarize(pairs)
    return out


def deltas(metrics: dict[str, dict], comparisons=COMPARISONS) -> list[dict]:
    """after - before for each metric: positive means the later stage helped, negative that it hurt."""
    out = []
    for before, after in comparisons:
        if before in metrics and after in metrics:
            out.append({"from": before, "to": after,
                        **{m: metrics[after][m] - metrics[before][m] for m in METRICS}})
    return out


# -- fusion tuning -----------------------------------------------------------------------------------------

def fusion_grid() -> list[FuseConfig]:
    """Every distinct setting: parameters a strategy ignores are not varied (rrf uses ranks only)."""
    grid = []
    for strategy in STRATEGIES:
        if strategy == "rrf":
            grid.append(FuseConfig(strategy="rrf"))
            continue
        weights = W_RETRIEVAL if strategy in ("posfuse", "confidence_weighted") else (FuseConfig.w_retrieval,)
        pos_weights = JUDGE_POS_WEIGHTS if strategy != "confidence_weighted" else (FuseConfig.judge_pos_weight,)
        for w, decay, a in itertools.product(weights, DECAYS, pos_weights):
            grid.append(FuseConfig(strategy=strategy, decay=decay, w_retrieval=w, w_judge=round(1.0 - w, 10),
                                   judge_pos_weight=a))
    return grid


def split_queries(queries: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """A seeded half/half split (the tuning half gets the odd one): same seed, same split."""
    order = sorted(queries)
    random.Random(seed).shuffle(order)
    cut = (len(order) + 1) // 2
    return order[:cut], order[cut:]


def _objective(m: dict) -> tuple:
    return tuple(m[k] for k in OBJECTIVE)


def _score(records: Sequence[EvalRecord], cfg: FuseConfig) -> dict:
    return summarize([(fused_order(r.rows, cfg), r.relevant) for r in records])


def tune_fusion(records: Sequence[EvalRecord], seed: int = 0, grid: Optional[Sequence[FuseConfig]] = None,
                default: FuseConfig = FuseConfig()) -> dict:
    """Pick the best grid setting on a seeded half of the queries; report it and the default on the other half.

    Ties on the tuning half (common with few queries) go to the default if it is among the best, else to
    the first in grid order; how many settings tied is reported, because a tie is not evidence.
    """
    usable = [r for r in records if r.rows]
    if len(usable) < 2:
        raise InputError("--tune-fusion needs at least 2 evaluated queries (one to tune on, one to test on)")
    tune_q, test_q = split_queries([r.query for r in usable], seed)
    by_q = {r.query: r for r in usable}
    tune, test = [by_q[q] for q in tune_q], [by_q[q] for q in test_q]
    grid = list(grid) if grid is not None else fusion_grid()
    scored = [(cfg, _score(tune, cfg)) for cfg in grid]
    best_value = max(_objective(m) for _, m in scored)
    tied = [cfg for cfg, m in scored if _objective(m) == best_value]
    best = default if default in tied else tied[0]
    return {
        "seed": seed, "objective": list(OBJECTIVE), "grid_size": len(grid), "tied_best": len(tied),
        "split": {"tune": tune_q, "test": test_q},
        "default": asdict(default), "best": asdict(best),
        "tune": {"default": _score(tune, default), "best": _score(tune, best)},
        "test": {"default": _score(test, default), "best": _score(test, best)},
    }
