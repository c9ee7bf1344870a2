"""Mirrored views carry the other side in label and captions; nothing else about the class changes."""
import torch
from PIL import ImageOps

from retrieval import captions, lexicon
from retrieval.preprocess import circle_crop, load_image, prepare
from training.augment import flip_captions, flip_label, make_views, mirrored_plan


def test_flip_swaps_the_side_in_label_and_captions():
    assert flip_label("ear-left") == "ear-right" and flip_label("nose-right") == "nose-left"
    assert flip_label(None) is None
    caps = flip_captions(captions.class_captions("ear-left"))
    assert list(caps) == captions.class_captions("ear-right")  # every left caption becomes its right twin
    assert flip_captions(["Left TM, wax in the L ear"]) == ("Right TM, wax in the R ear",)
    assert flip_captions(["white ear discharge in the external auditory canal"]) == (
        "white ear discharge in the external auditory canal",)  # no side named, nothing to swap


def test_classes_without_a_side_survive_the_flip():
    for c in ("vc-open", "vc-closed", "throat"):
        assert flip_label(c) == c
        assert list(flip_captions(captions.class_captions(c))) == captions.class_captions(c)
    for c in lexicon.CLASSES:  # a double flip is the identity, and a flip never changes the site or state
        assert flip_label(flip_label(c)) == c
        p, q = lexicon.parse_plain(lexicon.class_description(c)), lexicon.parse_plain(lexicon.class_description(flip_label(c)))
        assert (p.site, p.state) == (q.site, q.state)


def test_view_plan_and_views(entrep_train, entrep_labels):
    assert mirrored_plan(6, True) == [False, True, False, True, False, True]
    assert mirrored_plan(4, False) == [False] * 4
    name = sorted(n for n, c in entrep_labels.items() if c == "ear-left")[0]
    field = circle_crop(load_image(entrep_train / "imgs" / name))
    kw = dict(seed=0, sha="abc", size=96, mean=(0.5,) * 3, std=(0.5,) * 3)
    x, plan = make_views(field, 4, **kw)
    assert x.shape == (4, 3, 96, 96) and plan == [False, True, False, True]
    assert torch.equal(x[0], prepare(field, 96))  # view 0: the plain field
    assert torch.equal(x[1], prepare(ImageOps.mirror(field), 96))  # view 1: its exact mirror
    assert torch.allclose(x[1], x[0].flip(-1), atol=0.05)
    assert not torch.allclose(x[2], x[0], atol=0.05)  # view 2+: augmented
    again, _ = make_views(field, 4, **kw)
    assert torch.equal(again, x)  # seeded per image and view
    other, _ = make_views(field, 4, **{**kw, "seed": 1})
    assert torch.equal(other[:2], x[:2]) and not torch.equal(other[2:], x[2:])
    no_flip, plan = make_views(field, 2, **{**kw, "flip": False})
    assert plan == [False, False] and not torch.allclose(no_flip[1], x[1], atol=0.05)
