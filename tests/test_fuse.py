"""Pos-Fuse: KGER's numbers, determinism, ties, mismatched lists, every strategy, bad config."""
from __future__ import annotations

import itertools
import math
import random

import pytest

from agent.posfuse import STRATEGIES, FuseConfig, fuse, position_probs

RETRIEVAL = [("a", 0.91), ("b", 0.85), ("c", 0.80), ("d", 0.72), ("e", 0.70)]
# judge answers in an arbitrary order; "x" was judged but is not in the retrieval list, "d" was not judged
JUDGE = [("e", 0.5), ("x", 0.1), ("c", 0.9), ("b", 0.2), ("a", 0.9)]


def test_position_probs_are_kgers_exponential_prior():
    probs = position_probs(5)
    assert probs == pytest.approx([0.2975, 0.2380, 0.1904, 0.1523, 0.1218], abs=5e-5)
    assert math.fsum(probs) == pytest.approx(1.0)
    assert position_probs(0) == []
    assert position_probs(4, decay=1.0) == [0.25] * 4
    with pytest.raises(ValueError):
        position_probs(-1)
    with pytest.raises(ValueError):
        position_probs(3, decay=0.0)


def test_posfuse_reproduces_the_hand_arithmetic():
    rows = {r.id: r for r in fuse(RETRIEVAL, JUDGE)}
    # judge ranking: a (.9, retrieval rank 1), c (.9, rank 3), e (.5), b (.2), x (.1); min-max over [.1, .9]
    a, c, b, d, x = rows["a"], rows["c"], rows["b"], rows["d"], rows["x"]
    assert (a.judge_rank, c.judge_rank, rows["e"].judge_rank, b.judge_rank, x.judge_rank) == (1, 2, 3, 4, 5)
    assert a.final == pytest.approx(0.4 * 0.29748 + 0.6 * (0.6 * 0.29748 + 0.4 * 1.0), abs=1e-4)  # 0.4661
    assert c.final == pytest.approx(0.4 * 0.19039 + 0.6 * (0.6 * 0.23798 + 0.4 * 1.0), abs=1e-4)  # 0.4018
    assert b.final == pytest.approx(0.4 * 0.23798 + 0.6 * (0.6 * 0.15231 + 0.4 * 0.125), abs=1e-4)
    assert d.final == pytest.approx(0.15231, abs=1e-4)  # retrieval only: its position prob
    assert x.final == pytest.approx(0.6 * 0.12185, abs=1e-4)  # judge only: 0.6*pos + 0.4*0
    assert a.formula == "(0.4*0.2975 + 0.6*(0.6*0.2975+0.4*1.000)) / 1 = 0.4661"
    assert d.formula == "(0.4*0.1523) / 0.4 = 0.1523"
    assert [r.id for r in fuse(RETRIEVAL, JUDGE)] == ["a", "c", "e", "b", "d", "x"]
    assert (a.retrieval_rank, x.retrieval_rank, d.judge_rank) == (1, None, None)
    assert (a.judge_score, d.judge_score) == (0.9, None)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_formula_redoes_the_arithmetic(strategy):
    for row in fuse(RETRIEVAL, JUDGE, FuseConfig(strategy=strategy)):
        expression, shown = row.formula.rsplit(" = ", 1)
        assert float(shown) == pytest.approx(row.final, abs=5e-5)
        if not expression.startswith("min:"):
            assert eval(expression, {"__builtins__": {"max": max, "min": min}}) == pytest.approx(row.final, abs=2e-3)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_judge_input_order_does_not_matter(strategy):
    cfg = FuseConfig(strategy=strategy)
    expected = fuse(RETRIEVAL, JUDGE, cfg)
    for perm in itertools.permutations(JUDGE):
        assert fuse(RETRIEVAL, list(perm), cfg) == expected


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_scores_stay_in_bounds(strategy):
    rng = random.Random(7)
    cfg = FuseConfig(strategy=strategy)
    for _ in range(50):
        ids = [f"img{i}" for i in range(rng.randint(0, 12))]
        retrieval = [(i, rng.uniform(-1, 1)) for i in rng.sample(ids, rng.randint(0, len(ids)))]
        judge = [(i, rng.choice([0.0, 1.0, rng.random()])) for i in rng.sample(ids, rng.randint(0, len(ids)))]
        rows = fuse(retrieval, judge, cfg)
        assert {r.id for r in rows} == {i for i, _ in retrieval} | {i for i, _ in judge}
        assert all(0.0 <= r.final <= 1.0 for r in rows)
        assert [r.final for r in rows] == sorted((r.final for r in rows), reverse=True)


def test_ties_go_to_retrieval_rank_then_id():
    flat = FuseConfig(decay=1.0)  # every position equally likely: all finals tie
    rows = fuse([("b", 0.1), ("a", 0.9)], [], flat)
    assert [r.id for r in rows] == ["b", "a"]  # retrieval order, not id, not score
    rows = fuse([], [("z", 0.5), ("m", 0.5), ("q", 0.5)], flat)
    assert [r.id for r in rows] == ["m", "q", "z"]
    # equal judge scores: the judge ranking follows the retrieval ranking
    rows = fuse([("c", 0.3), ("a", 0.2), ("b", 0.1)], [("a", 0.7), ("b", 0.7), ("c", 0.7)])
    assert [(r.id, r.judge_rank) for r in rows] == [("c", 1), ("a", 2), ("b", 3)]
    # KGER: when all judge scores are equal the normalised score is 0 for all
    assert rows[0].judge_prob == pytest.approx(0.6 * position_probs(3)[0])


def test_lists_of_different_length_and_disjoint_members():
    rows = fuse([("a", 0.9), ("b", 0.8)], [("c", 1.0), ("d", 0.4), ("e", 0.0)])
    by_id = {r.id: r for r in rows}
    assert set(by_id) == {"a", "b", "c", "d", "e"}
    assert by_id["a"].final == pytest.approx(position_probs(2)[0])
    assert by_id["c"].final == pytest.approx(0.6 * position_probs(3)[0] + 0.4 * 1.0)
    assert by_id["e"].final == pytest.approx(0.6 * position_probs(3)[2])
    assert [r.id for r in rows] == ["c", "a", "b", "d", "e"]
    assert fuse([], []) == []


def test_other_strategies_follow_kger():
    p5 = position_probs(5)
    a_judge = 0.6 * p5[0] + 0.4 * 1.0

    def row(strategy, item):
        return {r.id: r for r in fuse(RETRIEVAL, JUDGE, FuseConfig(strategy=strategy))}[item]

    assert row("max", "a").final == pytest.approx(a_judge)
    assert row("max", "d").final == pytest.approx(p5[3])  # judge side absent counts as 0
    assert row("min", "a").final == pytest.approx(p5[0])
    assert row("min", "d").final == 0.0 and row("min", "x").final == 0.0  # not in both lists
    assert row("rrf", "a").final == pytest.approx(2 / 61)
    assert row("rrf", "c").final == pytest.approx(1 / 63 + 1 / 62)
    assert row("rrf", "x").final == pytest.approx(1 / 65)
    # confidence-weighted: judge side = pos * (0.3 + 0.7 * normalised score)
    assert row("confidence_weighted", "b").final == pytest.approx(0.4 * p5[1] + 0.6 * p5[3] * (0.3 + 0.7 * 0.125))
    orders = {s: [r.id for r in fuse(RETRIEVAL, JUDGE, FuseConfig(strategy=s))] for s in STRATEGIES}
    assert orders["min"][-2:] == ["d", "x"] and orders["max"][0] == "a"
    assert len({tuple(o) for o in orders.values()}) > 1  # the strategies really differ


def test_weights_shift_the_order():
    retrieval = [("r1", 0.9), ("r2", 0.8), ("r3", 0.7)]
    judge = [("r3", 1.0), ("r2", 0.5), ("r1", 0.0)]
    assert fuse(retrieval, judge, FuseConfig(w_retrieval=1.0, w_judge=0.0))[0].id == "r1"
    assert fuse(retrieval, judge, FuseConfig(w_retrieval=0.0, w_judge=1.0))[0].id == "r3"


@pytest.mark.parametrize("kwargs", [
    {"strategy": "borda"}, {"decay": 0.0}, {"decay": 1.5}, {"w_retrieval": -0.1},
    {"w_retrieval": 0.0, "w_judge": 0.0}, {"judge_pos_weight": 1.2}, {"rrf_k": -1}, {"rrf_k": 2.5},
])
def test_invalid_config_is_a_value_error(kwargs):
    with pytest.raises(ValueError):
        FuseConfig(**kwargs)


@pytest.mark.parametrize("retrieval,judge", [
    ([("a", 0.9), ("a", 0.8)], []),
    ([], [("a", 0.9), ("a", 0.8)]),
    ([("a", 0.9)], [("a", 1.5)]),
    ([("a", 0.9)], [("a", -0.1)]),
    ([("a", 0.9)], [("a", float("nan"))]),
    ([("a", float("inf"))], []),
])
def test_invalid_input_is_a_value_error(retrieval, judge):
    with pytest.raises(ValueError):
        fuse(retrieval, judge)
