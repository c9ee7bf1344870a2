import math

import pytest
import torch

from training.loss import classifier_loss, confusable, hard_negatives, multi_positive_loss, positive_weights


def _batch():
    # 4 images: two ear-left sharing description 0, one ear-right (description 1), one vc-open (no description)
    caps = [frozenset({0, 10}), frozenset({0, 10}), frozenset({1, 11}), frozenset({12})]
    classes = ["ear-left", "ear-left", "ear-right", "vc-open"]
    text_ids = [0, 10, 1, 12]  # the caption drawn for each image
    return caps, classes, text_ids


def test_pairs_sharing_a_description_or_class_are_positives():
    caps, classes, text_ids = _batch()
    w = positive_weights(caps, classes, text_ids, classes, class_weight=0.5)
    expected = torch.tensor([
        [1.0, 1.0, 0.0, 0.0],  # image 0: its own description and image 1's class caption (both its captions)
        [1.0, 1.0, 0.0, 0.0],  # image 1: image 0's description is its description too
        [0.0, 0.0, 1.0, 0.0],  # ear-right: the left captions are negatives
        [0.0, 0.0, 0.0, 1.0],
    ])
    assert torch.equal(w, expected)
    # a text of the same class that the image does not carry is a (weighted) positive, never a negative
    w = positive_weights([frozenset({5})], ["ear-left"], [6], ["ear-left"], class_weight=0.5)
    assert w.item() == 0.5
    # unknown classes never match each other
    assert positive_weights([frozenset({5})], [None], [6], [None]).item() == 0.0


def test_targets_are_the_normalised_positive_mask_both_ways():
    caps, classes, text_ids = _batch()
    w = positive_weights(caps, classes, text_ids, classes)
    img = torch.randn(4, 8)
    txt = torch.randn(4, 8)
    scale = torch.tensor(math.log(10.0))
    loss = multi_positive_loss(img, txt, scale, w)
    logits = 10.0 * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    rows = w / w.sum(1, keepdim=True)
    cols = w / w.sum(0, keepdim=True)
    by_hand = (-(rows * logits.log_softmax(1)).sum(1).mean() - (cols * logits.log_softmax(0)).sum(0).mean()) / 2
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_positives_are_pulled_together_not_pushed_apart():
    """Two images of one description: the multi-positive loss prefers them embedded together, plain CLIP
    targets (identity) prefer them apart, which is what KGER trained."""
    caps, classes, text_ids = _batch()
    w = positive_weights(caps, classes, text_ids, classes)
    e = torch.eye(4)
    tied = torch.stack([e[0], e[0], e[2], e[3]])  # images 0 and 1 (and their texts) in one place
    apart = e.clone()
    scale = torch.tensor(math.log(100.0))
    multi_tied, multi_apart = (multi_positive_loss(x, x, scale, w).item() for x in (tied, apart))
    plain_tied, plain_apart = (multi_positive_loss(x, x, scale, torch.eye(4)).item() for x in (tied, apart))
    assert multi_tied < multi_apart and plain_apart < plain_tied
    assert multi_tied == pytest.approx(2 * math.log(2) / 4, abs=1e-3)  # two equal positives: log 2 per row


def test_hard_negatives_are_opposite_sides_and_open_closed():
    assert confusable("ear-left", "ear-right") and confusable("nose-right", "nose-left")
    assert confusable("vc-open", "vc-closed") and confusable("vc-closed", "vc-open")
    assert not confusable("ear-left", "nose-right") and not confusable("throat", "vc-open")
    assert not confusable("ear-left", "ear-left") and not confusable(None, "ear-left")
    hard = hard_negatives(["ear-left", "vc-open"], ["ear-right", "vc-closed"])
    assert hard.tolist() == [[True, False], [False, True]]
    # the margin raises the loss on those pairs only
    w = torch.eye(2)
    img, txt = torch.randn(2, 8), torch.randn(2, 8)
    scale = torch.tensor(math.log(20.0))
    base = multi_positive_loss(img, txt, scale, w)
    harder = multi_positive_loss(img, txt, scale, w, hard=torch.tensor([[False, True], [True, False]]), margin=0.2)
    same = multi_positive_loss(img, txt, scale, w, hard=torch.zeros(2, 2, dtype=torch.bool), margin=0.2)
    assert harder > base and same == base


def test_classifier_loss_ignores_unknown_labels():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [9.0, -9.0]])
    known = classifier_loss(logits[:2], torch.tensor([0, 1]), smoothing=0.0)
    assert classifier_loss(logits, torch.tensor([0, 1, -1]), smoothing=0.0) == pytest.approx(known.item())
    assert classifier_loss(logits, torch.tensor([-1, -1, -1])).item() == 0.0
