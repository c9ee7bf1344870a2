"""Trust in a predicted class, only as far as it was measured (issue 11).

A class head trained on tens of images is right on images like its training images and confidently wrong on
others (another device, another hospital, a greyscale frame). So a prediction acts as a label (in filters and
the hard constraint) only when both hold:
- its calibrated probability reaches its class's *trust threshold*: the confidence from which the head's
  out-of-fold predictions of that class were >= 98 % precise (fitted by training/calibrate.py; a class that
  never got there has a threshold above 1 and is never trusted);
- the image is *familiar*: its descriptor (frozen-trunk statistics and colour histogram) is about as close
  to some training image as the training images are to each other (the threshold is a low quantile of
  their leave-one-out closeness).
Everything needed at index time lives in the bundle: the manifest's `calibration` block and the training
images' descriptors in `reference.safetensors`. A bundle without them (untrained, old) trusts nothing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

REFERENCE_FILE = "reference.safetensors"
COLOUR_BINS = 4  # per channel: a 64-bin joint RGB histogram
NEVER = 1.01  # a trust threshold no probability reaches


def trunk_descriptor(feats: torch.Tensor) -> torch.Tensor:
    """(B, d) unit vectors from the frozen trunk's output: per-channel mean and spread over space.

    The trunk is shared by every fold and never trained, so the descriptor means the same for every bundle
    built on it; mean and spread keep colour and texture statistics that a greyscale or drawn frame lacks."""
    x = feats.float()
    x = x.flatten(2) if x.ndim == 4 else x.transpose(1, 2)  # (B, C, positions)
    return F.normalize(torch.cat([x.mean(-1), x.std(-1)], dim=-1), dim=-1)


def colour_descriptor(x: torch.Tensor, mean, std, bins: int = COLOUR_BINS) -> torch.Tensor:
    """(B, bins**3) unit vectors: the square root of each model input's joint RGB histogram over its lit
    pixels (the black surround left out), so a cosine is the Bhattacharyya coefficient of two histograms.
    Another camera's colour cast, a greyscale frame (all mass on the grey diagonal) or a drawing (a few flat
    colours) is far from every training frame here even when its shapes are not."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    rgb = (x.float() * s + m).clamp(0, 1)
    q = (rgb * bins).long().clamp(max=bins - 1)
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # (B, H, W)
    lit = rgb.amax(1) > 0.08
    hist = torch.zeros(len(x), bins**3)
    hist.scatter_add_(1, idx.flatten(1), lit.flatten(1).float())
    return F.normalize(hist.clamp(min=0).sqrt(), dim=-1)


def descriptor(feats: torch.Tensor, x: torch.Tensor, mean, std) -> torch.Tensor:
    """Trunk and colour descriptors side by side, each unit, so a cosine is the mean of the two cosines."""
    return torch.cat([trunk_descriptor(feats), colour_descriptor(x, mean, std)], dim=-1) / 2**0.5


def familiarity(desc: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray,
                exclude_self: bool = False) -> np.ndarray:
    """Largest cosine of each descriptor to the reference (training) descriptors.

    `exclude_self`: desc is the reference itself; each row's own entry and exact duplicates are left out
    (the leave-one-out closeness that the threshold is measured on)."""
    d = torch.as_tensor(np.asarray(desc), dtype=torch.float32)
    r = torch.as_tensor(np.asarray(reference), dtype=torch.float32)
    if r.numel() == 0:
        return np.zeros(len(d))
    sims = d @ r.T
    if exclude_self:
        sims = sims.masked_fill(sims > 1 - 1e-6, -1.0)
    return sims.max(dim=1).values.numpy()


def calibrated_probs(fold_logits: torch.Tensor | np.ndarray, temperature: float) -> np.ndarray:
    """(B, C): the mean over folds of softmax(logits / T); fold_logits is (K, B, C)."""
    z = torch.as_tensor(np.asarray(fold_logits), dtype=torch.float32)
    return (z / temperature).softmax(-1).mean(0).numpy()


def is_trusted(prob: float, threshold: float, familiarity_score: float, familiar_at: float) -> bool:
    """The one trust rule: the class's measured threshold is reached AND the image is familiar."""
    return bool(prob >= threshold and familiarity_score >= familiar_at)


@dataclass(frozen=True)
class Assessment:
    """What the indexer stores about one image's predicted class."""

    predicted: str
    prob: float  # calibrated probability of `predicted`
    probs: dict[str, float]  # calibrated probability of every class
    familiarity: float
    familiar: bool
    trusted: bool


@dataclass(frozen=True)
class Trust:
    """A bundle's calibration, familiarity reference and trust thresholds."""

    classes: tuple[str, ...]
    temperature: float
    thresholds: dict[str, float]
    familiar_at: float
    reference: torch.Tensor  # (N, d) unit rows
    mean: tuple = (0.5, 0.5, 0.5)  # the model's input normalisation, to read colours back
    std: tuple = (0.5, 0.5, 0.5)

    @classmethod
    def from_bundle(cls, manifest: dict, path: str | Path, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
                    ) -> Optional["Trust"]:
        """None when the bundle was not calibrated (untrained, no classes, no held-out folds, or older)."""
        cal = manifest.get("calibration") or {}
        fam = cal.get("familiarity") or {}
        ref = Path(path) / fam.get("reference", REFERENCE_FILE)
        if not cal or not manifest.get("classes") or not ref.is_file():
            return None
        return cls(classes=tuple(manifest["classes"]), temperature=float(cal["temperature"]),
                   thresholds={c: float(t) for c, t in cal["thresholds"].items()},
                   familiar_at=float(fam["threshold"]), reference=read_reference(ref),
                   mean=tuple(mean), std=tuple(std))

    def assess(self, fold_logits: torch.Tensor, feats: torch.Tensor, x: torch.Tensor) -> list[Assessment]:
        """One assessment per image from its fold logits (K, B, C), frozen-trunk features and model input."""
        return self.assess_descriptors(fold_logits, descriptor(feats, x, self.mean, self.std))

    def assess_descriptors(self, fold_logits: torch.Tensor, desc: torch.Tensor) -> list[Assessment]:
        probs = calibrated_probs(fold_logits, self.temperature)
        fam = familiarity(desc, self.reference)
        out = []
        for p, f in zip(probs, fam):
            i = int(np.argmax(p))
            c = self.classes[i]
            out.append(Assessment(
                predicted=c, prob=float(p[i]), probs={k: round(float(v), 4) for k, v in zip(self.classes, p)},
                familiarity=round(float(f), 4), familiar=bool(f >= self.familiar_at),
                trusted=is_trusted(float(p[i]), self.thresholds.get(c, NEVER), float(f), self.familiar_at)))
        return out


def write_reference(out: str | Path, desc: torch.Tensor, names: Sequence[str]) -> str:
    """The training images' descriptors (float16: 70-1300 rows of a few hundred numbers)."""
    out = Path(out)
    save_file({"desc": desc.detach().half().contiguous()}, str(out / REFERENCE_FILE),
              metadata={"names": json.dumps(list(names))})
    return REFERENCE_FILE


def read_reference(path: str | Path) -> torch.Tensor:
    return F.normalize(load_file(str(path))["desc"].float(), dim=-1)
