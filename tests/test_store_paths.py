"""Every kger file lives under one home: KGER_HOME, else ~/.kger."""
from __future__ import annotations

from pathlib import Path

from store import paths


def test_home_from_env(kger_home):
    assert paths.kger_home() == kger_home
    assert paths.stores_dir() == kger_home / "stores"
    assert paths.traces_db_path() == kger_home / "traces.db"
    assert paths.cache_db_path() == kger_home / "cache.db"
    assert paths.checkpoints_db_path() == kger_home / "checkpoints.db"
    assert paths.bundles_dir() == kger_home / "bundles"
    assert not kger_home.exists()  # looking a path up creates nothing


def test_default_home_is_dot_kger(monkeypatch, tmp_path):
    monkeypatch.delenv("KGER_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.kger_home() == tmp_path / ".kger"
    monkeypatch.setenv("KGER_HOME", "~/elsewhere")
    assert paths.kger_home() == tmp_path / "elsewhere"


def test_explicit_home_wins(tmp_path):
    assert paths.traces_db_path(tmp_path) == tmp_path / "traces.db"
    assert paths.stores_dir(Path("~/h")) == Path("~/h").expanduser() / "stores"
