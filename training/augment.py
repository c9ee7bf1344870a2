"""Augmented views of the circle-cropped endoscopic field, and the side swap a mirror image needs.

A horizontal flip turns a left ear into what a right ear looks like, so a mirrored view is kept only with its
side swapped in the label and in every caption (KGER flipped without swapping and taught the model that sides
do not matter). Classes without a side (vocal folds, throat) are simply mirrored. Nothing here changes what
decides a class: rotations are small, crops keep most of the field, colour jitter is mild, and there is no
vertical flip, so the vocal folds stay open or closed and the field stays where the scope put it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from retrieval.lexicon import swap_side_label, swap_side_text
from retrieval.preprocess import prepare


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 15.0  # degrees, either way; black fill like the endoscope's border
    crop_scale: tuple[float, float] = (0.70, 1.0)  # share of the field kept by a resized crop
    crop_ratio: tuple[float, float] = (0.85, 1.18)  # aspect range of that crop
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.15
    hue: float = 0.02  # small: colour (red mucosa, white discharge) carries findings


def flip_label(label: str | None) -> str | None:
    return None if label is None else swap_side_label(label)


def flip_captions(captions: Sequence[str]) -> tuple[str, ...]:
    return tuple(swap_side_text(c) for c in captions)


def mirrored_plan(n_views: int, flip: bool) -> list[bool]:
    """Which views are mirrored: view 0 is the plain field, view 1 its mirror, then alternating."""
    return [flip and v % 2 == 1 for v in range(n_views)]


def view_seed(seed: int, sha: str, v: int) -> int:
    """Per (run seed, image content, view index): a view does not change when other images come or go."""
    return int(hashlib.sha256(f"{seed}:{sha}:{v}".encode()).hexdigest()[:15], 16)


def make_transform(size: int, cfg: AugmentConfig = AugmentConfig()) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
        v2.RandomRotation(cfg.rotation, fill=0),
        v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue),
    ])


def make_views(
    field: Image.Image,
    n_views: int,
    *,
    seed: int,
    sha: str,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    flip: bool = True,
    cfg: AugmentConfig = AugmentConfig(),
) -> tuple[torch.Tensor, list[bool]]:
    """(n_views, 3, size, size) model inputs from one circle-cropped field, and which of them are mirrored.

    View 0 is the plain field and view 1 its plain mirror (when flipping); the rest are random augmentations,
    seeded per image and view.
    """
    plan = mirrored_plan(n_views, flip)
    transform = make_transform(size, cfg)
    out = []
    for v, mirrored in enumerate(plan):
        img = ImageOps.mirror(field) if mirrored else field
        if v >= 2 or (v == 1 and not mirrored):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(view_seed(seed, sha, v))
                img = transform(img)
        out.append(prepare(img, size, mean, std))
    return torch.stack(out), plan
