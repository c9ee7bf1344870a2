"""One image gallery = one Chroma collection of precomputed image vectors.

Chroma never embeds anything here: every call passes vectors, and every collection is opened with
``embedding_function=None`` because Chroma's default embedding function downloads a model.
A store is either embedded (``HOME/stores/NAME/chroma``, one Chroma path per store) or a collection
``kger-NAME`` on a Chroma server (``url``); both behave the same, including the bundle binding, which
lives in the collection metadata.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np

from store.errors import INDEX_HINT as _INDEX_HINT, BundleMismatchError, StoreError
from store.hint import keep_hint
from store.locks import StoreLock
from store.opening import lock_store as _lock_store, readable_copy, unopenable as _unopenable
from store.paths import stores_dir
from store.records import clean_metadata, where_clause as _where

# Chroma's defaults (ef 100, M 16) gave recall@10 = 0.81 against exact search on 3,000 random 640-d
# vectors; these gave 1.00 at about 1 ms a query. Galleries are small, so exactness wins.
HNSW_CONFIG = {"space": "cosine", "ef_construction": 200, "ef_search": 400, "max_neighbors": 32}
COLLECTION_PREFIX = "kger-"
LOCK_TIMEOUT_S = 10.0  # how long an open waits for another process's conflicting hold (see store/locks.py)
_PAGE = 1000
# Class-filtered queries look at the unfiltered top max(OVERFETCH, 4k) first (Gallery._class_query_by_overfetch);
# beyond k = 100 Chroma's own filter answers directly.
OVERFETCH, OVERFETCH_PER_K, OVERFETCH_MAX = 200, 4, 400
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")
_BUNDLE_KEYS = {"fingerprint": "kger_bundle_fingerprint", "path": "kger_bundle_path", "dim": "kger_bundle_dim"}


@dataclass
class Hit:
    id: str
    score: float
    """Cosine similarity to the query; NaN for records fetched by id or path (no query was made)."""
    metadata: dict
    embedding: np.ndarray | None = None


def check_store_name(name: str) -> str:
    """Store names become folder and collection names, so they must be safe as both."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise StoreError(
            f"Invalid store name {name!r}: use letters, digits, '.', '_' or '-' (e.g. `--store default`)"
        )
    return name


def _split_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StoreError(f"Invalid Chroma server URL {url!r}: use e.g. http://127.0.0.1:8000")
    ssl = parts.scheme == "https"
    return parts.hostname, parts.port or (443 if ssl else 8000), ssl


class Gallery:
    """A named store of image vectors (cosine space) plus the bundle that produced them."""

    def __init__(
        self, name: str, client: Any, collection: Any, *, root: Path | None, url: str | None,
        writable: bool, lock: StoreLock | None = None,
    ):
        self.name = name
        self.root = root  # HOME/stores/NAME for an embedded store, None on a server
        self.url = url
        self.writable = writable
        self._client = client
        self._col = collection
        self._lock = lock
        self._bound: dict | None = None  # see `bundle`
        self._scratch: Any = None  # a read-only store's temporary copy, removed on close
        self._similar: Any = None  # see `similar`

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        name: str = "default",
        *,
        home: Path | None = None,
        url: str | None = None,
        create: bool = False,
        write: bool | None = None,
        lock_timeout: float | None = None,
    ) -> "Gallery":
        """Open (or with ``create``, make) a store. An embedded store opened to write (``write``,
        default ``create``) is held exclusively by this process until ``close()``; to read, shared."""
        check_store_name(name)
        writable = bool(create if write is None else write)
        import chromadb  # lazy: 0.6 s to import, and StoreError users (the CLI) should not pay it
        from chromadb.config import Settings
        from chromadb.errors import NotFoundError

        settings = Settings(anonymized_telemetry=False)
        root: Path | None = None
        lock: StoreLock | None = None
        scratch = None  # the temporary copy of a read-only store
        if url:
            host, port, ssl = _split_url(url)
            try:
                client = chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=settings)
            except Exception as e:  # chroma raises a bare ValueError when nothing answers
                raise StoreError(
                    f"Cannot reach the Chroma server at {url} ({e}): start it with "
                    f"`chroma run --path DIR --host {host} --port {port}`, or leave KGER_CHROMA_URL unset"
                ) from None
            where = f"on the Chroma server at {url}"
        else:
            root = stores_dir(home) / name
            path = root / "chroma"
            if not create and not path.is_dir():
                raise StoreError(f"No store '{name}' at {root}: run `{_INDEX_HINT.format(name=name)}`")
            path.mkdir(parents=True, exist_ok=True)
            lock = _lock_store(name, root, writable, LOCK_TIMEOUT_S if lock_timeout is None else lock_timeout)
            try:  # a reader of a read-only store gets a private copy (Chroma writes on open)
                path, scratch = (path, None) if writable else readable_copy(path, f"Store '{name}'")
                client = chromadb.PersistentClient(path=str(path), settings=settings)
            except BaseException as e:
                lock.release()
                raise _unopenable(name, root, e) from e
            where = f"at {root}"
        collection_name = COLLECTION_PREFIX + name
        try:
            if create:
                collection = client.get_or_create_collection(
                    collection_name,
                    configuration={"hnsw": dict(HNSW_CONFIG)},
                    metadata={"kger_store": name},
                    embedding_function=None,
                )
            else:
                collection = client.get_collection(collection_name, embedding_function=None)
        except BaseException as e:
            client.close()
            if lock is not None:
                lock.release()
            if isinstance(e, NotFoundError):
                raise StoreError(f"No store '{name}' {where}: run `{_INDEX_HINT.format(name=name)}`") from None
            raise e if root is None else _unopenable(name, root, e) from e
        gallery = cls(name, client, collection, root=root, url=url, writable=writable, lock=lock)
        gallery._scratch = scratch
        space = ((collection.configuration or {}).get("hnsw") or {}).get("space")
        if space not in (None, "cosine"):
            gallery.close()
            raise StoreError(
                f"Collection '{collection_name}' {where} uses the {space} space, not cosine: it was not made "
                f"by kger; pick another store name (`--store NAME`)"
            )
        return gallery

    def similar(self):
        """The store's image-to-image vectors (store/similar.py): a second collection beside this one."""
        if self._similar is None:
            from store.similar import SimilarIndex

            self._similar = SimilarIndex(self, HNSW_CONFIG)
        return self._similar

    def close(self) -> None:
        """Release Chroma's handles (an embedded store's SQLite file and HNSW files)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Gallery({self.name!r}, {'url=' + repr(self.url) if self.url else 'root=' + repr(str(self.root))})"

    # -- errors --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _chroma_errors(self) -> Iterator[None]:
        """Turn Chroma's internal failures (a damaged HNSW index, a lost server) into one-line advice."""
        from chromadb.errors import InternalError

        try:
            yield
        except InternalError as e:
            from store.diskfull import NoSpaceError, is_no_space

            if is_no_space(e):  # not damage: free space and rerun (issue 22 row 5)
                raise NoSpaceError(self.url or self.root) from e
            index = _INDEX_HINT.format(name=self.name)
            if self.url:
                hint = f"check the server's log, or re-index: `{index}`"
            else:
                hint = f"its vector index may be damaged: remove {self.root} and run `{index}`"
            raise StoreError(f"Store '{self.name}' could not be read ({e}); {hint}") from e
        except Exception as e:
            import httpx  # a chromadb dependency; its transport errors mean the server went away

            if isinstance(e, httpx.TransportError):
                raise StoreError(f"Lost the Chroma server at {self.url} ({e}): is `chroma run` still up?") from e
            raise

    def _require_writable(self) -> None:
        if not self.writable:
            raise RuntimeError(f"store '{self.name}' was opened read-only: open it with create=True or write=True")

    # -- bundle binding ------------------------------------------------------------------------
    def _metadata(self) -> dict:
        """Fresh collection metadata: on a server another client may have bound the bundle."""
        with self._chroma_errors():
            self._col = self._client.get_collection(self._col.name, embedding_function=None)
        return dict(self._col.metadata or {})

    @property
    def bundle(self) -> dict | None:
        """The bound bundle (fingerprint, path, dim); kept once bound (never another bundle): no re-reads."""
        if self._bound is None:
            self._bound = self._bundle_from(self._metadata())
            self._keep_hint()
        return self._bound

    def _keep_hint(self) -> None:
        if self.root is not None and self._bound is not None:
            keep_hint(self.root, self._bound["path"], self._bound["fingerprint"])

    @staticmethod
    def _bundle_from(meta: dict) -> dict | None:
        if _BUNDLE_KEYS["fingerprint"] not in meta:
            return None
        return {
            "fingerprint": str(meta[_BUNDLE_KEYS["fingerprint"]]),
            "path": str(meta.get(_BUNDLE_KEYS["path"], "")),
            "dim": int(meta.get(_BUNDLE_KEYS["dim"], 0)),
        }

    def bind_bundle(self, fingerprint: str, path: str, dim: int) -> None:
        """Record the bundle on first index; afterwards only the same bundle may add vectors
        (its path may change: bundles get moved)."""
        self._require_writable()
        meta = self._metadata()
        current = self._bundle_from(meta)
        if current is not None:
            self._raise_if_other(current, fingerprint, str(path))
            if current["path"] == str(path):
                return
        elif self.count():
            stored = self._stored_dim()
            if stored is not None and stored != int(dim):
                raise StoreError(
                    f"Store '{self.name}' already holds {stored}-d vectors, but the bundle makes {dim}-d "
                    f"ones: index into a new store (`--store NEW`)"
                )
        meta = {k: v for k, v in meta.items() if not k.startswith("hnsw:")}
        meta.update({
            _BUNDLE_KEYS["fingerprint"]: str(fingerprint),
            _BUNDLE_KEYS["path"]: str(path),
            _BUNDLE_KEYS["dim"]: int(dim),
        })
        with self._chroma_errors():
            self._col.modify(metadata=meta)
        self._bound = self._bundle_from(meta)
        self._keep_hint()

    def check_bundle(self, fingerprint: str, path: str | None = None) -> None:
        """Refuse another bundle (once, where a bundle meets this store: the Searcher); unbound: nothing to check."""
        current = self.bundle
        if current is not None:
            self._raise_if_other(current, fingerprint, path)

    def _raise_if_other(self, current: dict, fingerprint: str, path: str | None) -> None:
        if current["fingerprint"] != str(fingerprint):
            other = f"{fingerprint} ({path})" if path else str(fingerprint)
            raise BundleMismatchError(
                f"Store '{self.name}' was indexed with bundle {current['fingerprint']} ({current['path']}), "
                f"not {other}: use that bundle, or index into a new store: "
                f"`kger index IMAGES --bundle {path or 'DIR'} --store NEW`"
            )

    def _stored_dim(self) -> int | None:
        with self._chroma_errors():
            got = self._col.get(limit=1, include=["embeddings"])
        emb = got.get("embeddings")
        return None if emb is None or len(emb) == 0 else int(len(emb[0]))

    # -- records -------------------------------------------------------------------------------
    def count(self) -> int:
        with self._chroma_errors():
            return int(self._col.count())

    def _batch_size(self) -> int:
        return max(1, min(int(self._client.get_max_batch_size()), 5000))

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of these ids are stored already (lets `kger index` skip work)."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        found: set[str] = set()
        step = self._batch_size()
        for start in range(0, len(wanted), step):
            with self._chroma_errors():
                found.update(self._col.get(ids=wanted[start : start + step], include=[])["ids"])
        return found

    def upsert(self, ids: Sequence[str], embeddings: np.ndarray, metadatas: Sequence[dict | None]) -> None:
        self._require_writable()
        ids = [str(i) for i in ids]
        vectors = np.asarray(embeddings, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids) or len(metadatas) != len(ids):
            raise ValueError(
                f"upsert needs matching ids ({len(ids)}), embeddings (n, dim) {vectors.shape} and metadatas "
                f"({len(metadatas)})"
            )
        if not ids:
            return
        if len(set(ids)) != len(ids):
            raise ValueError("upsert got the same id twice in one call")
        if not np.isfinite(vectors).all():
            raise ValueError("upsert got NaN or infinite vector values")
        if (np.linalg.norm(vectors, axis=1) == 0).any():
            raise ValueError("upsert got a zero vector: its cosine similarity is undefined")
        bound = self.bundle
        if bound is not None and bound["dim"] and vectors.shape[1] != bound["dim"]:
            raise StoreError(
                f"Vectors are {vectors.shape[1]}-d but store '{self.name}' holds {bound['dim']}-d vectors of bundle "
                f"{bound['fingerprint']} ({bound['path']}): index with that bundle, or into a new store (`--store NEW`)"
            )
        metas = [clean_metadata(m) for m in metadatas]
        step = self._batch_size()
        for start in range(0, len(ids), step):
            end = start + step
            with self._chroma_errors():
                self._col.upsert(ids=ids[start:end], embeddings=vectors[start:end], metadatas=metas[start:end])

    def query(
        self, vector: np.ndarray, k: int = 10, where: dict | None = None, include_embeddings: bool = False,
        classes: Sequence[str] | None = None,
    ) -> list[Hit]:
        """The k nearest stored vectors by cosine similarity, best first (ties by id); `where` keeps records
        whose metadata equals every given value, `classes` those of one of these classes (metadata 'cls')."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if k <= 0:
            return []
        # No count() first: Chroma answers n_results beyond the stored count (or an empty store) with what it
        # has, and counting costs 10 ms a query at 10,000 vectors and grows with the store (bench/scale.py).
        bound = self.bundle
        if bound is not None and bound["dim"] and query.shape[0] != bound["dim"]:
            raise StoreError(
                f"The query vector is {query.shape[0]}-d but store '{self.name}' holds {bound['dim']}-d vectors "
                f"of bundle {bound['fingerprint']} ({bound['path']}): query it with that bundle"
            )
        if classes and not where and k * OVERFETCH_PER_K <= OVERFETCH_MAX:
            hits = self._class_query_by_overfetch(query, int(k), {str(c) for c in classes}, include_embeddings)
            if hits is not None:
                return hits
        return self._query(query, int(k), _where(where, classes), include_embeddings)

    def _class_query_by_overfetch(self, query: np.ndarray, k: int, classes: set[str],
                                  include_embeddings: bool) -> list[Hit] | None:
        """The top k of some classes from one unfiltered look at the top n (n = max(OVERFETCH, 4k)), or None.
        Chroma's own filter first selects every matching id in SQLite: 83 ms at 100,000 vectors and about a
        second at 1,000,000 (bench/scale.py), with HNSW recall 0.94 there. Exact when it answers: if k of the
        true top n are of these classes, they are those classes' top k; with fewer, None (the filter decides),
        unless the look held the whole store."""
        n = max(OVERFETCH, OVERFETCH_PER_K * k)
        seen = self._query(query, n, None, include_embeddings=False)
        kept = [h for h in seen if h.metadata.get("cls") in classes][:k]
        if len(kept) < k and len(seen) >= n:
            return None
        if include_embeddings and kept:
            stored = self._fetch(ids=[h.id for h in kept], include_embeddings=True)
            kept = [Hit(h.id, h.score, h.metadata, stored[h.id].embedding) for h in kept if h.id in stored]
        return kept

    def _query(self, query: np.ndarray, n: int, where: dict | None, include_embeddings: bool) -> list[Hit]:
        include = ["metadatas", "distances"] + (["embeddings"] if include_embeddings else [])
        with self._chroma_errors():
            res = self._col.query(query_embeddings=[query], n_results=n, where=where, include=include)
        ids = res["ids"][0]
        metas = (res.get("metadatas") or [[None] * len(ids)])[0]
        dists = res["distances"][0]
        embs = res["embeddings"][0] if include_embeddings else [None] * len(ids)
        hits = [
            Hit(
                id=i,
                score=float(np.clip(1.0 - float(d), -1.0, 1.0)),
                metadata=dict(m or {}),
                embedding=None if e is None else np.asarray(e, dtype=np.float32),
            )
            for i, m, d, e in zip(ids, metas, dists, embs)
        ]
        hits.sort(key=lambda h: (-h.score, h.id))
        return hits

    def get(self, ids: Sequence[str], include_embeddings: bool = True) -> list[Hit]:
        """Records in the order asked; unknown ids are skipped (and repeats given once)."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        found = self._fetch(ids=wanted, include_embeddings=include_embeddings)
        return [found[i] for i in wanted if i in found]

    def find_by_path(self, path: str) -> Hit | None:
        """The record whose metadata 'path' equals this one (lowest id if indexed twice)."""
        found = self._fetch(where={"path": str(path)}, include_embeddings=True)
        return found[min(found)] if found else None

    def all_metadata(self) -> list[tuple[str, dict]]:
        """Every record's metadata, by id; paged so a large store never comes back in one response."""
        out: list[tuple[str, dict]] = []
        offset = 0
        while True:
            with self._chroma_errors():
                page = self._col.get(limit=_PAGE, offset=offset, include=["metadatas"])
            out.extend((i, dict(m or {})) for i, m in zip(page["ids"], page["metadatas"]))
            if len(page["ids"]) < _PAGE:
                break
            offset += _PAGE
        out.sort(key=lambda item: item[0])
        return out

    def _fetch(
        self, *, ids: list[str] | None = None, where: dict | None = None, include_embeddings: bool
    ) -> dict[str, Hit]:
        include = ["metadatas"] + (["embeddings"] if include_embeddings else [])
        step = self._batch_size()
        chunks = [ids[s : s + step] for s in range(0, len(ids), step)] if ids is not None else [None]
        found: dict[str, Hit] = {}
        for chunk in chunks:
            with self._chroma_errors():
                res = self._col.get(ids=chunk, where=_where(where), include=include)
            embs = res.get("embeddings") if include_embeddings else None
            for n, record_id in enumerate(res["ids"]):
                found[record_id] = Hit(
                    id=record_id,
                    score=float("nan"),
                    metadata=dict(res["metadatas"][n] or {}),
                    embedding=None if embs is None else np.asarray(embs[n], dtype=np.float32),
                )
        return found
