"""Multi-positive contrastive loss with class-aware hard negatives, and the classifier loss.

Plain CLIP loss treats every off-diagonal pair as a negative. With ENTRep that is wrong: images sharing one
description, or one class, were pushed apart (KGER). Here every pair that shares a description or a class is a
positive, the targets are the positive mask normalised per row (image -> text) and per column (text -> image),
and cross-entropy runs both ways. Pairs that differ only by side, or only by open/closed vocal folds, are the
errors that matter most (DESIGN.md §4), so they get an extra margin: their logits are raised before the softmax,
which makes the loss push them further apart than an easy negative.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F

from retrieval.lexicon import swap_side_label

_STATE_RX = re.compile(r"(?<![A-Za-z0-9])(open|closed)(?![A-Za-z0-9])", re.I)


def confusable(a: str | None, b: str | None) -> bool:
    """Two different classes that differ only by side (ear-left/ear-right) or by state (vc-open/vc-closed)."""
    if a is None or b is None or a == b:
        return False
    if swap_side_label(a) == b:
        return True
    return _STATE_RX.sub("STATE", a) == _STATE_RX.sub("STATE", b) and bool(_STATE_RX.search(a))


def positive_weights(
    image_captions: Sequence[frozenset[int]],
    image_classes: Sequence[str | None],
    text_ids: Sequence[int],
    text_classes: Sequence[str | None],
    class_weight: float = 1.0,
) -> torch.Tensor:
    """(B_img, B_txt) weights: 1 where the text is one of the image's captions, `class_weight` where they only
    share a class (the text's class is the class of the image it was drawn for), 0 for negatives."""
    w = torch.zeros(len(image_captions), len(text_ids))
    for i, (caps, ci) in enumerate(zip(image_captions, image_classes)):
        for j, (t, cj) in enumerate(zip(text_ids, text_classes)):
            if t in caps:
                w[i, j] = 1.0
            elif ci is not None and ci == cj:
                w[i, j] = class_weight
    return w


def hard_negatives(image_classes: Sequence[str | None], text_classes: Sequence[str | None]) -> torch.Tensor:
    return torch.tensor([[confusable(a, b) for b in text_classes] for a in image_classes], dtype=torch.bool)


def multi_positive_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    logit_scale: torch.Tensor,
    weights: torch.Tensor,
    hard: torch.Tensor | None = None,
    margin: float = 0.0,
) -> torch.Tensor:
    """Symmetric soft-target cross-entropy over cosine logits; `weights` must give every row and column a
    positive (each image's own caption is one)."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    cos = img @ txt.T
    if hard is not None and margin:
        cos = cos + margin * (hard & (weights == 0)).to(cos.dtype)
    logits = logit_scale.exp() * cos
    pos = weights > 0
    if not bool(pos.any(1).all() and pos.any(0).all()):
        raise ValueError("every image and every text needs at least one positive")
    rows = weights / weights.sum(1, keepdim=True)
    cols = weights / weights.sum(0, keepdim=True)
    i2t = -(rows * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(cols * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (i2t + t2i) / 2


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy on labelled views only (label -1 = unknown); 0 when a batch has none."""
    known = labels >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known], labels[known], label_smoothing=smoothing)
