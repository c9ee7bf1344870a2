"""Indexing speed: the shared-trunk fold ensemble vs K separate full models, side by side in one run.

    python bench/index_speed.py [--folds 10] [--images DIR] [--n 48] [--store-size 10000]

"K separate models" runs the whole image tower (frozen trunk + fold top) once per fold, as an ensemble of
independent models must; the shared ensemble runs the trunk once and only the tops per fold. Both produce the
same vectors (checked). Then: text -> top-10 query latency on a store of `--store-size` vectors.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import retrieval  # noqa: E402,F401  (first: sets the OpenMP wait policy before torch loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_images(folder: Path | None, n: int, size: int, mean, std) -> torch.Tensor:
    from retrieval.preprocess import load_for_model

    if folder is None or not folder.is_dir():
        from training.synthetic import make_gallery

        folder = Path(tempfile.mkdtemp()) / "synthetic"
        make_gallery(folder, per_class=max(1, n // 7 + 1))
        folder = folder / "imgs"
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n]
    return torch.stack([load_for_model(p, size, mean, std) for p in paths])


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/entrep/train/imgs")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--store-size", type=int, default=10000)
    args = ap.parse_args()

    from retrieval.ensemble import FoldEnsemble
    from retrieval.nanoclip import NanoCLIPSpec

    torch.set_num_threads(os.cpu_count() or 2)
    ens = FoldEnsemble(NanoCLIPSpec(), args.folds, seed=0)
    x = load_images(args.images, args.n, ens.spec.image_size, ens.mean, ens.std)
    batches = list(torch.split(x, args.batch))
    print(f"{len(x)} images, {args.folds} folds, batch {args.batch}, {torch.get_num_threads()} threads")

    def shared():
        return [ens.encode_images(b)[0] for b in batches]

    @torch.no_grad()
    def separate():
        out = []
        for b in batches:
            parts = []
            for top in ens.image_tops:  # each "model" runs its own full tower
                emb, _ = top(ens.image_trunk(b))
                parts.append(torch.nn.functional.normalize(emb, dim=-1))
            out.append((torch.cat(parts, -1) / args.folds ** 0.5).numpy())
        return out

    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(shared(), separate())), "the two paths differ"
    t_shared = time_it(shared, args.repeats)
    t_sep = time_it(separate, args.repeats)
    print(f"shared trunk : {len(x) / t_shared:7.1f} images/s")
    print(f"{args.folds} separate   : {len(x) / t_sep:7.1f} images/s")
    print(f"speed-up     : {t_sep / t_shared:7.2f}x  (same vectors)")

    # query latency on a large store
    from store.gallery import Gallery

    home = Path(tempfile.mkdtemp())
    g = Gallery.open("bench", home=home, create=True)
    rng = np.random.default_rng(0)
    n, dim = args.store_size, ens.dim
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    t0 = time.perf_counter()
    for s in range(0, n, 2000):
        g.upsert([f"img{i:06d}" for i in range(s, min(n, s + 2000))], vecs[s:s + 2000],
                 [{"path": f"/x/{i}.png", "name": f"{i}.png"} for i in range(s, min(n, s + 2000))])
    print(f"store        : {n} x {dim}-d upserted in {time.perf_counter() - t0:.1f} s")
    queries = ["left ear with discharge", "open vocal cords", "right nasal cavity polyp", "throat, tonsils"] * 10
    lat_enc, lat_q = [], []
    for q in queries:
        t0 = time.perf_counter()
        v = ens.encode_texts([q])[0]
        t1 = time.perf_counter()
        g.query(v, k=10)
        t2 = time.perf_counter()
        lat_enc.append((t1 - t0) * 1000)
        lat_q.append((t2 - t1) * 1000)
    total = [a + b for a, b in zip(lat_enc, lat_q)]
    p = lambda xs, q: statistics.quantiles(xs, n=20)[18] if q == 95 else statistics.median(xs)  # noqa: E731
    print(f"text->top-10 : p50 {p(total, 50):.1f} ms, p95 {p(total, 95):.1f} ms "
          f"(encode p50 {p(lat_enc, 50):.1f} ms, Chroma query p50 {p(lat_q, 50):.1f} ms)")
    g.close()


if __name__ == "__main__":
    main()
