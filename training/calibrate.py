"""Calibrate the class head on its out-of-fold predictions and measure when to trust it (issue 11).

K-fold training holds every image out of exactly one fold, so every training image has an honest
prediction: the logits of the fold that never saw it. On those:
- a temperature T is fitted by minimising the negative log-likelihood (Guo et al. 2017, "On Calibration of
  Modern Neural Networks"): one parameter, so it cannot overfit tens of images the way per-class maps would;
- the expected calibration error is recorded before and after;
- per class, the trust threshold is the lowest calibrated confidence from which the out-of-fold predictions
  of that class are at least 98 % precise, as a lower confidence bound (six right out of six is not a
  measured 98 %: on 6 images per class the raw ratio trusted wrong predictions a third of the time); a
  class that never gets there is never trusted (threshold above 1);
- the familiarity threshold is a low quantile of the training images' leave-one-out closeness to each other
  (retrieval/trust.py), so held-out images like the training ones pass and other devices do not.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from retrieval.preprocess import load_for_model
from retrieval.trust import NEVER, descriptor, familiarity, write_reference

TARGET_PRECISION = 0.98
MIN_SUPPORT = 3  # predictions at or above a threshold needed before its precision means anything
BOUND_Z = 1.0  # the precision must reach the target as a one-sided ~84 % Wilson lower bound, not a raw ratio
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


def precision_bound(right: int, n: int, z: float = BOUND_Z) -> float:
    """Wilson score lower bound of a precision measured as right / n (z = 0: the plain ratio)."""
    if n == 0:
        return 0.0
    p, z2 = right / n, z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (centre - margin) / (1 + z2 / n)


def trust_thresholds(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                     target: float = TARGET_PRECISION, min_support: int = MIN_SUPPORT,
                     z: float = BOUND_Z) -> dict[str, float]:
    """Per class: the lowest confidence t such that predictions of that class with confidence >= t are at
    least `target` precise, as a lower confidence bound (`precision_bound`) over at least `min_support` of
    them; NEVER (> 1) when no t qualifies. With z = 1, 98 % is only established from about 49 right
    predictions without a miss: a head measured on a handful of images per class is not trusted."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    conf, pred = probs.max(1), probs.argmax(1)
    out = {}
    for c, name in enumerate(classes):
        mine = pred == c
        cs, ok = conf[mine], (labels[mine] == c)
        best = NEVER
        for t in sorted(set(cs.tolist()), reverse=True):  # from the most confident down
            above = cs >= t
            if above.sum() >= min_support and precision_bound(int(ok[above].sum()), int(above.sum()), z) >= target:
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


def calibrate(ens, views, splits, paths: Sequence[Path], out) -> dict:
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
    n = torch.arange(len(paths))
    feats = views.features(n, torch.zeros_like(n))
    x = torch.stack([load_for_model(p, ens.spec.image_size, ens.mean, ens.std) for p in paths])
    desc = descriptor(feats, x, ens.mean, ens.std)
    fam_at, loo = familiar_threshold(desc)
    ref = write_reference(out, desc, [Path(p).name for p in paths])
    return {
        "method": "temperature", "temperature": round(t, 4), "n_out_of_fold": int(len(labels)),
        "ece_before": round(ece(raw, labels), 4), "ece_after": round(ece(cal, labels), 4),
        "accuracy_out_of_fold": round(float((cal.argmax(1) == labels).mean()), 4),
        "target_precision": TARGET_PRECISION, "min_support": MIN_SUPPORT, "bound_z": BOUND_Z,
        "thresholds": trust_thresholds(cal, labels, ens.classes),
        "familiarity": {"kind": "trunk_and_colour_cosine", "threshold": round(fam_at, 4), "reference": ref,
                        "n_reference": len(paths), "quantile": FAMILIAR_QUANTILE, "slack": FAMILIAR_SLACK,
                        "loo_min": round(float(loo.min()), 4) if len(loo) else None},
    }


def thresholds_text(thresholds: Optional[dict]) -> str:
    """Trust thresholds as a person reads them: 'ear-left >= 0.93, nose-right never, ...' (never: no
    confidence was shown precise enough, so that class's predictions are not trusted as labels)."""
    if not thresholds:
        return "none"
    return ", ".join(f"{name} {'never' if t > 1 else f'>= {t:.2f}'}" for name, t in thresholds.items())
