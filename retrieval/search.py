"""Search a gallery with the ensemble that indexed it: text -> images and image -> images."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from retrieval.bundle import Bundle
from retrieval.candidate import Candidate
from retrieval.encoder import Encoder, TorchEncoder, fold_scores, load_encoder
from retrieval.errors import InputError
from retrieval.manifest import BundleError, file_sha256
from retrieval.preprocess import load_array
from retrieval.similarity import Similarity, usable
from retrieval.video import display_name


def bound_bundle(gallery) -> dict:
    """The bundle a store was indexed with; an empty store is a user error naming the command to run."""
    bound = gallery.bundle
    if bound is None:
        raise BundleError(f"store '{gallery.name}' is empty; run `kger index IMAGES --bundle DIR --store {gallery.name}`")
    return bound


# Shown like kger's other notices about a store's state (agent/cli/common.py shows "kger.store" warnings).
notes = logging.getLogger("kger.store.similar")


def reference_id(ref: str) -> str:
    """The id an image reference stands for: a file's content hash (as the indexer stores it), else the id."""
    return file_sha256(ref) if Path(ref).is_file() else ref


def _class_probs(stored) -> Optional[dict[str, float]]:
    """Chroma metadata holds scalars only, so the indexer stores the class probabilities as JSON."""
    try:
        return {str(k): float(v) for k, v in json.loads(stored).items()} if stored else None
    except (ValueError, TypeError, AttributeError):
        return None


class Searcher:
    """Holds one query-time encoder (retrieval/encoder.py: the ONNX export or the torch ensemble) and one
    gallery; checks once, here, that they belong together."""

    def __init__(self, encoder: Encoder | Bundle, gallery):
        if isinstance(encoder, Bundle):  # a loaded bundle itself (training, benchmarks, tests)
            encoder = TorchEncoder(encoder)
        bound_bundle(gallery)
        gallery.check_bundle(encoder.fingerprint)
        self.encoder, self.gallery = encoder, gallery
        self._similarity: Similarity | None | bool = False  # False: not looked at yet; None: not usable
        self._torch = None  # the torch ensemble, loaded only to encode an unindexed image for `similar`

    @property
    def bundle(self) -> Encoder:
        """The bundle's identity as the encoder carries it: fingerprint, path, folds, dim."""
        return self.encoder

    @classmethod
    def for_gallery(cls, gallery) -> "Searcher":
        return cls(load_encoder(bound_bundle(gallery)["path"]), gallery)

    def encode_text(self, query: str) -> np.ndarray:
        if not query.strip():
            raise InputError("the description is empty")
        return self.encoder.encode_texts([query])[0]

    def by_vector(self, query_vec: np.ndarray, k: int, classes: Optional[Sequence[str]] = None) -> list[Candidate]:
        return self._candidates(self.gallery.query(query_vec, k=k, classes=classes, include_embeddings=True), query_vec)

    def _candidates(self, hits, query_vec: np.ndarray) -> list[Candidate]:
        """Candidates from gallery hits (with their ensemble vectors), per-fold scores against `query_vec`."""
        if not hits:
            return []
        per_fold = fold_scores(query_vec, np.stack([h.embedding for h in hits]), self.encoder.folds)
        out = []
        for rank, (h, fs) in enumerate(zip(hits, per_fold), start=1):
            m = h.metadata
            out.append(Candidate(
                rank=rank, id=h.id, path=m.get("path", ""), score=float(h.score),
                fold_scores=[round(float(x), 6) for x in fs], label=m.get("label"),
                predicted=m.get("predicted"), predicted_prob=m.get("predicted_prob"), display=display_name(m),
                trusted=m.get("trusted"), familiarity=m.get("familiarity"), familiar=m.get("familiar"),
                class_probs=_class_probs(m.get("class_probs")),
            ))
        return out

    def text(self, query: str, k: int = 10, classes: Optional[Sequence[str]] = None) -> list[Candidate]:
        return self.by_vector(self.encode_text(query), k, classes)

    def image(self, path: str | Path, k: int = 10, classes: Optional[Sequence[str]] = None) -> list[Candidate]:
        """More like this image: its stored vectors when indexed, else encoded now; ranked by the image-to-image
        similarity where the store holds it (`similarity`), else by the ensemble vector."""
        sim = self.similarity()
        if sim is not None:
            return self._similar_by(sim, str(path), k, classes)
        path = Path(path)
        stored = self.gallery.get([file_sha256(path)], include_embeddings=True) if path.is_file() else []
        if stored:
            vec = np.asarray(stored[0].embedding, dtype=np.float32)
        else:
            enc = self.encoder
            vec, _ = enc.encode_images(load_array(path, enc.image_size, enc.mean, enc.std)[None])
            vec = vec[0]
        return self.by_vector(vec, k, classes)

    def like(self, image_id: str, k: int = 10, classes: Optional[Sequence[str]] = None) -> list[Candidate]:
        sim = self.similarity()
        if sim is not None:
            return self._similar_by(sim, image_id, k, classes, files=False)
        stored = self.gallery.get([image_id], include_embeddings=True)
        if not stored:
            raise InputError(f"image {image_id} is not in store '{self.gallery.name}'")
        return self.by_vector(np.asarray(stored[0].embedding, dtype=np.float32), k, classes)

    def similarity(self) -> Similarity | None:
        """The bundle's image-to-image similarity when this store holds its vectors for every record, else None
        (a store indexed before they existed: one notice, and `similar` ranks by the ensemble vector)."""
        if self._similarity is False:
            manifest = getattr(self.encoder, "manifest", None) or {}
            sim = usable(Similarity.from_manifest(manifest), self.encoder.classes)
            state = self.gallery.similar().state()
            self._similarity = sim if state["id"] == sim.id and state["complete"] else None
            if self._similarity is None:
                notes.warning("store '%s' has no image-to-image vectors for every image (indexed before they "
                              "existed): 'similar' ranks by the ensemble vector; rerun `kger index IMAGES --store %s` "
                              "to add them", self.gallery.name, self.gallery.name)
        return self._similarity

    def _query_vectors(self, ref: str, sim: Similarity, files: bool) -> tuple[np.ndarray, np.ndarray]:
        """(ensemble vector, image-to-image vector) of `ref`: stored when indexed, else encoded now (torch:
        the ONNX export holds the query towers only). `files=False`: `ref` is an id, no file is looked at."""
        own = reference_id(ref) if files else ref
        stored, stored_sim = self.gallery.get([own], include_embeddings=True), self.gallery.similar().get([own])
        if stored and own in stored_sim:
            return np.asarray(stored[0].embedding, dtype=np.float32), stored_sim[own]
        if not (files and Path(ref).is_file()):
            raise InputError(f"image {ref} is not in store '{self.gallery.name}'")
        from retrieval import similarity

        if self._torch is None:
            from retrieval.bundle import load_bundle

            self._torch = getattr(self.encoder, "ens", None) or load_bundle(self.encoder.path).ensemble
        ens = self._torch
        vec, sims = similarity.encode_images(ens, sim, load_array(ref, ens.spec.image_size, ens.mean, ens.std)[None])
        return vec[0], sims[0]

    def _similar_by(self, sim: Similarity, ref: str, k: int, classes, files: bool = True) -> list[Candidate]:
        query_vec, query_sim = self._query_vectors(ref, sim, files)
        found = self.gallery.similar().query(query_sim, k, classes)
        records = {h.id: h for h in self.gallery.get([i for i, _ in found], include_embeddings=True)}
        hits = [dataclasses.replace(records[i], score=score) for i, score in found if i in records]
        return self._candidates(hits, query_vec)

    def similar(self, ref: str, k: int = 10, classes: Optional[Sequence[str]] = None, *,
                files: bool = True) -> list[Candidate]:
        """Images like `ref` (an image file here, else an image id in the store), never `ref` itself:
        "more like #2" must not answer #2. Ranked 1.. after the reference is left out; ranked as `image` and `like`
        rank (the image-to-image similarity), so `kger search --image`, serve and MCP agree. `files=False`: `ref`
        is an image id only and the file system is never looked at (a server's callers must not name its files)."""
        is_file = files and Path(ref).is_file()
        found = self.image(ref, k + 1, classes) if is_file else self.like(ref, k + 1, classes)
        own = file_sha256(ref) if is_file else ref
        return [c.model_copy(update={"rank": i}) for i, c in enumerate((c for c in found if c.id != own), start=1)
                if i <= k]
