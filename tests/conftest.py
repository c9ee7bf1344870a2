"""Shared fixtures: every test gets its own KGER_HOME; real ENTRep data is found beside the project."""
from __future__ import annotations

import json
import os
import re
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
from hypothesis import settings
from retrieval.errors import InputError

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")  # CI=true: set by .ci/run

# CI runs the property tests on a fixed set of examples (a failure there is reproducible); elsewhere they explore.
settings.register_profile("ci", derandomize=True)
if IN_CI:
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
# The real ENTRep data, found one way by every test: KGER_ENTREP_DIR, else ../shared/data/entrep beside the project.
ENTREP = Path(os.environ.get("KGER_ENTREP_DIR") or ROOT.parent / "shared" / "data" / "entrep")
ENTREP_TRAIN = ENTREP / "train"
ANNOTATIONS = ENTREP / "annotations" / "data"
T2I_JSON = ANNOTATIONS / "train" / "train" / "t2i.json"
# Everything under ENTREP that some test reads; CI must have all of it (see pytest_configure).
ENTREP_NEEDED = (ENTREP_TRAIN / "imgs", ENTREP_TRAIN / "cls.json", T2I_JSON, T2I_JSON.with_name("cls.json"),
                 ANNOTATIONS / "Track3_Public" / "t2i.csv", ANNOTATIONS / "train.csv")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

# The network guard: this process and every Python process a test starts refuse non-loopback connections.
NETGUARD = Path(__file__).resolve().parent / "netguard"
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(NETGUARD), os.environ.get("PYTHONPATH")) if p)
sys.path.insert(0, str(NETGUARD))
import sitecustomize as netguard  # noqa: E402  (tests/netguard/sitecustomize.py)

netguard.install()
sys.path.remove(str(NETGUARD))


def _no_data_reason(path: Path) -> str:
    return f"real ENTRep data not found: {path} (set KGER_ENTREP_DIR, or put shared/data/entrep beside the project)"


def pytest_configure(config) -> None:
    """Under CI a missing data folder stops the run before it starts, with one line ("ERROR: CI=true: ...") and
    exit status 4: silently skipping the ~120 tests on real images would pass a fifth of the suite untested.
    Elsewhere those tests skip, each saying why (need_entrep)."""
    missing = [p for p in ENTREP_NEEDED if not p.exists()]
    if IN_CI and missing:
        raise pytest.UsageError(f"CI=true: {_no_data_reason(missing[0])}")


def need_entrep(path: Path) -> Path:
    """`path` (a file or folder under ENTREP) if it is there; if not, the test skips saying where it looked,
    or fails under CI (where pytest_configure has normally stopped the run already)."""
    if not path.exists():
        (pytest.fail if IN_CI else pytest.skip)(_no_data_reason(path))
    return path


@pytest.fixture(autouse=True)
def no_network(tmp_path, monkeypatch):
    """Fail the test if it, or any process it started, tried to reach a non-loopback address."""
    log = tmp_path / "netguard.log"
    monkeypatch.setenv("KGER_NETGUARD_LOG", str(log))
    yield log
    if log.exists() and log.read_text().strip():
        pytest.fail(f"a non-loopback connection was attempted:\n{log.read_text()}")


@pytest.fixture(autouse=True)
def kger_home(tmp_path, monkeypatch):
    """Point KGER_HOME at a fresh folder and make sure no Gemini key leaks into a test."""
    home = tmp_path / "kger-home"
    monkeypatch.setenv("KGER_HOME", str(home))
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)  # kger reads either (agent/llm.py KEY_VARS)
    monkeypatch.delenv("KGER_STRICT", raising=False)
    monkeypatch.delenv("KGER_CHROMA_URL", raising=False)
    return home


CLASSES = ("ear-left", "ear-right", "nose-left", "nose-right", "vc-open", "vc-closed", "throat")


class _Bundle:
    fingerprint = "wordstub00000000"
    folds = 2
    path = None


class WordSearcher:
    """A fake of retrieval.search.Searcher, in memory and without a model: it scores an image by the words its
    label shares with the query, with two 'folds' that disagree a little. Same methods, same `Candidate`s."""

    def __init__(self, items: list[dict]):
        self.items, self.bundle = items, _Bundle()

    def encode_text(self, query: str):
        if not query.strip():
            raise InputError("the description is empty")  # as retrieval.search.Searcher does
        return set(re.findall(r"[a-z]+", query.lower()))

    def by_vector(self, words, k: int, classes=None):
        from retrieval.candidate import Candidate

        scored = []
        for i, it in enumerate(self.items):
            if classes and it["label"] not in classes:
                continue
            s = 0.3 * len(words & set(it["label"].split("-"))) + 0.01 * (i % 5)
            scored.append((round(s, 6), i, it))
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [Candidate(rank=r, id=it["id"], path=it["path"], score=s, label=it["label"],
                          fold_scores=[round(s + 0.02 * (i % 3), 6), round(s - 0.02 * (i % 2), 6)])
                for r, (s, i, it) in enumerate(scored[:k], start=1)]

    def text(self, query: str, k: int = 10, classes=None):
        return self.by_vector(self.encode_text(query), k, classes)

    def like(self, image_id: str, k: int = 10, classes=None):
        label = next((it["label"] for it in self.items if it["id"] == image_id), None)
        if label is None:
            raise InputError(f"image {image_id} is not in the store")  # as retrieval.search.Searcher does
        return self.by_vector(set(label.split("-")), k, classes)

    def image(self, path, k: int = 10, classes=None):
        return self.like(next(it["id"] for it in self.items if it["path"] == str(path)), k, classes)

    from retrieval.search import Searcher as _Real

    similar = _Real.similar  # the real rule (the reference left out), over this fake's image and like


def make_images(folder: Path) -> list[dict]:
    """Two discs on black per class, each a different colour: enough for thumbnails and the Gemini judge."""
    from PIL import Image, ImageDraw

    from retrieval.manifest import file_sha256

    folder.mkdir(parents=True)
    items = []
    for c, label in enumerate(CLASSES):
        for j in range(2):
            path = folder / f"{label}-{j}.png"
            img = Image.new("RGB", (160, 120))
            ImageDraw.Draw(img).ellipse((30, 10, 130, 110), fill=(200 - 20 * c, 90 + 10 * j, 80 + 15 * c))
            img.save(path)
            items.append({"id": file_sha256(path), "path": str(path), "label": label})  # as the indexer does
    return items


@pytest.fixture
def word_searcher(tmp_path) -> WordSearcher:
    """The fake searcher over 14 small synthetic images (2 per class) in this test's tmp_path."""
    return WordSearcher(make_images(tmp_path / "imgs"))


@pytest.fixture(scope="session")
def entrep_train() -> Path:
    """The 70 real ENTRep images (imgs/ + cls.json); skips where the data is absent (fails under CI)."""
    need_entrep(ENTREP_TRAIN / "imgs")
    need_entrep(ENTREP_TRAIN / "cls.json")
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
def calibrated_bundle(entrep_train, entrep_labels, tmp_path_factory) -> SimpleNamespace:
    """A small bundle trained on 6 real images per class (2 folds, 4 epochs, 2 views), so it carries a
    calibration and a familiarity reference; `held` names the real images it never saw."""
    from training.heldout import split_per_class, write_entrep_layout
    from training.train import train_from_path

    root = tmp_path_factory.mktemp("calibrated")
    train, held = split_per_class(entrep_labels, entrep_train / "imgs", n_train=6, seed=0)
    data = write_entrep_layout(root / "train", train, entrep_train / "imgs")
    train_from_path(data, root / "bundle", folds=2, epochs=4, views=2, progress=False)
    return SimpleNamespace(path=root / "bundle", held=held)


@pytest.fixture(scope="session")
def real_store(store_factory):
    """A 2-fold untrained bundle and the 70 real images indexed into store 'default' of a shared home.

    Returns (home, bundle). Tests that use it point KGER_HOME at `home` themselves (monkeypatch)."""
    built = store_factory(seed=3)
    return built.home, built.bundle


@pytest.fixture(scope="session")
def chat_gallery(store_factory) -> Path:
    """KGER_HOME with store 'default': an untrained 2-fold bundle (with its ONNX export) over the real images,
    made in subprocesses, so this process holds no lock on it (chat, serve and export tests open it)."""
    return store_factory(seed=0, in_process=False).home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChromaServer:
    """A real `chroma run` on 127.0.0.1 over a data folder; `kill()` is SIGKILL, `start()` starts it again on the
    same folder and port (a server that dies mid-run and comes back)."""

    def __init__(self, data: Path, port: int | None = None):
        self.exe = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
        if self.exe is None:
            pytest.skip("the `chroma` executable (shipped with the chromadb package) is not on this machine")
        self.data, self.port, self.proc = data, port or _free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data / "server.log"

    def start(self) -> "ChromaServer":
        self.data.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "run", "--path", str(self.data / "db"), "--host", "127.0.0.1",
                                          "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"chroma run exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1).read()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"chroma run did not answer within 60 s: {self.log_path.read_text()[-2000:]}")
                time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real `chroma run` on 127.0.0.1 (a free port), for the --chroma-url / KGER_CHROMA_URL paths."""
    server = ChromaServer(tmp_path_factory.mktemp("chroma-server"))
    try:
        yield server.start().url
    finally:
        server.stop()
