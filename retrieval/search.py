"""Search a gallery with the ensemble that indexed it: text -> images and image -> images."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from retrieval.bundle import BundleError, load_bundle
from retrieval.ensemble import fold_scores
from retrieval.preprocess import file_sha256, load_for_model
from retrieval.video import display_name


@dataclass
class Result:
    rank: int
    id: str
    path: str
    score: float
    fold_scores: list[float] = field(default_factory=list)
    label: Optional[str] = None
    predicted: Optional[str] = None
    predicted_prob: Optional[float] = None
    display: Optional[str] = None  # a video frame's `exam.mp4 @ 00:01:23` (video.display_name)

    @property
    def name(self) -> str:
        return self.display or Path(self.path).name

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "display"} | {"name": self.name}


def bound_bundle(gallery) -> dict:
    """The bundle a store was indexed with; an empty store is a user error naming the command to run."""
    if gallery.bundle is None:
        raise BundleError(f"store '{gallery.name}' is empty; run `kger index IMAGES --bundle DIR --store {gallery.name}`")
    return gallery.bundle


class Searcher:
    """Holds one loaded bundle and one gallery; checks they belong together."""

    def __init__(self, ens, gallery):
        bound_bundle(gallery)
        gallery.check_bundle(ens.fingerprint)
        self.ens, self.gallery = ens, gallery

    @classmethod
    def for_gallery(cls, gallery) -> "Searcher":
        return cls(load_bundle(bound_bundle(gallery)["path"]), gallery)

    def encode_text(self, query: str) -> np.ndarray:
        if not query.strip():
            raise ValueError("the description is empty")
        return self.ens.encode_texts([query])[0]

    def by_vector(self, query_vec: np.ndarray, k: int, classes: Optional[Sequence[str]] = None) -> list[Result]:
        where = {"cls": {"$in": list(classes)}} if classes else None
        hits = self.gallery.query(query_vec, k=k, where=where, include_embeddings=True)
        if not hits:
            return []
        per_fold = fold_scores(query_vec, np.stack([h.embedding for h in hits]), self.ens.folds)
        out = []
        for rank, (h, fs) in enumerate(zip(hits, per_fold), start=1):
            m = h.metadata
            out.append(Result(
                rank=rank, id=h.id, path=m.get("path", ""), score=float(h.score),
                fold_scores=[round(float(x), 6) for x in fs], label=m.get("label"),
                predicted=m.get("predicted"), predicted_prob=m.get("predicted_prob"), display=display_name(m),
            ))
        return out

    def text(self, query: str, k: int = 10, classes: Optional[Sequence[str]] = None) -> list[Result]:
        return self.by_vector(self.encode_text(query), k, classes)

    def image(self, path: str | Path, k: int = 10, classes: Optional[Sequence[str]] = None) -> list[Result]:
        """More like this image: its stored vector when indexed, else encoded now."""
        path = Path(path)
        stored = self.gallery.get([file_sha256(path)], include_embeddings=True) if path.is_file() else []
        if stored:
            vec = np.asarray(stored[0].embedding, dtype=np.float32)
        else:
            vec, _ = self.ens.encode_images(load_for_model(path, self.ens.spec.image_size, self.ens.mean, self.ens.std)[None])
            vec = vec[0]
        return self.by_vector(vec, k, classes)

    def like(self, image_id: str, k: int = 10, classes: Optional[Sequence[str]] = None) -> list[Result]:
        stored = self.gallery.get([image_id], include_embeddings=True)
        if not stored:
            raise KeyError(f"image {image_id} is not in store '{self.gallery.name}'")
        return self.by_vector(np.asarray(stored[0].embedding, dtype=np.float32), k, classes)
