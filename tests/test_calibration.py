"""Calibration of the class head (issue 11): temperature, ECE, trust thresholds, familiarity threshold."""
import numpy as np
import pytest
import torch

from retrieval.trust import NEVER
from training.calibrate import ece, familiar_threshold, fit_temperature, precision_bound, trust_thresholds


def _sampled(t_true: float, n: int = 6000, c: int = 7, seed: int = 0):
    """Logits and labels drawn from softmax(logits / t_true): the temperature that generated them is known."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 3
    labels = torch.multinomial((logits / t_true).softmax(-1), 1, generator=g).squeeze(1)
    return logits.numpy(), labels.numpy()


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_a_known_temperature_is_recovered(t_true):
    logits, labels = _sampled(t_true)
    assert fit_temperature(logits, labels) == pytest.approx(t_true, rel=0.1)


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_head():
    logits, labels = _sampled(2.5)  # the raw softmax is far too sharp for these labels
    t = fit_temperature(logits, labels)
    raw = torch.as_tensor(logits).softmax(-1).numpy()
    cal = (torch.as_tensor(logits) / t).softmax(-1).numpy()
    assert ece(raw, labels) > 0.1
    assert ece(cal, labels) < 0.03


def test_ece_is_zero_when_confidence_equals_accuracy_and_large_when_not():
    probs = np.array([[0.75, 0.25]] * 4)
    assert ece(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert ece(probs, np.array([1, 1, 1, 1])) == pytest.approx(0.75)


def test_trust_threshold_is_where_out_of_fold_precision_reaches_the_target():
    # class 0 predicted with confidences .9 .8 .7 (right), .6 (wrong), .5 (right): precise from .7 on
    conf = [0.9, 0.8, 0.7, 0.6, 0.5]
    probs = np.array([[c, 1 - c] for c in conf])
    labels = np.array([0, 0, 0, 1, 0])
    th = trust_thresholds(probs, labels, ["a", "b"], z=0)  # the plain out-of-fold precision
    assert th["a"] == pytest.approx(0.7)
    assert th["b"] == NEVER  # never predicted: never trusted
    assert trust_thresholds(probs, labels, ["a", "b"])["a"] == NEVER  # 3 of 3 is no measured 98 %


def test_with_the_lower_bound_enough_right_predictions_establish_a_threshold():
    conf = np.r_[np.linspace(0.99, 0.7, 60), 0.65, np.linspace(0.6, 0.4, 20)]
    labels = np.r_[np.zeros(60), 1, np.zeros(20)].astype(int)  # 60 right, one miss at .65, 20 right below
    probs = np.stack([conf, 1 - conf], 1)
    th = trust_thresholds(probs, labels, ["a", "b"])
    assert th["a"] == pytest.approx(0.7) and precision_bound(60, 60) >= 0.98 > precision_bound(6, 6)


def test_a_class_never_precise_or_too_rarely_predicted_is_never_trusted():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.8], [0.3, 0.7]])
    labels = np.array([1, 0, 0, 1, 1])  # the most confident 'a' is wrong; 'b' has only 2 predictions
    th = trust_thresholds(probs, labels, ["a", "b"], z=0)
    assert th == {"a": NEVER, "b": NEVER}
    assert NEVER > 1


def test_familiar_threshold_leaves_each_image_and_its_duplicates_out():
    desc = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=-1)
    threshold, loo = familiar_threshold(desc)
    # the byte-identical pair does not count as each other's neighbour (cosine 1 is masked)
    assert loo[0] == pytest.approx(0.8) and loo[1] == pytest.approx(0.8)
    assert loo[3] == pytest.approx(0.6)
    many = torch.nn.functional.normalize(torch.randn(60, 8, generator=torch.Generator().manual_seed(0)) + 2, dim=-1)
    threshold, loo = familiar_threshold(many)
    assert (loo < threshold).mean() <= 0.05  # nearly every training image counts as familiar
