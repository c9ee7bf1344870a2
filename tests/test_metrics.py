import math

import pytest

from retrieval.metrics import mrr, ndcg_at_k, precision_at_k, recall_at_k, summarize


def test_recall_is_a_hit_rate_within_k():
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"c"}, 1) == 0.0
    assert recall_at_k(ranked, {"c"}, 2) == 0.0
    assert recall_at_k(ranked, {"c"}, 3) == 1.0
    assert recall_at_k(ranked, ["x", "b"], 2) == 1.0  # any relevant id counts
    assert recall_at_k(ranked, set(), 10) == 0.0


def test_precision_divides_by_k_even_for_short_lists():
    assert precision_at_k(["a", "b", "c"], {"a", "c"}, 3) == pytest.approx(2 / 3)
    assert precision_at_k(["a"], {"a"}, 3) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        precision_at_k(["a"], {"a"}, 0)


def test_mrr_uses_the_first_relevant_rank():
    assert mrr(["a", "b", "c"], {"b", "c"}) == 0.5
    assert mrr(["a", "b", "c"], {"a"}) == 1.0
    assert mrr(["a", "b", "c"], {"z"}) == 0.0


def test_ndcg_hand_computed():
    # relevant at ranks 1 and 3 out of 2 relevant: (1 + 1/log2(4)) / (1 + 1/log2(3))
    expected = (1 + 1 / 2) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["a", "x", "b", "y"], {"a", "b"}, 10) == pytest.approx(expected)
    assert ndcg_at_k(["a", "b"], {"a", "b"}, 10) == pytest.approx(1.0)
    # cut at k: a relevant item below k does not count, and the ideal has min(|rel|, k) hits
    assert ndcg_at_k(["x", "a"], {"a"}, 1) == 0.0
    assert ndcg_at_k(["a", "x"], {"a", "b", "c"}, 1) == 1.0


def test_summarize_averages_and_counts_queries_without_hits():
    s = summarize([(["a", "b", "c"], {"a"}), (["a", "b", "c"], {"c"}), (["a"], {"z"})])
    assert s["n"] == 3
    assert s["R@1"] == pytest.approx(1 / 3)
    assert s["R@5"] == pytest.approx(2 / 3)
    assert s["MRR"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert 0 < s["nDCG@10"] < 1
    assert summarize([])["n"] == 0
