"""Shared fixtures: every test gets its own KGER_HOME; real ENTRep data is found beside the project."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTREP = Path(os.environ.get("KGER_ENTREP_DIR", ROOT.parent / "shared" / "data" / "entrep"))
ENTREP_TRAIN = ENTREP / "train"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(autouse=True)
def kger_home(tmp_path, monkeypatch):
    """Point KGER_HOME at a fresh folder and make sure no Gemini key leaks into a test."""
    home = tmp_path / "kger-home"
    monkeypatch.setenv("KGER_HOME", str(home))
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("KGER_CHROMA_URL", raising=False)
    return home


@pytest.fixture(scope="session")
def entrep_train() -> Path:
    """The 70 real ENTRep images (imgs/ + cls.json); skips where ../shared is absent."""
    if not (ENTREP_TRAIN / "imgs").is_dir() or not (ENTREP_TRAIN / "cls.json").is_file():
        pytest.skip(f"real ENTRep data not found at {ENTREP_TRAIN} (needs ../shared/data beside the project)")
    return ENTREP_TRAIN


@pytest.fixture(scope="session")
def entrep_labels(entrep_train) -> dict[str, str]:
    return json.loads((entrep_train / "cls.json").read_text())


@pytest.fixture(scope="session")
def real_store(entrep_train, tmp_path_factory):
    """A 2-fold untrained bundle and the 70 real images indexed into store 'default' of a shared home.

    Returns (home, bundle). Tests that use it point KGER_HOME at `home` themselves (monkeypatch)."""
    from typer.testing import CliRunner

    from agent.cli import app

    root = tmp_path_factory.mktemp("real-store")
    home, bundle = root / "home", root / "bundle"
    runner = CliRunner()
    r = runner.invoke(app, ["bundle", "init", "--out", str(bundle), "--folds", "2", "--seed", "3"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["index", str(entrep_train / "imgs"), "--bundle", str(bundle), "--home", str(home)])
    assert r.exit_code == 0, r.output
    return home, bundle
