"""Reading the three training layouts from real ENTRep images (linked, never copied into the repo)."""
import json
import logging

import pytest

from retrieval import captions, lexicon
from training.data import DataError, data_hash, load_dataset


def _pick(labels, per_class):
    out = {}
    for c in lexicon.CLASSES:
        for n in sorted(n for n, l in labels.items() if l == c)[:per_class]:
            out[n] = c
    return out


def _entrep_dir(tmp_path, train_dir, labels, t2i=None):
    d = tmp_path / "entrep"
    (d / "imgs").mkdir(parents=True)
    for n in labels:
        (d / "imgs" / n).symlink_to(train_dir / "imgs" / n)
    (d / "cls.json").write_text(json.dumps(labels))
    if t2i is not None:
        (d / "t2i.json").write_text(json.dumps(t2i))
    return d


def test_entrep_layout_on_the_real_folder(entrep_train, entrep_labels):
    ds = load_dataset(entrep_train)
    assert ds.layout == "entrep" and ds.classes == list(lexicon.CLASSES)
    # 70 files, two of which are the same throat image under two names: one item, not two
    assert len(ds.items) == 69 and len({it.sha for it in ds.items}) == 69
    assert ds.class_counts()["throat"] == 9 and ds.class_counts()["ear-left"] == 10
    assert len(ds.duplicates) == 1 and ds.summary().endswith("; 0 skipped, 1 duplicate file")  # as index says
    t2i = json.loads((entrep_train / "t2i.json").read_text())
    by_name = {it.name: it for it in ds.items}
    for text, name in t2i.items():
        assert text in by_name[name].descriptions
        assert by_name[name].captions[0] == text  # own description first, then the class captions
    for it in ds.items:
        assert it.label == entrep_labels[it.name] or it.name not in entrep_labels
        templates = [c for c in it.captions if c not in it.descriptions]
        assert templates == captions.class_captions(it.label) and len(templates) >= 6


def test_an_image_with_several_descriptions_and_a_description_with_several_images(tmp_path, entrep_train,
                                                                                    entrep_labels):
    labels = _pick(entrep_labels, 1)
    ear_l = next(n for n, c in labels.items() if c == "ear-left")
    ear_r = next(n for n, c in labels.items() if c == "ear-right")
    t2i = {"wax in the ear canal": [ear_l, ear_r], "dull left tympanic membrane": ear_l}
    ds = load_dataset(_entrep_dir(tmp_path, entrep_train, labels, t2i))
    items = {it.name: it for it in ds.items}
    assert items[ear_l].descriptions == ("wax in the ear canal", "dull left tympanic membrane")
    assert items[ear_r].descriptions == ("wax in the ear canal",)


def test_data_hash_follows_content_not_names_or_order(tmp_path, entrep_train, entrep_labels):
    labels = _pick(entrep_labels, 1)
    ds = load_dataset(_entrep_dir(tmp_path, entrep_train, labels))
    assert data_hash(reversed(ds.items)) == ds.data_hash
    relabelled = dict(labels)
    first = sorted(relabelled)[0]
    relabelled[first] = next(c for c in lexicon.CLASSES if c != labels[first])
    other = load_dataset(_entrep_dir(tmp_path / "b", entrep_train, relabelled))
    assert other.data_hash != ds.data_hash


def test_folder_per_class_and_csv_layouts(tmp_path, entrep_train, entrep_labels):
    labels = _pick(entrep_labels, 2)
    root = tmp_path / "folders"
    for n, c in labels.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        (root / c / n).symlink_to(entrep_train / "imgs" / n)
    ds = load_dataset(root)
    assert ds.layout == "folders" and len(ds.items) == 14
    assert {it.name: it.label for it in ds.items} == labels

    # ENTRep's own train.csv style: header image_path,text and Windows separators; paths relative to the CSV
    csv_dir = tmp_path / "csv"
    (csv_dir / "imgs").mkdir(parents=True)
    names = sorted(labels)[:3]
    for n in names:
        (csv_dir / "imgs" / n).symlink_to(entrep_train / "imgs" / n)
    rows = ["image_path,text,label"] + [f"imgs\\{n},a finding number {i},{labels[n]}" for i, n in enumerate(names)]
    (csv_dir / "train.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(csv_dir / "train.csv")
    assert ds.layout == "csv" and len(ds.items) == 3
    assert {it.descriptions for it in ds.items} == {(f"a finding number {i}",) for i in range(3)}
    # no header: image,text (no label): descriptions only, no class captions
    (csv_dir / "plain.csv").write_text("".join(f"imgs/{n},text {n}\n" for n in names))
    ds = load_dataset(csv_dir / "plain.csv")
    assert all(it.label is None and it.captions == (f"text {it.name}",) for it in ds.items)


def test_bad_and_missing_images_are_skipped_with_a_warning(tmp_path, entrep_train, entrep_labels, caplog):
    labels = _pick(entrep_labels, 1)
    d = _entrep_dir(tmp_path, entrep_train, labels)
    good = (entrep_train / "imgs" / sorted(labels)[0]).read_bytes()
    (d / "imgs" / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "imgs" / "notes.png").write_text("not an image at all")
    cls = dict(labels, **{"truncated.png": "throat", "notes.png": "throat", "missing.png": "throat"})
    (d / "cls.json").write_text(json.dumps(cls))
    with caplog.at_level(logging.WARNING, logger="kger.train"):
        ds = load_dataset(d)
    assert len(ds.items) == 7
    reasons = dict(ds.skipped)
    assert set(map(lambda p: p.rsplit("/", 1)[-1], reasons)) == {"truncated.png", "notes.png", "missing.png"}
    assert any("truncated" in r for r in reasons.values())
    assert "truncated.png" in caplog.text and "notes.png" in caplog.text


def test_unusable_paths_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such training data"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="ENTRep folder"):
        load_dataset(tmp_path / "empty")
