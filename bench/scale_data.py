"""Vectors and exact search for bench/scale.py: simulated 10-fold bundle vectors, and the two-stage search.

Two kinds of data, both SIMULATED (no model runs; 1M real frames would take ~14 h to embed here):

`random`: unit vectors uniform on the 640-d sphere, classes uniform over 7. No neighbourhood structure at all:
the worst case for any approximate index (every point is about equally far from every query).

`folds` (default): what a 10-fold bundle stores for frames of endoscopy videos. Per item a latent 64-d vector

    z = normalise(CLASS_W * P[class] + EXAM_W * E[exam] + SHOT_W * S[shot] + FRAME_W * g)

with P (7 class prototypes), E (one per examination), S (one per shot) and g (per frame) independent
standard normal 64-d vectors divided by 8 (so each has norm ~1). Items are laid out as videos are indexed:
FRAMES_PER_SHOT consecutive frames form a shot (near-duplicates: cosine ~0.97 to each other), SHOTS_PER_EXAM
shots an examination (so the archive has n / 240 examinations: ~4,200 at 1M), each shot of one class drawn
uniformly from 7. Each fold k sees the item through its own fixed random orthogonal 64x64 map R_k (folds are
separately trained heads, so their spaces are not aligned) plus its own disagreement:

    slice_k = normalise(R_k z + FOLD_NOISE * g_k),     vector = [slice_1 .. slice_10] / sqrt(10)

which is how kger stores a bundle's fold vectors (retrieval/ensemble.py: concatenated unit fold vectors
divided by sqrt(K), a unit vector whose inner products are the mean fold cosine). Queries stand for text
queries landing near an image cluster: the latent of a random shot with QUERY_W noise instead of FRAME_W and
QUERY_FOLD_NOISE per fold (the text-image gap). Because every fold encodes the same 64-d latent, the 640-d
vectors lie near a 64-d subspace by construction; real ensembles are that redundant only in part, so the
projection's recall here is an upper bound of what real vectors give and must be re-checked on real ones.

Two-stage search (the proposal): ANN over a 64-d projection of the stored vectors, top-N candidates, then exact
re-scoring of those N with the full 640-d vectors (float16 rows on disk, row = item index), top-k of those.
With a class filter the first stage is no ANN but an exact scan of that class's 64-d projections (stored
grouped by class, so one class is one contiguous slice): a filter keeps ~1/7 of the items, and scanning
140k x 64 numbers is cheaper than making the ANN index skip the other 6/7 (Chroma's filtered query took
0.7 s at 1M, recall 0.94).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

FOLDS, FOLD_DIM = 10, 64
DIM = FOLDS * FOLD_DIM
N_CLASSES = 7
GEN_CHUNK = 100_000


@dataclass(frozen=True)
class FoldsSpec:
    """The `folds` generator's parameters (see the module docstring)."""

    class_w: float = 1.0
    exam_w: float = 0.8
    shot_w: float = 0.5
    frame_w: float = 0.25
    frames_per_shot: int = 20
    shots_per_exam: int = 12
    fold_noise: float = 0.3
    query_w: float = 0.5
    query_fold_noise: float = 0.5


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _gauss(rng: np.random.Generator, n: int, d: int = FOLD_DIM) -> np.ndarray:
    return rng.standard_normal((n, d), dtype=np.float32) / np.float32(np.sqrt(d))


def random_data(n: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vectors (n, 640), class index (n,), queries (nq, 640), a class per query (drawn: random queries have
    none)), all unit vectors uniform on the sphere."""
    rng = np.random.default_rng(seed)
    data = np.concatenate([normalise(rng.standard_normal((min(GEN_CHUNK, n - s), DIM), dtype=np.float32))
                           for s in range(0, n, GEN_CHUNK)])
    cls = rng.integers(0, N_CLASSES, n)
    return data, cls, normalise(rng.standard_normal((nq, DIM), dtype=np.float32)), rng.integers(0, N_CLASSES, nq)


def folds_data(n: int, nq: int, seed: int = 0, spec: FoldsSpec = FoldsSpec()
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vectors (n, 640), class index (n,), queries (nq, 640), each query's class (that of the shot it was
    drawn near, as a description names the region it asks for)) as a 10-fold bundle would store video frames."""
    rng = np.random.default_rng(seed)
    n_shots = -(-n // spec.frames_per_shot)
    n_exams = -(-n_shots // spec.shots_per_exam)
    protos, exams, shots = _gauss(rng, N_CLASSES), _gauss(rng, n_exams), _gauss(rng, n_shots)
    shot_cls = rng.integers(0, N_CLASSES, n_shots)
    rotations = [np.linalg.qr(rng.standard_normal((FOLD_DIM, FOLD_DIM)))[0].astype(np.float32) for _ in range(FOLDS)]

    def shot_centre(shot: np.ndarray) -> np.ndarray:
        return (spec.class_w * protos[shot_cls[shot]] + spec.exam_w * exams[shot // spec.shots_per_exam]
                + spec.shot_w * shots[shot])

    def encode(latent: np.ndarray, noise: float) -> np.ndarray:
        parts = [normalise(latent @ r.T + noise * _gauss(rng, len(latent))) for r in rotations]
        return np.concatenate(parts, axis=1) / np.float32(np.sqrt(FOLDS))

    shot_of = np.arange(n) // spec.frames_per_shot
    data = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, GEN_CHUNK):
        sh = shot_of[s: s + GEN_CHUNK]
        data[s: s + len(sh)] = encode(normalise(shot_centre(sh) + spec.frame_w * _gauss(rng, len(sh))), spec.fold_noise)
    q_shots = rng.integers(0, n_shots, nq)
    queries = encode(normalise(shot_centre(q_shots) + spec.query_w * _gauss(rng, nq)), spec.query_fold_noise)
    return data, shot_cls[shot_of], queries, shot_cls[q_shots]


def exact_topk_own_class(data: np.ndarray, cls: np.ndarray, queries: np.ndarray, q_cls: np.ndarray,
                         k: int = 10) -> list[np.ndarray]:
    """Each query's exact top k among the rows of its own class."""
    out: list = [None] * len(queries)
    for c in np.unique(q_cls):
        which = np.flatnonzero(q_cls == c)
        for j, top in zip(which, exact_topk(data, queries[which], k, mask=cls == c)):
            out[j] = top
    return out


def exact_topk(data: np.ndarray, queries: np.ndarray, k: int = 10, mask: np.ndarray | None = None,
               step: int = 25) -> list[np.ndarray]:
    """Row indices of each query's k best inner products (unordered), over the rows where `mask` holds."""
    idx = np.arange(len(data)) if mask is None else np.flatnonzero(mask)
    sub = data if mask is None else data[idx]
    if k >= len(sub):
        return [idx] * len(queries)
    out = []
    for s in range(0, len(queries), step):
        scores = sub @ queries[s: s + step].T
        out += [idx[np.argpartition(-scores[:, j], k)[:k]] for j in range(scores.shape[1])]
    return out


# -- projections to 64-d: both map (m, 640) -> (m, 64) unit vectors -----------------------------------------------
def fit_pca(sample: np.ndarray, d: int = FOLD_DIM) -> np.ndarray:
    """(640, d) top right-singular vectors of the (uncentred) sample: the d-dim subspace best keeping inner
    products with unit vectors, which is what cosine search needs (centring would keep variance instead).
    Eigenvectors of the 640x640 Gram matrix: the same subspace as an SVD of the sample, 50x faster here."""
    x = sample.astype(np.float64)
    return np.linalg.eigh(x.T @ x)[1][:, ::-1][:, :d].astype(np.float32)


def pca_projection(basis: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: normalise(np.asarray(x, dtype=np.float32) @ basis)


def fold_mean(x: np.ndarray) -> np.ndarray:
    """The mean of the 10 fold slices, re-normalised (needs no fitting, but folds' spaces are not aligned)."""
    x = np.asarray(x, dtype=np.float32)
    return normalise(x.reshape(*x.shape[:-1], FOLDS, FOLD_DIM).mean(axis=-2))


# -- re-scoring with the full vectors ----------------------------------------------------------------------------
def write_rows(path: Path, data: np.ndarray, step: int = GEN_CHUNK) -> None:
    """The full vectors as float16 rows in a flat file (2 bytes x 640 per item; row = item index), written
    with plain writes so that building it does not map the pages into this process."""
    with open(path, "wb") as f:
        for s in range(0, len(data), step):
            f.write(data[s: s + step].astype(np.float16).tobytes())


def open_rows(path: Path, dim: int = DIM) -> np.ndarray:
    return np.memmap(path, dtype=np.float16, mode="r").reshape(-1, dim)


def rescore(rows: np.ndarray, candidates: np.ndarray, query: np.ndarray, k: int = 10) -> np.ndarray:
    """The k candidates (row indices) with the highest exact inner product with `query`, best first
    (ties by row index)."""
    cand = np.unique(np.asarray(candidates, dtype=np.int64))  # sorted: the memmap reads forward
    if len(cand) == 0:
        return cand
    scores = rows[cand].astype(np.float32) @ np.asarray(query, dtype=np.float32)
    order = np.lexsort((cand, -scores))[:k]
    return cand[order]


def projected_recall(project: Callable[[np.ndarray], np.ndarray], data: np.ndarray, rows: np.ndarray,
                     queries: np.ndarray, truth: list[np.ndarray], n_cand: int, k: int = 10) -> float:
    """Recall@k of the two-stage search with an EXACT first stage (no ANN): what the projection alone loses."""
    proj = project(data)
    hits = 0
    for q, t, cand in zip(queries, truth, exact_topk(proj, project(queries), n_cand)):
        hits += len(set(rescore(rows, cand, q, k).tolist()) & set(t.tolist()))
    return hits / (k * len(queries))


class ClassScan:
    """The exact first stage for a class filter: 64-d projections grouped by class, one class one slice.
    Saved as two .npy files (projections in class order, and their row indices) and read through memmaps."""

    def __init__(self, folder: Path):
        self.proj = np.load(folder / "class_proj.npy", mmap_mode="r")
        self.rows = np.load(folder / "class_rows.npy", mmap_mode="r")
        self.bounds = np.load(folder / "class_bounds.npy")

    @staticmethod
    def write(folder: Path, proj: np.ndarray, cls: np.ndarray) -> None:
        order = np.argsort(cls, kind="stable")
        np.save(folder / "class_proj.npy", proj[order].astype(np.float32))
        np.save(folder / "class_rows.npy", order.astype(np.int64))
        np.save(folder / "class_bounds.npy", np.searchsorted(cls[order], np.arange(N_CLASSES + 1)))

    def top(self, projected_query: np.ndarray, c: int, n_cand: int) -> np.ndarray:
        """Row indices of the n_cand items of class c with the highest inner product in the projection."""
        s, e = int(self.bounds[c]), int(self.bounds[c + 1])
        scores = self.proj[s:e] @ projected_query
        if n_cand >= e - s:
            return np.asarray(self.rows[s:e])
        return np.asarray(self.rows[s:e])[np.argpartition(-scores, n_cand - 1)[:n_cand]]
