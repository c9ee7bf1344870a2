"""Shared fixtures: every test gets its own KGER_HOME; real ENTRep data is found beside the project."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import retrieval  # noqa: F401  (first: sets the OpenMP wait policy before any test imports torch)

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


@pytest.fixture(scope="session")
def chat_gallery(entrep_train, tmp_path_factory) -> Path:
    """KGER_HOME with store 'default': an untrained 2-fold bundle (with its ONNX export) over the real images,
    made by `kger bundle init` and `kger index` in subprocesses, so this process holds no lock on it."""
    home = tmp_path_factory.mktemp("chat-home")
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_API_KEY", "KGER_ENCODER")}
    env.update(KGER_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ANONYMIZED_TELEMETRY="False",
               PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    kger = [sys.executable, "-c", "from agent.cli import main; main()"]
    for argv in (["bundle", "init", "--out", str(home / "bundle"), "--folds", "2"],
                 ["index", str(entrep_train / "imgs"), "--bundle", str(home / "bundle")]):
        done = subprocess.run(kger + argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    return home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real `chroma run` on 127.0.0.1 (a free port), for the --chroma-url / KGER_CHROMA_URL paths."""
    exe = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if exe is None:
        pytest.skip("the `chroma` executable (shipped with the chromadb package) is not on this machine")
    port = _free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    log = open(data / "server.log", "wb")
    proc = subprocess.Popen([exe, "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"chroma run exited with {proc.returncode}: {(data / 'server.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"chroma run did not answer within 60 s: {(data / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
