"""A persistent key -> JSON cache for judge answers, so re-running a question, a batch or an eval
never pays for (or waits on) the same Gemini call twice, and results stay reproducible."""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from store.db import LockedDB, ReadOnlyStateError, log, open_db, utcnow
from store.paths import cache_db_path
from store.redact import record


def _create(db) -> None:
    # A cache is disposable: a new layout gets a new table name rather than a migration.
    db.execute("create table if not exists judge_cache (key text primary key, value text not null, created text not null)")


class JudgeCache(LockedDB):
    """cache.db (``HOME/cache.db`` by default); safe to share between threads.

    ``hits`` and ``misses`` count this instance's lookups (for run timings and reports).
    """

    def __init__(self, path: Path | str | None = None):
        self.path = cache_db_path() if path is None else path
        self._lock = threading.Lock()
        try:  # a damaged file is kept aside and a fresh one started (store.db.open_db says so)
            self._db = open_db(self.path, "the judge cache", _create)
        except ReadOnlyStateError as e:  # a cache is optional: answers still come, uncached
            log.warning("%s; verdicts are not cached in this run", e)
            self._db = open_db(":memory:", "the judge cache", _create)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model: str, prompt_hash: str, image_hash: str, query: str) -> str:
        """sha256 over the parts as a JSON list, so no two different part lists can collide by concatenation."""
        parts = json.dumps([model, prompt_hash, image_hash, query], ensure_ascii=False)
        return hashlib.sha256(parts.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("select value from judge_cache where key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return json.loads(row["value"])

    def put(self, key: str, value: dict) -> None:
        if not isinstance(value, dict):
            raise TypeError(f"JudgeCache stores dicts, not {type(value).__name__}")
        text = json.dumps(record(value), ensure_ascii=False, allow_nan=False)
        with self._lock:
            self._db.execute(
                "insert or replace into judge_cache (key, value, created) values (?, ?, ?)", (key, text, utcnow())
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("select count(*) from judge_cache").fetchone()[0]
