"""Search a gallery with the ensemble that indexed it: text -> images and image -> images."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from retrieval.bundle import Bundle, BundleError, load_bundle
from retrieval.candidate import Candidate
from retrieval.ensemble import FoldEnsemble, fold_scores
from retrieval.errors import InputError
from retrieval.preprocess import file_sha256, load_for_model


def bound_bundle(gallery) -> dict:
    """The bundle a store was indexed with; an empty store is a user error naming the command to run."""
    bound = gallery.bundle
    if bound is None:
        raise BundleError(f"store '{gallery.name}' is empty; run `kger index IMAGES --bundle DIR --store {gallery.name}`")
    return bound


def _class_probs(stored) -> Optional[dict[str, float]]:
    """Chroma metadata holds scalars only, so the indexer stores the class probabilities as JSON."""
    try:
        return {str(k): float(v) for k, v in json.loads(stored).items()} if stored else None
    except (ValueError, TypeError, AttributeError):
        return None


class Searcher:
    """Holds one loaded bundle and one gallery; checks once, here, that they belong together."""

    def __init__(self, bundle: Bundle, gallery):
        bound_bundle(gallery)
        gallery.check_bundle(bundle.fingerprint)
        self.bundle, self.gallery = bundle, gallery

    @property
    def ens(self) -> FoldEnsemble:
        return self.bundle.ensemble

    @classmethod
    def for_gallery(cls, gallery) -> "Searcher":
        return cls(load_bundle(bound_bundle(gallery)["path"]), gallery)

    def encode_text(self, query: str) -> np.ndarray:
        if not query.strip():
            raise InputError("the description is empty")
        return self.ens.encode_texts([query])[0]

    def by_vector(self, query_vec: np.ndarray, k: int, classes: Optional[Sequence[str]] = None) -> list[Candidate]:
        hits = self.gallery.query(query_vec, k=k, classes=classes, include_embeddings=True)
        if not hits:
            return []
        per_fold = fold_scores(query_vec, np.stack([h.embedding for h in hits]), self.ens.folds)
        out = []
        for rank, (h, fs) in enumerate(zip(hits, per_fold), start=1):
            m = h.metadata
            out.append(Candidate(
                rank=rank, id=h.id, path=m.get("path", ""), score=float(h.score),
                fold_scores=[round(float(x), 6) for x in fs], label=m.get("label"),
                predicted=m.get("predicted"), predicted_prob=m.get("predicted_prob"), trusted=m.get("trusted"),
                familiarity=m.get("familiarity"), familiar=m.get("familiar"), class_probs=_class_probs(m.get("class_probs")),
            ))
        return out

    def text(self, query: str, k: int = 10, classes: Optional[Sequence[str]] = None) -> list[Candidate]:
        return self.by_vector(self.encode_text(query), k, classes)

    def image(self, path: str | Path, k: int = 10, classes: Optional[Sequence[str]] = None) -> list[Candidate]:
        """More like this image: its stored vector when indexed, else encoded now."""
        path = Path(path)
        stored = self.gallery.get([file_sha256(path)], include_embeddings=True) if path.is_file() else []
        if stored:
            vec = np.asarray(stored[0].embedding, dtype=np.float32)
        else:
            vec, _ = self.ens.encode_images(load_for_model(path, self.ens.spec.image_size, self.ens.mean, self.ens.std)[None])
            vec = vec[0]
        return self.by_vector(vec, k, classes)

    def like(self, image_id: str, k: int = 10, classes: Optional[Sequence[str]] = None) -> list[Candidate]:
        stored = self.gallery.get([image_id], include_embeddings=True)
        if not stored:
            raise InputError(f"image {image_id} is not in store '{self.gallery.name}'")
        return self.by_vector(np.asarray(stored[0].embedding, dtype=np.float32), k, classes)
