"""The offline judge: class consistency with the description plus agreement of the fold models."""
from __future__ import annotations

import random

import pytest

from agent.judges.base import Candidate, Judge
from agent.judges.offline import OfflineJudge, fold_agreement, offline_verdict


def cand(cid: str, rank: int, folds: list[float], **kw) -> Candidate:
    return Candidate(id=cid, path=f"/imgs/{cid}.png", rank=rank, score=sum(folds) / max(len(folds), 1),
                     fold_scores=folds, **kw)


# "right" is the retrieval favourite and every fold's favourite, but it shows the wrong side
CANDIDATES = [
    cand("right", 1, [0.9, 0.9, 0.9, 0.9], label="ear-right"),
    cand("left", 2, [0.5, 0.1, 0.6, 0.2], label="ear-left"),
    cand("nose", 3, [0.8, 0.8, 0.1, 0.7], label="nose-left"),
    cand("pred", 4, [0.7, 0.7, 0.7, 0.1], predicted="ear-left", predicted_prob=0.8),
    cand("unknown", 5, [0.1, 0.6, 0.5, 0.6]),
]


def by_id(verdicts):
    return {v.id: v for v in verdicts}


def test_same_side_beats_opposite_side_whatever_the_folds_say():
    v = by_id(OfflineJudge().judge("wax in the left ear", CANDIDATES))
    assert v["left"].score > v["right"].score
    assert v["pred"].score > v["right"].score and v["pred"].score < v["left"].score + 0.3
    assert v["nose"].score < v["left"].score  # wrong site
    assert "side mismatch" in v["right"].justification
    assert "Labelled ear-left: site ear and side left match ear-left." in v["left"].justification
    assert v["left"].region_seen == "left ear"


def test_verdicts_follow_the_contract():
    judge: Judge = OfflineJudge()
    verdicts = judge.judge("left ear", CANDIDATES)
    assert [v.id for v in verdicts] == [c.id for c in CANDIDATES]
    assert all(v.judge == "offline" and v.model == "offline-lexicon" for v in verdicts)
    assert all(0.0 <= v.score <= 1.0 for v in verdicts)
    assert judge.name == "offline" and OfflineJudge().judge("left ear", []) == []


def test_fold_agreement_counts_each_folds_top_k():
    agree = fold_agreement(CANDIDATES, top_k=2)
    # fold 0: right, nose | fold 1: right, nose | fold 2: right, pred | fold 3: right, nose
    assert agree == {"right": (4, 4), "left": (0, 4), "nose": (3, 4), "pred": (1, 4), "unknown": (0, 4)}
    v = by_id(OfflineJudge(top_fold_k=2).judge("left ear", CANDIDATES))
    assert v["nose"].justification.startswith("3/4 folds rank it in their top 2;")
    # label ear-left matches fully (1.0); no fold ranks it top 2: 0.7 * 1.0 + 0.3 * 0
    assert v["left"].score == pytest.approx(0.7)
    assert v["right"].score == pytest.approx(0.3)  # consistency 0, every fold agrees


def test_reasons_say_what_separates_candidates_of_one_class():
    """Issue 23: three right-ear images scored 0.90 / 0.80 / 0.70 all read "site ear and side right match":
    the reason leads with what differs (fold agreement, the retrieval rank and cosine, familiarity)."""
    same = [cand("a", 1, [0.9, 0.9, 0.9], label="ear-right"), cand("b", 2, [0.8, 0.2, 0.8], label="ear-right"),
            cand("c", 3, [0.1, 0.1, 0.1], label="ear-right", familiarity=0.42, familiar=True),
            cand("d", 4, [0.9, 0.8, 0.85], label="ear-right")]
    v = OfflineJudge(top_fold_k=2).judge("right ear", same)
    assert len({x.score for x in v}) > 1
    assert len({x.justification for x in v}) == len(v)  # never one template for every row
    assert v[0].justification.startswith("3/3 folds rank it in their top 2; retrieved #1 (cosine 0.90).")
    assert v[2].justification.startswith("0/3 folds rank it in their top 2; retrieved #3 (cosine 0.10), "
                                         "familiarity 0.42.")


def test_fold_ties_go_to_retrieval_rank():
    tied = [cand("b", 2, [0.5]), cand("a", 1, [0.5]), cand("c", 3, [0.5])]
    assert fold_agreement(tied, top_k=1) == {"a": (1, 1), "b": (0, 1), "c": (0, 1)}


def test_prediction_is_weighed_by_its_probability():
    sure = cand("sure", 1, [], predicted="ear-left", predicted_prob=0.9)
    unsure = cand("unsure", 2, [], predicted="ear-left", predicted_prob=0.2)
    wrong = cand("wrong", 3, [], predicted="ear-right", predicted_prob=0.9)
    v = by_id(OfflineJudge().judge("left ear", [sure, unsure, wrong]))
    assert v["sure"].score == pytest.approx(0.9 * 1.0 + 0.1 * 0.5)
    assert v["unsure"].score == pytest.approx(0.2 * 1.0 + 0.8 * 0.5)
    assert v["wrong"].score == pytest.approx(0.1 * 0.5)
    assert "Predicted ear-left (p=0.90)" in v["sure"].justification
    assert "No per-fold scores" in v["sure"].justification


def test_unlabelled_candidate_and_uninformative_query_are_neutral_and_say_so():
    v = by_id(OfflineJudge().judge("left ear", CANDIDATES))
    assert "No label or predicted class" in v["unknown"].justification
    vague = by_id(OfflineJudge().judge("suspected of polyp", CANDIDATES))
    assert all("names no site, side or state" in vague[c].justification for c in ("right", "left", "nose"))
    # with nothing to check, the folds decide: "right" is in every fold's top 3, "left" in one
    assert vague["right"].score > vague["left"].score


def test_deterministic_and_independent_of_candidate_order():
    first = OfflineJudge().judge("the left ear canal is erythematous", CANDIDATES)
    shuffled = CANDIDATES[:]
    random.Random(3).shuffle(shuffled)
    again = OfflineJudge().judge("the left ear canal is erythematous", shuffled)
    assert by_id(first) == by_id(again)
    assert first == OfflineJudge().judge("the left ear canal is erythematous", CANDIDATES)


def test_offline_verdict_stands_in_for_one_candidate():
    full = by_id(OfflineJudge().judge("left ear", CANDIDATES))
    single = offline_verdict("left ear", CANDIDATES[1], CANDIDATES, reason="gemini timed out")
    assert single.fallback == "gemini timed out"
    assert single.model_copy(update={"fallback": None}) == full["left"]
    outsider = cand("new", 9, [1.0, 1.0, 1.0, 1.0], label="ear-left")
    assert "4/4 folds" in offline_verdict("left ear", outsider, CANDIDATES).justification


def test_a_malformed_candidate_does_not_sink_the_list():
    bad = Candidate.model_construct(id="bad", path="/x", rank=6, score=0.1, fold_scores=[float("nan")], label=7)
    verdicts = OfflineJudge().judge("left ear", [*CANDIDATES, bad])
    assert len(verdicts) == len(CANDIDATES) + 1
    assert verdicts[-1].id == "bad" and 0.0 <= verdicts[-1].score <= 1.0


def test_top_fold_k_must_be_positive():
    with pytest.raises(ValueError):
        OfflineJudge(top_fold_k=0)


def test_real_labels_put_the_described_class_first(entrep_labels):
    """On the 70 real ENTRep labels, every image of the described class outscores every other image."""
    images = sorted(entrep_labels)
    candidates = [cand(img, i + 1, [0.5, 0.5], label=entrep_labels[img]) for i, img in enumerate(images)]
    for query, wanted in [("R TM perforation", "ear-right"), ("polyp in the left nostril", "nose-left"),
                          ("incomplete glottic closure", "vc-closed"), ("tonsillar hypertrophy", "throat")]:
        verdicts = OfflineJudge().judge(query, candidates)
        hits = [v.score for v in verdicts if entrep_labels[v.id] == wanted]
        others = [v.score for v in verdicts if entrep_labels[v.id] != wanted]
        assert hits and min(hits) > max(others), query
