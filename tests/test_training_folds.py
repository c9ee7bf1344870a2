from collections import Counter
from pathlib import Path

import pytest

from training.data import Item, load_dataset
from training.folds import assign_folds, clamp_folds, groups, holdout, split


def _items(spec):
    """spec: list of (label, descriptions); sha is made unique per item."""
    return [Item(Path(f"img{i:03d}.png"), f"{i:064x}", label, tuple(descs), tuple(descs) + (label or "x",))
            for i, (label, descs) in enumerate(spec)]


def _synthetic(seed_shift=0):
    spec = []
    for c in ("ear-left", "ear-right", "nose-left", "nose-right", "vc-open", "vc-closed", "throat"):
        spec += [(c, ()) for _ in range(8)]
    # images sharing a description (the same finding photographed twice, and a chain a-b, b-c)
    spec += [("ear-left", ("wax",)), ("ear-left", ("wax",)), ("ear-right", ("wax", "perforation")),
             ("ear-right", ("perforation",)), ("throat", ("tonsil stone",)), ("throat", ("tonsil stone",))]
    return _items(spec)


def test_groups_join_images_sharing_a_description_transitively():
    items = _synthetic()
    g = groups(items)
    wax = [i for i, it in enumerate(items) if {"wax", "perforation"} & set(it.descriptions)]
    assert len({g[i] for i in wax}) == 1 and len(wax) == 4
    stone = [i for i, it in enumerate(items) if "tonsil stone" in it.descriptions]
    assert len({g[i] for i in stone}) == 1 and g[stone[0]] != g[wax[0]]
    assert len(set(g)) == len(items) - 3 - 1


@pytest.mark.parametrize("k", [2, 3, 5])
def test_no_image_or_description_on_both_sides(k):
    items = _synthetic()
    fold_ids = assign_folds(items, k, seed=3)
    assert sorted(set(fold_ids)) == list(range(k))
    for f in range(k):
        train, val = split(fold_ids, f)
        assert sorted(train + val) == list(range(len(items)))
        assert not {items[i].sha for i in train} & {items[i].sha for i in val}
        train_descs = {d for i in train for d in items[i].descriptions}
        val_descs = {d for i in val for d in items[i].descriptions}
        assert not train_descs & val_descs


def test_folds_are_stratified_by_class():
    items = _synthetic()
    fold_ids = assign_folds(items, 4, seed=0)
    for c in {it.label for it in items}:
        per_fold = Counter(f for it, f in zip(items, fold_ids) if it.label == c)
        assert len(per_fold) == 4, c  # every class in every validation fold
        assert max(per_fold.values()) - min(per_fold.values()) <= 2, (c, per_fold)  # groups of 2-4 allowed


def test_folds_are_seeded_and_independent_of_input_order():
    items = _synthetic()
    a = assign_folds(items, 5, seed=7)
    assert assign_folds(items, 5, seed=7) == a
    assert assign_folds(items, 5, seed=8) != a
    rev = assign_folds(list(reversed(items)), 5, seed=7)
    assert list(reversed(rev)) == a


def test_clamp_when_a_class_has_fewer_images_than_folds():
    items = _synthetic()[:56]  # 8 per class
    assert clamp_folds(items, 8) == (8, None)
    k, why = clamp_folds(items, 10)
    assert k == 8 and "10 folds" in why and "8" in why
    assert clamp_folds(items, 1) == (1, None)


def test_real_data_folds(entrep_train):
    ds = load_dataset(entrep_train)
    k, why = clamp_folds(ds.items, 10)
    assert k == 9 and "throat has 9" in why  # 10 throat files, two are the same image
    fold_ids = assign_folds(ds.items, 5, seed=0)
    for f in range(5):
        train, val = split(fold_ids, f)
        assert Counter(ds.items[i].label for i in val).keys() == set(ds.classes)
        assert 13 <= len(val) <= 15


def test_holdout_for_a_single_model():
    items = _synthetic()
    train, val = holdout(items, 0.25, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == len(items)
    assert 0.15 < len(val) / len(items) < 0.35
    assert holdout(items, 0.0) == (list(range(len(items))), [])
