"""Side-aware pooling, measured: train on 6 real images per class, search the other 4 per class by plain
class descriptions ("left ear", "right nasal cavity", "closed vocal cords", ...).

For each class: Recall@1 (an image of the class ranked first), P@3 and the left/right confusions in the top 3,
for three models trained on the same 42 images in one run:
  1. pool=avg, K folds       (before: the plain average pool; mirrored views are off, it cannot use them)
  2. pool=lr_split, K folds  (after: side-aware pooling, mirrored views with the side swapped)
  3. pool=lr_split, K=1      (one model trained on all 42 images: DESIGN.md asks whether folds lose too much)

    python bench/laterality.py [--folds 5] [--epochs 50] [--views 8] [--seeds 0,1,2] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402

from retrieval.bundle import load_bundle  # noqa: E402
from training.heldout import class_search, encode_gallery, format_rows, split_per_class, write_entrep_layout  # noqa: E402
from training.train import train_from_path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "entrep" / "train"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=None, help="default: the trainer's")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--seeds", default="0", help="comma-separated: one train/held-out split and init per seed")
    ap.add_argument("--keep", default=None, help="keep the bundles in this folder (default: a temp folder)")
    args = ap.parse_args()
    src = Path(args.data)
    if not (src / "cls.json").is_file():
        print(f"skipped: no ENTRep training data at {src}")
        return
    labels = json.loads((src / "cls.json").read_text())
    quiet = Console(stderr=True, quiet=True)
    runs = [("pool=avg", dict(pool="avg"), args.folds), ("pool=lr_split", dict(pool="lr_split"), args.folds),
            ("pool=lr_split, one model", dict(pool="lr_split"), 1)]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kger-laterality-"))
    extra = {"epochs": args.epochs} if args.epochs else {}
    summary = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        train, held = split_per_class(labels, src / "imgs", n_train=6, seed=seed)
        data = write_entrep_layout(work / f"seed{seed}" / "train", train, src / "imgs")
        names = sorted(held)
        print(f"seed {seed}: {len(train)} training images (6 per class), {len(held)} held-out gallery images; "
              f"K={args.folds}, views={args.views}\n")
        for i, (name, overrides, k) in enumerate(runs):
            out = work / f"seed{seed}" / f"bundle-{i}"
            t = time.time()
            manifest = train_from_path(data, out, folds=k, seed=seed, views=args.views, progress=False,
                                       console=quiet, **overrides, **extra)
            seconds = time.time() - t
            ens = load_bundle(out).ensemble
            gallery = encode_gallery(ens, [src / "imgs" / n for n in names])
            rows, acc = class_search(ens, held, src / "imgs", encoded=gallery)
            print(format_rows(rows, acc, title=f"{name}, K={manifest['folds']}, seed {seed} "
                                                f"({seconds:.0f} s to train)") + "\n")
            summary.append((name, manifest["folds"], seed, int(sum(r.r1 for r in rows)),
                            float(np.mean([r.p3 for r in rows])), sum(r.lr_confusions for r in rows), acc))

    print(f"{'model':26s} {'K':>2s} {'seed':>4s} {'class R@1':>9s} {'P@3':>5s} {'L/R in top 3':>12s} {'head acc':>8s}")
    for name, k, seed, hits, p3, lr, acc in summary:
        print(f"{name:26s} {k:2d} {seed:4d} {hits:>7d}/7 {p3:5.2f} {lr:12d} {acc:8.2f}")
    if len({s[2] for s in summary}) > 1:
        for name, _, k in runs:
            mine = [s for s in summary if s[0] == name]
            print(f"{name:26s} {k:2d} {'mean':>4s} {np.mean([s[3] for s in mine]):7.2f}/7 "
                  f"{np.mean([s[4] for s in mine]):5.2f} {np.mean([s[5] for s in mine]):12.2f} "
                  f"{np.mean([s[6] for s in mine]):8.2f}")
    if not args.keep:
        print(f"\n(bundles in {work}; pass --keep DIR to choose where)")


if __name__ == "__main__":
    main()
