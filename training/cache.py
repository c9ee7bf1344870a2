"""Frozen-trunk outputs computed once per run and reused by every fold and epoch.

The folds share the frozen lower layers of both towers (DESIGN.md §4), so a training step needs only the
trunk's output, not the image. Caching it for a fixed set of augmented views per image (half of them mirrored,
with their side swapped) turns the image trunk from a per-step cost into a one-off; the text trunk's hidden
states are cached for every caption and every mirrored caption the same way.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image

from retrieval.ensemble import FoldEnsemble
from retrieval.preprocess import circle_crop, load_image
from training.augment import AugmentConfig, flip_captions, flip_label, make_views, mirrored_plan
from training.data import Item

Advance = Callable[[int], None]


@dataclass
class TextCache:
    texts: list[str]
    index: dict[str, int]
    hidden: torch.Tensor  # (T, L, width): text trunk output, padded to the longest caption
    mask: torch.Tensor  # (T, L)

    def batch(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states for these texts, cut to the longest among them (padding changes nothing)."""
        ids_t = torch.as_tensor(list(ids), dtype=torch.long)
        mask = self.mask[ids_t]
        length = max(1, int(mask.sum(1).max()))
        return self.hidden[ids_t, :length], mask[:, :length]


@torch.no_grad()
def build_text_cache(ens: FoldEnsemble, texts: Sequence[str], batch: int = 64) -> TextCache:
    texts = list(dict.fromkeys(texts))
    hs, ms = [], []
    for i in range(0, len(texts), batch):
        h, m = ens.text_features(texts[i : i + batch])
        hs.append(h)
        ms.append(m)
    hidden, mask = torch.cat(hs), torch.cat(ms)
    length = max(1, int(mask.sum(1).max()))
    return TextCache(texts, {t: i for i, t in enumerate(texts)}, hidden[:, :length].contiguous(),
                     mask[:, :length].contiguous())


@dataclass
class ViewCache:
    feats: torch.Tensor  # (N, V, C, H, W) float16: image trunk output per image and view
    mirrored: list[bool]  # (V,): which views are mirrored (same plan for every image)
    labels: torch.Tensor  # (N, V) class index per view (-1 unknown), side swapped on mirrored views
    classes: list[str | None]  # (N*V) class name per view, row-major, for the loss
    descriptions: list[list[tuple[int, ...]]]  # [n][v] text ids of the view's own descriptions
    templates: list[list[tuple[int, ...]]]  # [n][v] text ids of its class captions

    @property
    def n_views(self) -> int:
        return len(self.mirrored)

    def captions(self, n: int, v: int) -> frozenset[int]:
        return frozenset(self.descriptions[n][v] + self.templates[n][v])

    def view_class(self, n: int, v: int) -> str | None:
        return self.classes[n * self.n_views + v]

    def features(self, n: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.feats[n, v].float()


def view_texts(items: Sequence[Item], flip: bool) -> list[str]:
    """Every caption the views can draw, mirrored ones included."""
    texts: list[str] = []
    for it in items:
        texts += list(it.captions)
        if flip:
            texts += list(flip_captions(it.captions))
    return list(dict.fromkeys(texts))


def load_field(item: Item) -> Image.Image:
    return circle_crop(load_image(item.path))


@torch.no_grad()
def build_view_cache(
    ens: FoldEnsemble,
    items: Sequence[Item],
    classes: Sequence[str],
    texts: TextCache,
    *,
    n_views: int,
    seed: int,
    flip: bool,
    aug: AugmentConfig = AugmentConfig(),
    batch: int = 32,
    advance: Advance | None = None,
) -> ViewCache:
    """Decode, crop and augment each image once (in a background thread), run the trunk in batches."""
    size = ens.spec.image_size
    plan = mirrored_plan(n_views, flip)
    cls_index = {c: i for i, c in enumerate(classes)}

    def inputs(item: Item) -> torch.Tensor:
        x, _ = make_views(load_field(item), n_views, seed=seed, sha=item.sha, size=size, mean=ens.mean,
                          std=ens.std, flip=flip, cfg=aug)
        return x

    feats: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            x = torch.cat(pending)
            feats.append(ens.image_features(x).half())
            pending.clear()

    with ThreadPoolExecutor(max_workers=1) as pool:  # the next image is decoded while the trunk runs
        ahead = pool.submit(inputs, items[0]) if items else None
        for i in range(len(items)):
            x = ahead.result()
            ahead = pool.submit(inputs, items[i + 1]) if i + 1 < len(items) else None  # one ahead: bounded memory
            pending.append(x)
            if sum(len(p) for p in pending) >= batch:
                flush()
            if advance:
                advance(1)
        flush()
    all_feats = torch.cat(feats).reshape(len(items), n_views, *feats[0].shape[1:])

    labels = torch.full((len(items), n_views), -1, dtype=torch.long)
    view_classes: list[str | None] = []
    descs, temps = [], []
    for n, it in enumerate(items):
        d_row, t_row = [], []
        templates = [c for c in it.captions if c not in it.descriptions]
        for v, mirrored in enumerate(plan):
            label = flip_label(it.label) if mirrored else it.label
            view_classes.append(label)
            if label is not None and label in cls_index:
                labels[n, v] = cls_index[label]
            d = flip_captions(it.descriptions) if mirrored else it.descriptions
            t = flip_captions(templates) if mirrored else tuple(templates)
            d_row.append(tuple(texts.index[s] for s in d))
            t_row.append(tuple(texts.index[s] for s in t))
        descs.append(d_row)
        temps.append(t_row)
    return ViewCache(all_feats, plan, labels, view_classes, descs, temps)
