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
from types import SimpleNamespace

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
def store_factory(entrep_train, tmp_path_factory):
    """The one way tests build a store over the 70 real images, as a user does (`kger bundle init`, then
    `kger index`): a 2-fold untrained bundle seeded `seed`, store 'default' with the cls.json labels and,
    with `blind`, store 'blind' without labels. Each (seed, blind, in_process) is built once per session.

    In process (CliRunner) the store stays held by this process, as in-process tests expect; a store that
    another process opens (the chat in a terminal) is built with `in_process=False`, in a subprocess.
    Returns SimpleNamespace(home, bundle, summary) where summary is `kger index --json` of 'default'."""
    from typer.testing import CliRunner

    from agent.cli import app

    built: dict[tuple[int, bool, bool], SimpleNamespace] = {}
    runner = CliRunner()

    def kger(in_process: bool, *args) -> str:
        argv = [str(a) for a in args]
        if in_process:
            r = runner.invoke(app, argv)
            assert r.exit_code == 0, r.output
            return r.stdout
        done = subprocess.run([sys.executable, "-c", "from agent.cli import main; main()", *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def build(seed: int, blind: bool = False, in_process: bool = True) -> SimpleNamespace:
        key = (seed, blind, in_process)
        if key not in built:
            root = tmp_path_factory.mktemp(f"store-seed{seed}")
            home, bundle = root / "home", root / "bundle"
            kger(in_process, "bundle", "init", "--out", bundle, "--folds", "2", "--seed", seed)
            summary = kger(in_process, "index", entrep_train / "imgs", "--bundle", bundle, "--home", home, "--json")
            if blind:
                kger(in_process, "index", entrep_train / "imgs", "--bundle", bundle, "--no-labels",
                     "--store", "blind", "--home", home)
            built[key] = SimpleNamespace(home=home, bundle=bundle, summary=json.loads(summary))
        return built[key]

    return build


@pytest.fixture(scope="session")
def real_store(store_factory):
    """A 2-fold untrained bundle and the 70 real images indexed into store 'default' of a shared home.

    Returns (home, bundle). Tests that use it point KGER_HOME at `home` themselves (monkeypatch)."""
    built = store_factory(seed=3)
    return built.home, built.bundle


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
