"""Acceptance (issue 3): train on 6 real images per class, then search the unseen rest with plain class
descriptions. Slow by design (about a minute and a half on 2 cores)."""
import numpy as np
import pytest

from retrieval.bundle import load_bundle
from training.heldout import class_search, format_rows, split_per_class, write_entrep_layout
from training.train import train_from_path


@pytest.mark.slow
def test_trained_ensemble_finds_each_class_from_its_plain_description(entrep_train, entrep_labels, tmp_path):
    train, held = split_per_class(entrep_labels, entrep_train / "imgs", n_train=6, seed=0)
    assert len(train) == 42 and 27 <= len(held) <= 28
    data = write_entrep_layout(tmp_path / "train42", train, entrep_train / "imgs")

    manifest = train_from_path(data, tmp_path / "bundle", folds=3, views=4, progress=False)
    assert manifest["folds"] == 3 and manifest["trained"] and not manifest["partial"]
    assert len(manifest["metrics"]["per_fold"]) == 3

    ens = load_bundle(tmp_path / "bundle").ensemble  # verifies the shared trunk hash and every fold's checksum
    rows, acc = class_search(ens, held, entrep_train / "imgs")
    print("\n" + format_rows(rows, acc, title=f"held-out gallery of {len(held)} images, 3-fold ensemble"))

    hits = sum(r.r1 for r in rows)
    p3 = float(np.mean([r.p3 for r in rows]))
    chance = 4 / len(held)
    assert hits >= 5, f"only {hits}/7 classes ranked an image of their class first"
    assert p3 >= 0.5 and p3 > 3 * chance
    assert acc is not None and acc >= 0.5  # the 7-way head on the pooled features, far above 1/7
