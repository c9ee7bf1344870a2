"""Image-to-image similarity that knows left from right (issue 21): "more like this" for `similar`.

The ensemble's 64*K vector is trained to meet text, and a left ear finds right ears about as often as left ones
with it (blind held-out splits, issue 21). So image-to-image search ranks by a vector of its own, built from
blocks that one encoding pass already computes, each a unit vector, weighted, concatenated:

- ``trunk``: the frozen trunk's feature map averaged over the frame (site, texture; shared by every fold);
- ``side``: the same map's left half minus its right half (DESIGN §4): a mirrored image gives the negated
  vector, so this block tells the sides apart where whole-frame pooling cannot;
- ``colour``: the lit pixels' joint RGB histogram (retrieval/trust.py), the same for an image and its mirror;
- ``probs``: the square roots of the calibrated class probabilities (their cosine is the Bhattacharyya
  coefficient), present only for a bundle with a class head; the head was trained on mirrored views with the
  side swapped, so it moves an image and its mirror to opposite sides;
- ``vector``: the ensemble vector itself.

With weights w_b, the cosine of two such vectors is sum_b w_b cos_b / sum_b w_b: one Chroma query ranks by the
weighted combination, so "more like this" is one indexed lookup (store/similar.py holds the vectors).
`kger train` chooses the weights on out-of-fold pairs (training/simfit.py) and writes them, with the held-out
figures of every candidate, into the manifest's ``similarity`` entry; a bundle without one (`kger bundle init`,
bundles made before) gets `UNTRAINED`, the best untrained choice measured the same way.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

FORMAT = 1
BLOCKS = ("trunk", "side", "colour", "probs", "vector")
# Measured on the 70 real images, leave one out, each image and its mirror as queries, with the untrained
# EfficientNet-Lite0 trunk: trunk 1 / side 0.36 / colour 0.25 gave class P@1 0.73, same-side share of the
# top 5 0.68 (mirrored queries 0.77); the trunk alone 0.50 / 0.49, the untrained ensemble vector 0.43 / 0.54.
UNTRAINED = {"trunk": 1.0, "side": 0.36, "colour": 0.25}


@dataclass(frozen=True)
class Similarity:
    """Which blocks, with which weights; `temperature` calibrates the class probabilities (1: uncalibrated)."""

    weights: Mapping[str, float]
    temperature: float = 1.0
    source: str = "untrained default"
    heldout: dict = field(default_factory=dict, compare=False)

    @property
    def blocks(self) -> list[str]:
        return [b for b in BLOCKS if self.weights.get(b, 0) > 0]

    @property
    def id(self) -> str:
        """What a stored vector was made with: a store holding vectors of another id cannot be queried with these."""
        basis = {"format": FORMAT, "weights": {b: round(float(self.weights[b]), 6) for b in self.blocks},
                 "temperature": round(float(self.temperature), 6)}
        return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]

    def entry(self) -> dict:
        """The manifest's `similarity` entry."""
        return {"format": FORMAT, "weights": {b: float(self.weights[b]) for b in self.blocks},
                "temperature": float(self.temperature), "source": self.source, "id": self.id,
                "heldout": self.heldout}

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Similarity":
        """The bundle's fitted similarity, else the untrained default (also for bundles trained before issue 21)."""
        entry = manifest.get("similarity")
        if isinstance(entry, dict) and entry.get("format") == FORMAT and isinstance(entry.get("weights"), dict):
            weights = {b: float(w) for b, w in entry["weights"].items() if b in BLOCKS and float(w) > 0}
            if weights:
                return cls(weights, float(entry.get("temperature", 1.0)), str(entry.get("source", "fitted")),
                           entry.get("heldout") or {})
        return cls(dict(UNTRAINED))

    def combine(self, parts: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, D) unit vectors from the (B, d_b) blocks: sqrt(w_b) * unit block, concatenated, / sqrt(sum w)."""
        total = sum(self.weights[b] for b in self.blocks)
        cols = [math.sqrt(self.weights[b] / total) * unit(np.asarray(parts[b], dtype=np.float32)) for b in self.blocks]
        return np.concatenate(cols, axis=1).astype(np.float32)


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32).reshape(len(a), -1)
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return np.where(n > 0, a / np.maximum(n, 1e-12), 0.0).astype(np.float32)


def side_parts(feature_map) -> tuple[np.ndarray, np.ndarray]:
    """(whole-frame mean, left half minus right half) of a (B, C, H, W) map; odd widths share the middle
    column, as `LRSplitPool` does, so a mirrored image gives exactly (same, negated) up to the convolutions."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(feature_map).float()
    halves = F.adaptive_avg_pool2d(x, (1, 2)).flatten(2)  # (B, C, 2)
    return x.mean(dim=(2, 3)).numpy(), (halves[..., 0] - halves[..., 1]).numpy()


def as_map(ens, feats):
    """The trunk's output as a (B, C, H, W) map: a ViT trunk's patch tokens laid back on their grid."""
    if feats.ndim == 4:
        return feats
    head = ens.image_tops[0].head  # TokensToMap: where the prefix tokens end and the grid's shape
    x = feats[:, head.prefix:]
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *head.grid)


def probs_block(fold_logits, temperature: float) -> np.ndarray:
    """sqrt of the calibrated, fold-averaged class probabilities: unit vectors (the probabilities sum to 1)."""
    from retrieval.trust import calibrated_probs

    return np.sqrt(np.clip(calibrated_probs(fold_logits, temperature), 0, None)).astype(np.float32)


def blocks_for(ens, x, feats, vec, fold_logits, temperature: float, need: Optional[list[str]] = None) -> dict:
    """Every block (or those in `need`) of a batch from one encoding pass (`encode_images_detailed`'s outputs
    and the model input `x`)."""
    from retrieval.trust import colour_descriptor

    need = list(need or BLOCKS)
    out: dict[str, np.ndarray] = {}
    if "trunk" in need or "side" in need:
        out["trunk"], out["side"] = side_parts(as_map(ens, feats))
    if "colour" in need:
        out["colour"] = colour_descriptor(x, ens.mean, ens.std).numpy()
    if "probs" in need and fold_logits is not None:
        out["probs"] = probs_block(fold_logits, temperature)
    if "vector" in need:
        out["vector"] = np.asarray(vec, dtype=np.float32)
    return out


def usable(sim: Similarity, classes) -> Similarity:
    """`sim` without the blocks a bundle without these classes cannot make (no class head: no probabilities)."""
    if "probs" in sim.blocks and not classes:
        weights = {b: w for b, w in sim.weights.items() if b != "probs"}
        return Similarity(weights or dict(UNTRAINED), sim.temperature, sim.source, sim.heldout)
    return sim


def encode(ens, sim: Similarity, x, feats, vec, fold_logits) -> np.ndarray:
    """The stored image-to-image vectors of a batch."""
    sim = usable(sim, ens.classes)
    return sim.combine(blocks_for(ens, x, feats, vec, fold_logits, sim.temperature, sim.blocks))


def encode_images(ens, sim: Similarity, x) -> tuple[np.ndarray, np.ndarray]:
    """(ensemble vectors, similarity vectors) of preprocessed images (B, 3, S, S): one trunk pass."""
    import torch

    with torch.no_grad():
        xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
        vec, logits, feats = ens.encode_images_detailed(xt)
    return vec, encode(ens, sim, xt, feats, vec, logits)
