"""cache.db: judge answers keyed by everything that decides them, kept across processes and threads."""
from __future__ import annotations

import threading

import pytest

from store.cache import JudgeCache
from store.paths import cache_db_path


def test_key_depends_on_every_part_and_is_stable():
    base = ("gemini-x", "prompt-h", "image-h", "left ear drum")
    key = JudgeCache.key(*base)
    assert key == JudgeCache.key(*base) and len(key) == 64
    for i in range(4):
        changed = list(base)
        changed[i] += "!"
        assert JudgeCache.key(*changed) != key
    # moving text between parts is a different key (no concatenation collisions)
    assert JudgeCache.key("ab", "c", "d", "e") != JudgeCache.key("a", "bc", "d", "e")


def test_round_trip_persists_and_counts(tmp_path):
    path = tmp_path / "cache.db"
    key = JudgeCache.key("m", "p", "i", "q")
    with JudgeCache(path) as cache:
        assert cache.get(key) is None
        cache.put(key, {"score": 0.75, "reason": "left ear, tympanic membrane visible"})
        cache.put(key, {"score": 0.8, "reason": "replaced"})
        assert len(cache) == 1
        assert (cache.hits, cache.misses) == (0, 1)
    with JudgeCache(path) as cache:  # a later process sees it
        assert cache.get(key) == {"score": 0.8, "reason": "replaced"}
        assert cache.get(JudgeCache.key("m", "p", "i", "other")) is None
        assert (cache.hits, cache.misses) == (1, 1)
        with pytest.raises(TypeError):
            cache.put(key, ["not", "a", "dict"])


def test_default_path_and_secret_scrubbing(kger_home, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "AIzaSyFAKE-cache-key-0123456789")
    with JudgeCache() as cache:
        cache.put("k", {"raw": "error for AIzaSyFAKE-cache-key-0123456789"})
        assert cache.get("k") == {"raw": "error for [redacted]"}
    assert cache_db_path() == kger_home / "cache.db" and cache_db_path().is_file()


def test_threads_share_one_cache(tmp_path):
    cache = JudgeCache(tmp_path / "cache.db")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(50):
                key = JudgeCache.key("m", "p", f"img{i}", f"q{t}")
                cache.put(key, {"t": t, "i": i})
                assert cache.get(key) == {"t": t, "i": i}
        except BaseException as e:  # surfaced below: a thread's assert would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(cache) == 200 and cache.hits == 200 and cache.misses == 0
    cache.close()
