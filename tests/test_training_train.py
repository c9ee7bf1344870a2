"""The trainer's contract: config handling, the shared trunk untouched, crash-safe folds and resume."""
import json

import pytest
import torch
from safetensors.torch import load_file

from retrieval import lexicon
from retrieval.bundle import load_bundle
from retrieval.manifest import read_manifest
from retrieval.ensemble import FoldEnsemble
from training import train as T


def test_config_overrides_are_type_checked_and_unknown_keys_refused(tmp_path):
    cfg = T.parse_args(["DATA", "--out", "/x", "--epochs=3", "--lr", "5e-4", "--flip=false", "--pool=avg"])
    assert (cfg.data, cfg.out, cfg.epochs, cfg.lr, cfg.flip, cfg.spec.pool) == ("DATA", "/x", 3, 5e-4, False, "avg")
    assert T.parse_args(["D", "--config=debug"]).folds == T.PRESETS["debug"]["folds"]
    assert T.parse_args(["D", "--config=debug", "--folds=3"]).folds == 3  # overrides come after the preset
    (tmp_path / "c.json").write_text(json.dumps({"views": 4, "cls_weight": 1}))
    cfg = T.parse_args(["D", f"--config={tmp_path / 'c.json'}"])
    assert cfg.views == 4 and cfg.cls_weight == 1.0 and isinstance(cfg.cls_weight, float)
    with pytest.raises(T.TrainError, match="unknown training setting"):
        T.parse_args(["D", "--epoch=3"])
    with pytest.raises(T.TrainError, match="wants a int"):
        T.parse_args(["D", "--epochs=many"])
    with pytest.raises(T.TrainError, match="true or false"):
        T.parse_args(["D", "--flip=maybe"])
    with pytest.raises(T.TrainError, match="wants a int"):
        T.make_config(epochs=2.5)
    with pytest.raises(T.TrainError, match="neither a preset"):
        T.parse_args(["D", "--config=nope"])


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = T.TrainConfig(warmup_steps=4, min_lr_ratio=0.1)
    lrs = [T.get_lr(s, 20, 1.0, cfg) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert T.get_lr(20, 20, 1.0, cfg) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def small_entrep(tmp_path_factory, entrep_train, entrep_labels):
    """2 real images per class (14) in an ENTRep layout, linked from ../shared."""
    d = tmp_path_factory.mktemp("small") / "entrep"
    (d / "imgs").mkdir(parents=True)
    labels = {}
    for c in lexicon.CLASSES:
        for n in sorted(n for n, l in entrep_labels.items() if l == c)[:2]:
            labels[n] = c
            (d / "imgs" / n).symlink_to(entrep_train / "imgs" / n)
    (d / "cls.json").write_text(json.dumps(labels))
    return d


SMALL = dict(views=2, epochs=2, batch_size=16, progress=False)


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(small_entrep, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    real_fit = T.fit_fold
    calls = []

    def crash_on_fold_1(ens, f, *a, **kw):
        calls.append(f)
        if f == 1:
            raise KeyboardInterrupt
        return real_fit(ens, f, *a, **kw)

    monkeypatch.setattr(T, "fit_fold", crash_on_fold_1)
    with pytest.raises(KeyboardInterrupt):
        T.train_from_path(small_entrep, out, folds=2, **SMALL)
    assert calls == [0, 1]  # fold 1 started, then the "crash"
    assert (out / "fold_00.safetensors").is_file() and not (out / "fold_01.safetensors").exists()
    assert (out / T.PROGRESS).is_file()
    partial = read_manifest(out)  # the finished fold is already a usable one-fold bundle
    assert partial["partial"] is True and partial["folds"] == 1 and partial["folds_planned"] == 2
    assert load_bundle(out).folds == 1

    calls.clear()
    monkeypatch.setattr(T, "fit_fold", lambda ens, f, *a, **kw: (calls.append(f), real_fit(ens, f, *a, **kw))[1])
    manifest = T.train_from_path(small_entrep, out, folds=2, **SMALL)
    assert calls == [1]  # fold 0 was not retrained
    assert manifest["partial"] is False and manifest["folds"] == 2 and manifest["trained"] is True
    assert not (out / T.PROGRESS).exists()
    assert [m["fold"] for m in manifest["metrics"]["per_fold"]] == [0, 1]
    for key in ("R@1", "R@5", "R@10", "MRR", "acc"):
        assert 0.0 <= manifest["metrics"]["mean"][key] <= 1.0
    assert manifest["train"]["config"]["epochs"] == 2 and set(manifest["train"]["val_fold"].values()) == {0, 1}

    # the shared trunk is the untouched pretrained one, byte for byte
    untrained = FoldEnsemble(load_bundle(out).ensemble.spec, 2, seed=0)
    assert manifest["shared_hash"] == untrained.shared_hash()

    # same settings again: nothing to do; other settings into the same folder: refused
    calls.clear()
    assert T.train_from_path(small_entrep, out, folds=2, **SMALL)["fingerprint"] == manifest["fingerprint"]
    assert calls == []
    with pytest.raises(T.TrainError, match="already holds a bundle"):
        T.train_from_path(small_entrep, out, folds=2, **{**SMALL, "epochs": 3})

    # an uninterrupted run gives the same weights: per-fold seeds, seeded views
    ref = tmp_path / "ref"
    T.train_from_path(small_entrep, ref, folds=2, **SMALL)
    for name in ("fold_00.safetensors", "fold_01.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(ref / name))
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name


def test_single_model_on_everything(small_entrep, tmp_path):
    manifest = T.train_from_path(small_entrep, tmp_path / "one", folds=1, **{**SMALL, "epochs": 1})
    assert manifest["folds"] == 1 and manifest["metrics"] == {}
    assert set(manifest["train"]["val_fold"].values()) == {-1}  # nothing held out
    ens = load_bundle(tmp_path / "one").ensemble
    vec, probs = ens.encode_images(torch.zeros(1, 3, 224, 224))
    assert vec.shape == (1, 64) and probs.shape == (1, 7)
