"""Issue 6: the image tower must see left from right (DESIGN.md §4, "Laterality").

Both checks use the pretrained towers only (no training), on the real ear and nose images: a mirror image must
embed differently from the original under side-aware pooling, and a left/right probe on the pooled features of
held-out images must beat chance clearly. The average pool is measured beside it and printed, as the baseline.
"""
import numpy as np
import pytest
import torch
from PIL import ImageOps

from retrieval.ensemble import FoldEnsemble
from retrieval.nanoclip import POOLS, NanoCLIPSpec
from retrieval.preprocess import circle_crop, load_image, prepare

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import LeaveOneOut  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


@pytest.fixture(scope="module")
def ens():
    return FoldEnsemble(NanoCLIPSpec(pool="lr_split"), 1, seed=0)


def _feature_map(ens, images):
    """The last feature map, just before pooling (trunk + the fold top's pretrained layers)."""
    top = ens.image_tops[0]
    x = torch.stack([prepare(im, ens.spec.image_size, ens.mean, ens.std) for im in images])
    with torch.no_grad():
        return top.head(top.blocks(ens.image_trunk(x)))


def _cos(a, b):
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    return (a * b).sum(-1)


def test_a_mirror_image_embeds_differently_from_the_original(ens, entrep_train, entrep_labels):
    names = [sorted(n for n, c in entrep_labels.items() if c == cls)[0]
             for cls in ("ear-left", "ear-right", "nose-left", "nose-right")]
    fields = [circle_crop(load_image(entrep_train / "imgs" / n)) for n in names]
    w = [f.width for f in fields]
    h = [f.height for f in fields]
    # two slightly different crops of each field (2 % off opposite corners): what "the same image" varies by
    crop_a = [f.crop((int(0.02 * wi), int(0.02 * hi), wi, hi)) for f, wi, hi in zip(fields, w, h)]
    crop_b = [f.crop((0, 0, int(0.98 * wi), int(0.98 * hi))) for f, wi, hi in zip(fields, w, h)]
    maps = {k: _feature_map(ens, imgs) for k, imgs in
            (("orig", fields), ("mirror", [ImageOps.mirror(f) for f in fields]), ("a", crop_a), ("b", crop_b))}
    rows = {}
    for pool in ("lr_split", "avg"):
        p = {k: POOLS[pool]()(m) for k, m in maps.items()}
        rows[pool] = (_cos(p["orig"], p["mirror"]), _cos(p["a"], p["b"]))
        print(f"{pool:9s} cos(original, mirror) = {rows[pool][0].mean():.3f}   "
              f"cos(two crops) = {rows[pool][1].mean():.3f}")
    mirror, crops = rows["lr_split"]
    assert bool((mirror < crops - 0.02).all()), (mirror, crops)
    assert float(mirror.mean()) < float(crops.mean()) - 0.04
    # average pooling is the baseline that cannot tell: a mirror is as close as another crop
    assert float(rows["avg"][0].mean()) > float(mirror.mean())

    # and the ensemble's own output vectors (side-aware pool, seeded projection) keep the difference
    def embed(imgs):
        return torch.from_numpy(ens.encode_images(
            torch.stack([prepare(im, ens.spec.image_size, ens.mean, ens.std) for im in imgs]))[0])

    e_mirror = _cos(embed(fields), embed([ImageOps.mirror(f) for f in fields]))
    e_crops = _cos(embed(crop_a), embed(crop_b))
    print(f"embedding cos(original, mirror) = {e_mirror.mean():.3f}   cos(two crops) = {e_crops.mean():.3f}")
    assert float(e_mirror.mean()) < float(e_crops.mean()) - 0.02


def _probe_accuracy(x, x_mirror, y):
    """Leave-one-out left/right probe. Training images are also used mirrored with the side swapped (the
    same rule as training), so the probe learns the asymmetry, not which images happened to be seen."""
    hits = []
    for train, test in LeaveOneOut().split(x):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=5000))
        clf.fit(np.concatenate([x[train], x_mirror[train]]), np.concatenate([y[train], 1 - y[train]]))
        hits.append(clf.predict(x[test])[0] == y[test][0])
    return float(np.mean(hits))


def test_side_probe_on_pooled_pretrained_features_beats_chance(ens, entrep_train, entrep_labels):
    results = {}
    per_site = {}
    for site in ("ear", "nose"):
        names = sorted(n for n, c in entrep_labels.items() if c.startswith(site + "-"))
        fields = [circle_crop(load_image(entrep_train / "imgs" / n)) for n in names]
        y = np.array([entrep_labels[n].endswith("-left") for n in names], dtype=int)
        fmap = _feature_map(ens, fields)
        fmap_m = _feature_map(ens, [ImageOps.mirror(f) for f in fields])
        for pool in ("lr_split", "avg"):
            x, xm = (POOLS[pool]()(m).numpy() for m in (fmap, fmap_m))
            per_site[(pool, site)] = (_probe_accuracy(x, xm, y), len(y))
    for pool in ("lr_split", "avg"):
        (ear, n_ear), (nose, n_nose) = per_site[(pool, "ear")], per_site[(pool, "nose")]
        results[pool] = (ear * n_ear + nose * n_nose) / (n_ear + n_nose)
        print(f"left/right probe, {pool:9s}: ear {ear:.2f}  nose {nose:.2f}  all {results[pool]:.2f}  "
              f"(held-out, leave-one-out; chance 0.50)")
    # 40 held-out predictions: >= 0.70 is p < 0.01 against a coin
    assert results["lr_split"] >= 0.70
    assert results["lr_split"] > results["avg"]
