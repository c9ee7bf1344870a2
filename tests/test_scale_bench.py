"""The scale benchmark's arithmetic (bench/scale_data.py): simulated fold vectors, projections, exact re-scoring.

No timing here (that is bench/scale.py's job): only that the two-stage search is exact when the first stage
keeps every item, and that the simulated vectors have the shape kger stores."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import scale_data as sd  # noqa: E402


@pytest.fixture(scope="module")
def folds():
    return sd.folds_data(600, 12, seed=3)


def test_fold_vectors_are_unit_concatenations_of_unit_fold_slices(folds):
    data, cls, queries, q_cls = folds
    assert data.shape == (600, sd.DIM) and queries.shape == (12, sd.DIM) and cls.shape == (600,)
    assert q_cls.shape == (12,) and set(q_cls) <= set(range(sd.N_CLASSES))
    slices = data.reshape(600, sd.FOLDS, sd.FOLD_DIM) * np.sqrt(sd.FOLDS)
    np.testing.assert_allclose(np.linalg.norm(slices, axis=2), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(data, axis=1), 1.0, atol=1e-5)
    again = sd.folds_data(600, 12, seed=3)
    assert np.array_equal(again[0], data) and np.array_equal(again[2], queries)


def test_frames_of_one_shot_are_nearer_than_frames_of_other_examinations(folds):
    data = folds[0]
    spec = sd.FoldsSpec()
    same_shot = data[1: spec.frames_per_shot] @ data[0]
    other_exam = data[spec.frames_per_shot * spec.shots_per_exam:] @ data[0]
    assert same_shot.min() > other_exam.max()


@pytest.mark.parametrize("kind", ["folds", "random"])
def test_two_stage_equals_exact_search_when_the_first_stage_keeps_every_item(tmp_path, folds, kind):
    data, _, queries, _ = folds if kind == "folds" else sd.random_data(600, 12, seed=3)
    sd.write_rows(tmp_path / "rows.f16", data)
    rows = sd.open_rows(tmp_path / "rows.f16")
    assert rows.shape == data.shape
    truth = sd.exact_topk(data, queries)
    project = sd.pca_projection(sd.fit_pca(data))
    assert sd.projected_recall(project, data, rows, queries, truth, n_cand=len(data)) == 1.0
    assert sd.projected_recall(sd.fold_mean, data, rows, queries, truth, n_cand=len(data)) == 1.0


def test_rescore_orders_candidates_by_exact_score_and_ignores_the_rest(tmp_path):
    data = sd.normalise(np.random.default_rng(0).standard_normal((50, sd.DIM)).astype(np.float32))
    sd.write_rows(tmp_path / "rows.f16", data)
    rows = sd.open_rows(tmp_path / "rows.f16")
    q = data[7]
    cand = np.array([3, 7, 7, 40, 12])  # repeats count once
    got = sd.rescore(rows, cand, q, k=3)
    scores = data[[3, 7, 12, 40]] @ q
    assert got[0] == 7 and len(got) == 3
    assert list(got) == [int(i) for i in np.array([3, 7, 12, 40])[np.argsort(-scores)][:3]]
    assert len(sd.rescore(rows, np.array([], dtype=np.int64), q)) == 0


def test_pca_keeps_inner_products_of_vectors_in_a_64d_subspace():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((sd.DIM, sd.FOLD_DIM)))[0]
    x = sd.normalise((rng.standard_normal((300, sd.FOLD_DIM)) @ basis.T).astype(np.float32))
    y = sd.pca_projection(sd.fit_pca(x))(x)
    np.testing.assert_allclose(y @ y.T, x @ x.T, atol=1e-4)


def test_class_scan_is_exact_search_over_one_class_of_the_projections(tmp_path, folds):
    data, cls, queries, q_cls = folds
    proj = sd.fold_mean(data)
    sd.ClassScan.write(tmp_path, proj, cls)
    scan = sd.ClassScan(tmp_path)
    pq = sd.fold_mean(queries)
    for c in (0, 4):
        truth = sd.exact_topk(proj, pq, k=25, mask=cls == c)
        for q, t in zip(pq, truth):
            got = scan.top(q, c, 25)
            assert set(got.tolist()) == set(t.tolist()) and (cls[got] == c).all()
    assert set(scan.top(pq[0], 1, 10_000).tolist()) == set(np.flatnonzero(cls == 1).tolist())


def test_own_class_truth_is_the_exact_search_within_each_querys_class(folds):
    data, cls, queries, q_cls = folds
    got = sd.exact_topk_own_class(data, cls, queries, q_cls, k=5)
    for q, c, top in zip(queries, q_cls, got):
        members = np.flatnonzero(cls == c)
        assert set(top) == set(members[np.argsort(-(data[members] @ q))[:5]])
