"""A store's image-to-image vectors: a second Chroma collection beside the gallery's, same ids.

Why a collection of its own: "more like this" ranks by another vector than text search (retrieval/similarity.py),
and one HNSW query over stored vectors is what keeps it fast at a million images. The collection records
which similarity made its vectors (`kger_similarity`, an id from the bundle) and whether every gallery record
has one (`kger_similarity_complete`, set by the indexer after it checked): a store indexed before this
collection existed, or only partly backfilled, is answered from the ensemble vector instead, never half.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from store.errors import StoreError

PREFIX = "kgersim-"  # not "kger-": a server's store listing never mistakes it for a store
ID_KEY, COMPLETE_KEY = "kger_similarity", "kger_similarity_complete"


class SimilarIndex:
    """The image-to-image collection of one gallery (opened lazily, created by the first upsert)."""

    def __init__(self, gallery: Any, hnsw: dict):
        self._g, self._hnsw = gallery, dict(hnsw)
        self._col: Any = None
        self.name = PREFIX + gallery.name

    def _collection(self, create: bool = False):
        if self._col is None:
            from chromadb.errors import NotFoundError

            client = self._g._client
            with self._g._chroma_errors():
                try:
                    self._col = client.get_collection(self.name, embedding_function=None)
                except NotFoundError:
                    if not create:
                        return None
                    self._col = client.get_or_create_collection(
                        self.name, configuration={"hnsw": dict(self._hnsw)}, metadata={"kger_store": self._g.name},
                        embedding_function=None)
        return self._col

    def state(self) -> dict:
        """{'id': similarity id or None, 'complete': bool} (empty id: no collection yet)."""
        col = self._collection()
        meta = dict((col.metadata or {}) if col is not None else {})
        return {"id": meta.get(ID_KEY), "complete": bool(meta.get(COMPLETE_KEY))}

    def _set(self, **values) -> None:
        col = self._collection(create=True)
        meta = {k: v for k, v in (col.metadata or {}).items() if not k.startswith("hnsw:")}
        meta.update(values)
        with self._g._chroma_errors():
            col.modify(metadata=meta)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, classes: Sequence[str | None], sim_id: str) -> None:
        """Store vectors made by similarity `sim_id`; vectors of another similarity are refused (reindex)."""
        self._g._require_writable()
        current = self.state()["id"]
        if current is None:
            self._set(**{ID_KEY: sim_id, COMPLETE_KEY: False})
        elif current != sim_id:
            raise StoreError(
                f"Store '{self._g.name}' holds image-to-image vectors of another similarity ({current}, not "
                f"{sim_id}): index into a new store (`--store NEW`)")
        col = self._collection()
        metas = [{"cls": c} if c else None for c in classes]
        step = self._g._batch_size()
        vectors = np.asarray(vectors, dtype=np.float32)
        for s in range(0, len(ids), step):
            with self._g._chroma_errors():
                col.upsert(ids=list(ids[s:s + step]), embeddings=vectors[s:s + step], metadatas=metas[s:s + step])

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        col = self._collection()
        if col is None:
            return set()
        found: set[str] = set()
        step = self._g._batch_size()
        for s in range(0, len(ids), step):
            with self._g._chroma_errors():
                found.update(col.get(ids=list(ids[s:s + step]), include=[])["ids"])
        return found

    def mark_complete(self) -> bool:
        """Record whether every gallery record has a vector here (the indexer calls it after a run)."""
        col = self._collection()
        if col is None:
            return False
        with self._g._chroma_errors():
            complete = int(col.count()) >= self._g.count()
        self._set(**{COMPLETE_KEY: complete})
        return complete

    def get(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        col = self._collection()
        if col is None or not ids:
            return {}
        with self._g._chroma_errors():
            res = col.get(ids=list(ids), include=["embeddings"])
        return {i: np.asarray(e, dtype=np.float32) for i, e in zip(res["ids"], res["embeddings"])}

    def query(self, vector: np.ndarray, k: int, classes: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """(id, cosine) of the k nearest, best first (ties by id); `classes` keeps records of those classes."""
        col = self._collection()
        if col is None or k <= 0:
            return []
        where = None
        if classes:
            cls = sorted({str(c) for c in classes})
            where = {"cls": cls[0]} if len(cls) == 1 else {"cls": {"$in": cls}}
        with self._g._chroma_errors():
            res = col.query(query_embeddings=[np.asarray(vector, dtype=np.float32).reshape(-1)], n_results=int(k),
                            where=where, include=["distances"])
        hits = [(i, float(np.clip(1.0 - float(d), -1.0, 1.0))) for i, d in zip(res["ids"][0], res["distances"][0])]
        return sorted(hits, key=lambda h: (-h[1], h[0]))
