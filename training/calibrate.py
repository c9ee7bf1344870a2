"""Calibrate the class head on its out-of-fold predictions and measure when to trust it (issue 11).

K-fold training holds every image out of exactly one fold, so every training image has an honest
prediction: the logits of the fold that never saw it. On those:
- a temperature T is fitted by minimising the negative log-likelihood (Guo et al. 2017, "On Calibration of
  Modern Neural Networks"): one parameter, so it cannot overfit tens of images the way per-class maps would;
- the expected calibration error is recorded before and after;
- per class, the trust threshold is the lowest calibrated confidence from which the out-of-fold predictions
  of that class are at least 98 % precise (and at least MIN_SUPPORT of them); a class that never gets there
  is never trusted (threshold above 1);
- the familiarity threshold is a low quantile of the training images' leave-one-out closeness to each other
  (retrieval/trust.py), so held-out images like the training ones pass and other devices do not.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from retrieval.trust import NEVER, familiarity, trunk_descriptor, write_reference

TARGET_PRECISION = 0.98
MIN_SUPPORT = 3  # predictions at or above a threshold needed before its precision means anything
FAMILIAR_QUANTILE = 0.05  # share of training images (leave-one-out) allowed to fall below the threshold
FAMILIAR_SLACK = 0.02  # cosine margin below that quantile: a held-out image is a little less close than LOO
ECE_BINS = 10


def fit_temperature(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """T > 0 minimising the NLL of softmax(logits / T); optimised in log T so it stays positive."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(y) == 0:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, 0.05), 20.0) if math.isfinite(t) else 1.0


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top class: sum over equal-width confidence bins of
    share * |accuracy - mean confidence|."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    conf, pred = probs.max(1), probs.argmax(1)
    right = (pred == labels).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    return float(total)


def trust_thresholds(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                     target: float = TARGET_PRECISION, min_support: int = MIN_SUPPORT) -> dict[str, float]:
    """Per class: the lowest confidence t such that predictions of that class with confidence >= t are at
    least `target` precise, counting at least `min_support` of them; NEVER (> 1) when no t qualifies."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    conf, pred = probs.max(1), probs.argmax(1)
    out = {}
    for c, name in enumerate(classes):
        mine = pred == c
        cs, ok = conf[mine], (labels[mine] == c)
        best = NEVER
        for t in sorted(set(cs.tolist()), reverse=True):  # from the most confident down
            above = cs >= t
            if above.sum() >= min_support and ok[above].mean() >= target:
                best = t
        out[name] = round(float(best), 4) if best < NEVER else NEVER
    return out


def familiar_threshold(desc: torch.Tensor) -> tuple[float, np.ndarray]:
    """(threshold, leave-one-out closeness of each training image to the others)."""
    loo = familiarity(desc, desc, exclude_self=True)
    if len(loo) < 2:
        return 1.0, loo
    return float(np.quantile(loo, FAMILIAR_QUANTILE) - FAMILIAR_SLACK), loo


@torch.no_grad()
def out_of_fold(ens, views, splits: Sequence[tuple[Sequence[int], Sequence[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, C), labels (N,)) of every labelled image from the fold that held it out (plain view)."""
    logits, labels = [], []
    for f, (_, val) in enumerate(splits):
        top = ens.image_tops[f]
        if not val or top.classifier is None:
            continue
        n = torch.as_tensor(list(val), dtype=torch.long)
        top.eval()
        _, pooled = top(views.features(n, torch.zeros_like(n)).float())
        y = views.labels[n, 0]
        known = y >= 0
        logits.append(top.classifier(pooled)[known])
        labels.append(y[known])
    if not logits:
        return np.zeros((0, len(ens.classes or []))), np.zeros(0, dtype=np.int64)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def calibrate(ens, views, splits, names: Sequence[str], out) -> dict:
    """Fit everything above, write the familiarity reference into the bundle `out`, return the manifest block
    (empty when there is nothing to calibrate on: no classes or no held-out images)."""
    if not ens.classes:
        return {}
    logits, labels = out_of_fold(ens, views, splits)
    if len(labels) == 0:
        return {}
    t = fit_temperature(logits, labels)
    raw = torch.as_tensor(logits).softmax(-1).numpy()
    cal = (torch.as_tensor(logits) / t).softmax(-1).numpy()
    n = torch.arange(len(names))
    desc = trunk_descriptor(views.features(n, torch.zeros_like(n)))
    fam_at, loo = familiar_threshold(desc)
    ref = write_reference(out, desc, names)
    return {
        "method": "temperature", "temperature": round(t, 4), "n_out_of_fold": int(len(labels)),
        "ece_before": round(ece(raw, labels), 4), "ece_after": round(ece(cal, labels), 4),
        "accuracy_out_of_fold": round(float((cal.argmax(1) == labels).mean()), 4),
        "target_precision": TARGET_PRECISION, "min_support": MIN_SUPPORT,
        "thresholds": trust_thresholds(cal, labels, ens.classes),
        "familiarity": {"kind": "trunk_cosine", "threshold": round(fam_at, 4), "reference": ref,
                        "n_reference": len(names), "quantile": FAMILIAR_QUANTILE, "slack": FAMILIAR_SLACK,
                        "loo_min": round(float(loo.min()), 4) if len(loo) else None},
    }
