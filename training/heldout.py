"""Held-out checks of a trained ensemble: plain class descriptions ("left ear") searched over unseen images.

Used by the acceptance test and bench/laterality.py, so both measure the same thing: for each class, does its
plain description rank an image of that class first (class Recall@1), how many of the top 3 are of that class
(P@3), and how many of the top 3 are the same site on the other side (left/right confusions).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from retrieval import lexicon
from retrieval.metrics import mrr, precision_at_k, recall_at_k
from retrieval.manifest import file_sha256
from retrieval.preprocess import load_for_model


def split_per_class(labels: dict[str, str], image_dir: Path, n_train: int, seed: int = 0
                    ) -> tuple[dict[str, str], dict[str, str]]:
    """(train, held-out) name -> class: n_train distinct images per class, seeded; a file whose content is
    also in the training half (a duplicate under another name) is never held out."""
    rng = random.Random(seed)
    sha = {n: file_sha256(image_dir / n) for n in labels}
    train: dict[str, str] = {}
    for cls in sorted(set(labels.values())):
        names = sorted(n for n, c in labels.items() if c == cls)
        rng.shuffle(names)
        seen: set[str] = set()
        for n in names:
            if len(seen) < n_train and sha[n] not in seen:
                seen.add(sha[n])
                train[n] = cls
    train_shas = {sha[n] for n in train}
    held = {n: c for n, c in labels.items() if sha[n] not in train_shas}
    return train, held


def write_entrep_layout(root: Path, labels: dict[str, str], image_dir: Path) -> Path:
    """An ENTRep folder (imgs/ + cls.json) whose images are links to the originals: nothing is copied."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    for n in labels:
        link = root / "imgs" / n
        if not link.exists():
            link.symlink_to((image_dir / n).resolve())
    (root / "cls.json").write_text(json.dumps(labels, indent=1))
    return root


@dataclass
class ClassRow:
    cls: str
    query: str
    top3: list[str]  # classes of the top three images
    r1: float
    p3: float
    mrr: float
    lr_confusions: int  # top-3 images of the same site, other side


@torch.no_grad()
def encode_gallery(ens, paths: Sequence[Path], batch: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
    vecs, probs = [], []
    for i in range(0, len(paths), batch):
        x = torch.stack([load_for_model(p, ens.spec.image_size, ens.mean, ens.std) for p in paths[i : i + batch]])
        v, p = ens.encode_images(x)
        vecs.append(v)
        if p is not None:
            probs.append(p)
    return np.concatenate(vecs), (np.concatenate(probs) if probs else None)


def class_search(ens, gallery: dict[str, str], image_dir: Path, classes: Sequence[str] = lexicon.CLASSES,
                 encoded: tuple[np.ndarray, np.ndarray | None] | None = None) -> tuple[list[ClassRow], float | None]:
    """One row per class (query = its plain description), and the classifier head's accuracy on the gallery."""
    names = sorted(gallery)
    vecs, probs = encoded or encode_gallery(ens, [image_dir / n for n in names])
    queries = [lexicon.class_description(c) for c in classes]
    sims = ens.encode_texts(queries) @ vecs.T  # the exact ensemble score (mean cosine over folds)
    rows = []
    for cls, query, row in zip(classes, queries, sims):
        ranked = [names[j] for j in np.argsort(-row, kind="stable")]
        relevant = {n for n in names if gallery[n] == cls}
        other = lexicon.swap_side_label(cls)
        top3 = [gallery[n] for n in ranked[:3]]
        rows.append(ClassRow(cls, query, top3, recall_at_k(ranked, relevant, 1), precision_at_k(ranked, relevant, 3),
                             mrr(ranked, relevant), sum(other != cls and c == other for c in top3)))
    acc = None
    if probs is not None and ens.classes:
        pred = [ens.classes[i] for i in probs.argmax(1)]
        acc = float(np.mean([p == gallery[n] for p, n in zip(pred, names)]))
    return rows, acc


def format_rows(rows: Sequence[ClassRow], acc: float | None = None, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'class':11s} {'query':20s} {'R@1':>4s} {'P@3':>5s} {'MRR':>5s} {'L/R':>3s}  top-3 classes")
    for r in rows:
        lines.append(f"{r.cls:11s} {r.query:20s} {r.r1:4.0f} {r.p3:5.2f} {r.mrr:5.2f} {r.lr_confusions:3d}  "
                     f"{', '.join(r.top3)}")
    lines.append(f"{'mean':11s} {'':20s} {np.mean([r.r1 for r in rows]):4.2f} {np.mean([r.p3 for r in rows]):5.2f} "
                 f"{np.mean([r.mrr for r in rows]):5.2f} {sum(r.lr_confusions for r in rows):3d}"
                 + (f"  classifier-head accuracy {acc:.2f}" if acc is not None else ""))
    return "\n".join(lines)
