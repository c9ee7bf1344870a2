"""K folds, grouped and stratified: no image and no description is ever on both sides of a split.

Images that share a description are one group (a description is one retrieval target: splitting it would let
validation score an image whose caption the fold trained on). Groups are dealt to folds class by class, biggest
first, each to the fold holding the fewest of that class, so every fold sees every class. Seeded: the same
items and seed give the same folds on every machine. (scikit-learn's StratifiedGroupKFold does the same job but
is only a test dependency here.)
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from training.data import Item


def groups(items: Sequence[Item]) -> list[int]:
    """Group id per item: connected components of "shares a description" (union-find)."""
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, it in enumerate(items):
        for d in it.descriptions:
            j = first.setdefault(d, i)
            parent[find(i)] = find(j)
    roots = [find(i) for i in range(len(items))]
    ids = {r: n for n, r in enumerate(dict.fromkeys(roots))}
    return [ids[r] for r in roots]


def max_folds(items: Sequence[Item]) -> tuple[int, str | None]:
    """The most folds that still put every class in every validation split, and the limiting class."""
    gid = groups(items)
    per_class: dict[str, set[int]] = {}
    for it, g in zip(items, gid):
        per_class.setdefault(it.label or "(unlabelled)", set()).add(g)
    cls, n = min(((c, len(s)) for c, s in per_class.items()), key=lambda x: (x[1], x[0]))
    return n, cls


def clamp_folds(items: Sequence[Item], k: int) -> tuple[int, str | None]:
    """K itself, or the largest K every class can fill (at least 2), with a message saying why it changed."""
    if k <= 1:
        return k, None
    n_groups = len(set(groups(items)))
    limit, cls = max_folds(items)
    new = max(2, min(k, limit, n_groups))
    if new >= k:
        return k, None
    if n_groups < k:
        return new, f"{k} folds need at least {k} independent images, the data has {n_groups}: using {new} folds"
    return new, (f"{k} folds need at least {k} images of each class, but {cls} has {limit}: using {new} folds "
                 f"(pass --folds {new} or fewer to silence this)")


def assign_folds(items: Sequence[Item], k: int, seed: int = 0) -> list[int]:
    """Fold id (0..k-1) per item; deterministic in (items' content, k, seed)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    gid = groups(items)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(gid):
        members.setdefault(g, []).append(i)
    # A group's stratum is its most common label (ties: alphabetical); unlabelled images form their own.
    stratum = {}
    for g, idx in members.items():
        counts = Counter(items[i].label or "" for i in idx)
        stratum[g] = min(counts, key=lambda c: (-counts[c], c))
    # Order by content, not by input order or path, then shuffle with the seed.
    order = sorted(members, key=lambda g: min(items[i].sha for i in members[g]))
    rng = np.random.default_rng(seed)
    order = [order[i] for i in rng.permutation(len(order))]
    tie = rng.permutation(k)  # which fold wins ties, so fold 0 is not always the biggest
    per_class = np.zeros((k,), dtype=np.int64)
    total = np.zeros((k,), dtype=np.int64)
    fold_of_group: dict[int, int] = {}
    for s in sorted(set(stratum.values())):
        per_class[:] = 0
        gs = sorted((g for g in order if stratum[g] == s), key=lambda g: -len(members[g]))  # stable: keeps shuffle
        for g in gs:
            f = min(range(k), key=lambda f: (per_class[f], total[f], tie[f]))
            fold_of_group[g] = f
            per_class[f] += len(members[g])
            total[f] += len(members[g])
    return [fold_of_group[g] for g in gid]


def split(fold_ids: Sequence[int], f: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) for fold f."""
    train = [i for i, g in enumerate(fold_ids) if g != f]
    val = [i for i, g in enumerate(fold_ids) if g == f]
    return train, val


def holdout(items: Sequence[Item], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """A grouped, stratified validation share for a single model (K=1); empty when fraction is 0."""
    if not 0 <= fraction < 1:
        raise ValueError("val_fraction must be in [0, 1)")
    if fraction == 0:
        return list(range(len(items))), []
    k = max(2, round(1 / fraction))
    return split(assign_folds(items, k, seed), 0)
