"""Does trust appear once the data allow it? The trust rule on the demo's drawn gallery, where images are plenty.

    PYTHONPATH=$PWD python bench/trust_synthetic.py [--per-class 60] [--held 15] [--folds 3] [--epochs 15]

On the 70 real ENTRep images (6 training images per class) no prediction is ever trusted: a 98 % precision
needs about 49 right out-of-fold predictions of a class without a miss before its Wilson lower bound reaches
it (training/calibrate.py). This trains on `--per-class` drawn images per class (training/synthetic.py), so the
bound can be reached, then assesses `--held` new drawings per class: how many get a trusted prediction, and
how many of those are right. Drawings are easy; the point is that the rule trusts when it has measured, not
that drawings resemble endoscopy. On demand, never a test.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.bundle import load_bundle  # noqa: E402
from retrieval.preprocess import load_for_model  # noqa: E402
from training.synthetic import make_gallery  # noqa: E402
from training.train import train_from_path  # noqa: E402


@torch.no_grad()
def assess(bundle, paths: list[Path]):
    ens, out = bundle.ensemble, []
    for i in range(0, len(paths), 32):
        x = torch.stack([load_for_model(p, ens.spec.image_size, ens.mean, ens.std) for p in paths[i:i + 32]])
        _, logits, feats = ens.encode_images_detailed(x)
        out += bundle.trust.assess(logits, feats, x)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--held", type=int, default=15)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--views", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kger-trust-"))
    make_gallery(work / "train", per_class=args.per_class, seed=1)
    held = make_gallery(work / "held", per_class=args.held, seed=2)
    manifest = train_from_path(work / "train", work / "bundle", folds=args.folds, epochs=args.epochs,
                               views=args.views, seed=0, progress=False)
    cal = manifest["calibration"]
    bundle = load_bundle(work / "bundle")
    names = sorted(held)
    got = assess(bundle, [work / "held" / "imgs" / n for n in names])
    trusted = [(a, held[n]) for a, n in zip(got, names) if a.trusted]
    print(f"{args.per_class} drawn training images per class, {args.folds} folds, {args.epochs} epochs; "
          f"{cal['n_out_of_fold']} out-of-fold predictions, accuracy {cal['accuracy_out_of_fold']}, "
          f"T {cal['temperature']}, ECE {cal['ece_before']} -> {cal['ece_after']}")
    print("trust thresholds:", cal["thresholds"])
    print(f"held-out drawings: {len(got)}, familiar {sum(a.familiar for a in got)}, trusted {len(trusted)}, "
          f"trusted and right {sum(a.predicted == t for a, t in trusted)}")


if __name__ == "__main__":
    main()
