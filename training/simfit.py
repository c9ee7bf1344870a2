"""Choose the image-to-image similarity on out-of-fold pairs during `kger train` (issue 21).

Every held-out training image is a query twice: as it is (its class is the answer) and mirrored through the
trunk (the other side's class is the answer: a mirrored left ear shows a right ear). The gallery is every training image as it is, the
query's own image left out. Each image's class probabilities come from the fold that held it out, so no pair
is judged by a head that saw either image; the trunk, side and colour blocks come from the frozen trunk and
the pixels, which no fold trains. The ensemble vector is not a candidate here (each image's out-of-fold vector
lives in another fold's space); bench/blind_quality.py measures it on blind held-out images.

The grid is small on purpose (tens of images): a weight per block from a few values; the score is class P@1
plus the same-side share of the top 5 (plain and mirrored queries). Ties go to the earlier, simpler choice.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from retrieval.preprocess import load_for_model
from retrieval.similarity import UNTRAINED, Similarity, as_map, probs_block, side_parts
from retrieval.trust import colour_descriptor

GRID = {"trunk": (0.0, 1.0), "side": (0.0, 0.25, 0.5, 1.0, 2.0), "colour": (0.0, 0.25, 0.5),
        "probs": (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)}


def region_side(c: str) -> tuple[str, str | None]:
    """('ear', 'left') for 'ear-left'; classes without a side suffix have none."""
    head, _, tail = c.rpartition("-")
    return (head, tail) if tail in ("left", "right") else (c, None)


def figures(sims: np.ndarray, want: Sequence[str], gallery: Sequence[str], exclude: Sequence[int]) -> dict:
    """Class P@1, P@5 and the same-side share of the top 5 (among neighbours from the query's region, for
    sided queries) of queries whose similarity rows to the gallery are `sims`; `exclude[i]` is left out."""
    p1, p5, side = [], [], []
    for i, row in enumerate(np.asarray(sims, dtype=np.float64)):
        row = row.copy()
        if exclude[i] >= 0:
            row[exclude[i]] = -np.inf
        top = [j for j in np.argsort(-row, kind="stable")[:5] if np.isfinite(row[j])]
        got = [gallery[j] for j in top]
        p1.append(float(bool(got) and got[0] == want[i]))
        p5.append(sum(g == want[i] for g in got) / 5)
        reg, s = region_side(want[i])
        same = [g for g in got if region_side(g)[0] == reg]
        if s is not None and same:
            side.append(sum(region_side(g)[1] == s for g in same) / len(same))
    mean = (lambda v: round(float(np.mean(v)), 4) if v else None)
    return {"P@1": mean(p1), "P@5": mean(p5), "same_side": mean(side), "n": len(p1)}


def other_side(c: str) -> str:
    reg, s = region_side(c)
    return c if s is None else f"{reg}-{'right' if s == 'left' else 'left'}"


@torch.no_grad()
def out_of_fold_blocks(ens, views, splits, temperature: float, paths: Sequence[Path]):
    """(plain blocks, mirrored blocks, class names, mirrored class names) of every held-out labelled image.
    The mirror is the image flipped through the trunk, exactly what a user's mirrored file gives; the class
    probabilities of both come from the fold that held the image out."""
    held = {n: f for f, (_, val) in enumerate(splits) for n in val if ens.image_tops[f].classifier is not None}
    keep = [n for n in sorted(held) if int(views.labels[n, 0]) >= 0]
    if not keep:
        return {}, {}, [], []
    x = torch.stack([load_for_model(paths[n], ens.spec.image_size, ens.mean, ens.std) for n in keep])
    colour = colour_descriptor(x, ens.mean, ens.std).numpy()  # a histogram: the same for the mirror
    out = {}
    for kind, feats in (("plain", views.feats[keep, 0].float()), ("mirrored", ens.image_trunk(x.flip(-1)))):
        trunk, side = side_parts(as_map(ens, feats))
        probs = []
        for i, n in enumerate(keep):
            top = ens.image_tops[held[n]].eval()
            _, pooled = top(feats[i : i + 1])
            probs.append(probs_block(top.classifier(pooled)[None], temperature)[0])
        out[kind] = {"trunk": trunk, "side": side, "probs": np.stack(probs), "colour": colour}
    names = [ens.classes[int(views.labels[n, 0])] for n in keep]
    return out["plain"], out["mirrored"], names, [other_side(c) for c in names]


def evaluate(weights: dict, g: dict, q: dict, names: list, names_m: list) -> dict:
    """Held-out figures of one weighting: plain queries and mirrored queries against the plain gallery."""
    sim = Similarity(weights)
    G, Q = sim.combine(g), sim.combine(q)
    own = list(range(len(names)))
    plain = figures(G @ G.T, names, names, own)
    mirror = figures(Q @ G.T, names_m, names, own)
    return {"plain": plain, "mirrored": mirror}


def score(fig: dict) -> float:
    p, m = fig["plain"], fig["mirrored"]
    return (p["P@1"] or 0) + (p["same_side"] or 0) + (m["P@1"] or 0) + (m["same_side"] or 0)


def fit_similarity(ens, views, splits, calibration: dict, paths: Sequence[Path]) -> dict:
    """The manifest's `similarity` entry: the best grid weighting on out-of-fold pairs, with the figures of
    every single block, of the untrained default and of the choice; {} when nothing was held out."""
    if not ens.classes or not calibration:
        return {}
    g, q, names, names_m = out_of_fold_blocks(ens, views, splits, float(calibration["temperature"]), paths)
    if len(names) < 3:
        return {}
    best, best_score = None, -1.0
    for values in itertools.product(*GRID.values()):
        weights = {b: w for b, w in zip(GRID, values) if w > 0}
        if not weights:
            continue
        s = score(evaluate(weights, g, q, names, names_m))
        if s > best_score + 1e-9:
            best, best_score = weights, s
    candidates = {b: evaluate({b: 1.0}, g, q, names, names_m) for b in GRID}
    candidates["untrained default"] = evaluate(dict(UNTRAINED), g, q, names, names_m)
    heldout = {"method": "out-of-fold pairs, grid search", "n_images": len(names),
               "chosen": evaluate(best, g, q, names, names_m), "candidates": candidates}
    return Similarity(best, float(calibration["temperature"]), "fitted on out-of-fold pairs", heldout).entry()


@torch.no_grad()
def refit(bundle_dir: str | Path, data_dir: str | Path) -> dict:
    """Fit and write the similarity of a bundle trained before issue 21, from its training data (the folds are
    re-drawn as `kger train` drew them: same items, K and seed). Returns the manifest entry."""
    from types import SimpleNamespace

    from retrieval.bundle import load_bundle
    from retrieval.manifest import set_manifest_entry
    from training.data import load_dataset
    from training.folds import assign_folds, split

    bundle = load_bundle(bundle_dir)
    ens, manifest = bundle.ensemble, bundle.manifest
    items = load_dataset(data_dir).items
    fold_ids = assign_folds(items, manifest["folds"], manifest.get("seed", 0))
    paths = [it.path for it in items]
    x = torch.stack([load_for_model(p, ens.spec.image_size, ens.mean, ens.std) for p in paths])
    labels = torch.tensor([[ens.classes.index(it.label) if it.label in ens.classes else -1] for it in items])
    views = SimpleNamespace(feats=ens.image_trunk(x)[:, None], labels=labels)
    entry = fit_similarity(ens, views, [split(fold_ids, f) for f in range(manifest["folds"])],
                           manifest.get("calibration") or {}, paths)
    set_manifest_entry(bundle_dir, "similarity", entry)
    return entry
