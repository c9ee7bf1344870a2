"""One fold's epoch time with the cached shared trunk vs recomputing the trunk at every step.

Same data, same views, same fold split, same settings, measured side by side in one run:

    python bench/train_speed.py [--data ../shared/data/entrep/train] [--epochs 3] [--views 8]

"Without cache" still gets the augmented views as ready tensors (decoding and augmenting again every step
would cost more), so the ratio printed is a lower bound of what the cache saves.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from retrieval.ensemble import FoldEnsemble  # noqa: E402
from training.augment import make_views  # noqa: E402
from training.cache import build_text_cache, build_view_cache, load_field, view_texts  # noqa: E402
from training.data import load_dataset  # noqa: E402
from training.folds import assign_folds, split  # noqa: E402
from training.train import fit_fold, make_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "entrep" / "train"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--folds", type=int, default=5, help="the split the timed fold comes from")
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"skipped: no training data at {args.data}")
        return

    cfg = make_config(data=args.data, out="-", epochs=args.epochs, views=args.views, progress=False)
    data = load_dataset(cfg.data)
    ens = FoldEnsemble(cfg.spec, 2, seed=cfg.seed, classes=data.classes)
    train, val = split(assign_folds(data.items, args.folds, cfg.seed), 0)

    t = time.perf_counter()
    texts = build_text_cache(ens, view_texts(data.items, cfg.flip))
    views = build_view_cache(ens, data.items, data.classes, texts, n_views=cfg.views, seed=cfg.seed, flip=cfg.flip)
    t_cache = time.perf_counter() - t

    # the very same views as input tensors, for the run that recomputes the trunk
    inputs = torch.stack([
        make_views(load_field(it), cfg.views, seed=cfg.seed, sha=it.sha, size=cfg.spec.image_size, mean=ens.mean,
                   std=ens.std, flip=cfg.flip)[0]
        for it in data.items
    ])

    def recompute(n: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return ens.image_features(inputs[n, v])

    # fold slot 0 trains from the cache, slot 1 recomputes; both start from the same pretrained layers
    ens.image_tops[1].load_state_dict(ens.image_tops[0].state_dict())
    ens.text_tops[1].load_state_dict(ens.text_tops[0].state_dict())
    t = time.perf_counter()
    fit_fold(ens, 0, train, val, views, texts, cfg)
    cached = (time.perf_counter() - t) / cfg.epochs
    t = time.perf_counter()
    fit_fold(ens, 1, train, val, views, texts, cfg, source=recompute)
    fresh = (time.perf_counter() - t) / cfg.epochs

    steps = -(-len(train) // cfg.batch_size)
    print(f"data: {len(data.items)} images x {cfg.views} views; fold: {len(train)} train / {len(val)} val, "
          f"{steps} steps of {cfg.batch_size} per epoch (+ validation); torch threads {torch.get_num_threads()}")
    print(f"one-off trunk cache (images and captions): {t_cache:6.1f} s")
    print(f"epoch, cached trunk:                       {cached:6.2f} s")
    print(f"epoch, trunk recomputed each step:         {fresh:6.2f} s")
    print(f"speed-up per epoch: {fresh / cached:.1f}x; the cache pays for itself after "
          f"{t_cache / max(fresh - cached, 1e-9):.1f} epochs (a {args.folds}-fold run of {make_config().epochs} "
          f"epochs has {args.folds * make_config().epochs})")


if __name__ == "__main__":
    main()
