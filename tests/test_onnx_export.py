"""The ONNX export of the query-time towers: same vectors as torch, same rankings, and no torch on that path."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.manifest import BundleError, read_manifest
from retrieval.captions import class_captions
from retrieval.lexicon import CLASSES

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "timm", "transformers")


def _texts(entrep_train: Path) -> list[str]:
    texts = [c for cls in CLASSES for c in class_captions(cls)]
    t2i = entrep_train.parent / "annotations" / "data" / "Track3_Public" / "t2i.csv"
    if t2i.is_file():
        texts += [line.strip() for line in t2i.read_text().splitlines() if line.strip()]
    texts.append("left ear, tympanic membrane " * 40)  # longer than the 77-token context: truncated alike
    return texts


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 2-fold bundle with a classifier head (so the image graph has both outputs), exported."""
    from retrieval.bundle import save_bundle
    from retrieval.ensemble import FoldEnsemble
    from retrieval.export import export_bundle
    from retrieval.nanoclip import NanoCLIPSpec

    out = tmp_path_factory.mktemp("exported") / "bundle"
    ens = FoldEnsemble(NanoCLIPSpec(), 2, seed=5, classes=list(CLASSES))
    ens.fingerprint, ens.path = save_bundle(ens, out, trained=False)["fingerprint"], str(out)
    export_bundle(out, ens)
    return out, ens


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_export_is_recorded_with_checksums(exported):
    path, _ = exported
    m = read_manifest(path)
    entry = m["export"]
    assert entry["fingerprint"] == m["fingerprint"] and entry["probs"] is True
    assert set(entry["files"]) == {"text.onnx", "image.onnx", "tokenizer.json"}
    assert {n: hashlib.sha256((path / n).read_bytes()).hexdigest() for n in entry["files"]} == entry["files"]


def test_text_vectors_equal_torch_on_lexicon_captions(exported, entrep_train):
    from retrieval.encoder import load_encoder

    path, ens = exported
    onnx = load_encoder(path)
    assert onnx.backend == "onnx"
    texts = _texts(entrep_train)
    assert np.array_equal(onnx.tokenize(texts), ens.tokenizer(texts).numpy())  # same ids, same truncation
    a, b = ens.encode_texts(texts), onnx.encode_texts(texts)
    assert a.shape == b.shape == (len(texts), 128)
    assert _cos(a, b).min() >= 0.9999


def test_image_vectors_and_rankings_equal_torch_on_real_images(exported, entrep_train):
    import torch

    from retrieval.encoder import load_encoder
    from retrieval.preprocess import load_array

    path, ens = exported
    onnx = load_encoder(path)
    imgs = sorted((entrep_train / "imgs").iterdir())
    x = np.stack([load_array(p, onnx.image_size, onnx.mean, onnx.std) for p in imgs])
    ta, tp = ens.encode_images(torch.from_numpy(x))
    oa, op = onnx.encode_images(x)
    assert _cos(ta, oa).min() >= 0.9999
    assert np.abs(tp - op).max() < 1e-4
    texts = _texts(entrep_train)
    t_top = np.argsort(-(ens.encode_texts(texts) @ ta.T), axis=1)[:, :10]
    o_top = np.argsort(-(onnx.encode_texts(texts) @ oa.T), axis=1)[:, :10]
    # two ENTRep files have identical bytes: one image, whose two copies' order is float noise (1e-7 apart)
    first: dict[str, int] = {}
    same = np.array([first.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), i) for i, p in enumerate(imgs)])
    assert (same[t_top] == same[o_top]).all()


def test_stale_or_forced_backends(exported, tmp_path, monkeypatch):
    import shutil

    from retrieval.encoder import load_encoder

    path, _ = exported
    stale = tmp_path / "stale"
    shutil.copytree(path, stale)
    m = json.loads((stale / "manifest.json").read_text())
    m["export"]["fingerprint"] = "0" * 16  # exported from other weights
    (stale / "manifest.json").write_text(json.dumps(m))
    monkeypatch.setenv("KGER_ENCODER", "onnx")
    with pytest.raises(BundleError, match="kger bundle export"):
        load_encoder(stale)
    monkeypatch.setenv("KGER_ENCODER", "torch")
    assert load_encoder(path).backend == "torch"
    monkeypatch.setenv("KGER_ENCODER", "auto")
    assert load_encoder(stale).backend == "torch"


def test_corrupt_graph_is_a_bundle_error(exported, tmp_path):
    import shutil

    from retrieval.encoder import load_encoder

    bad = tmp_path / "bad"
    shutil.copytree(exported[0], bad)
    with open(bad / "text.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    enc = load_encoder(bad)
    with pytest.raises(BundleError, match="corrupt"):
        enc.encode_texts(["left ear"])


def test_search_on_an_export_imports_no_torch(chat_gallery, tmp_path):
    """`kger search TEXT` on an exported bundle never imports torch, open_clip, timm or transformers."""
    home = chat_gallery
    assert "export" in read_manifest(home.parent / "bundle"), "kger bundle init writes the export"  # store_factory: bundle beside home
    probe = tmp_path / "modules.json"
    code = (
        "import json, sys\n"
        "from agent.cli import app\n"
        "try:\n    app(['search', 'left ear, tympanic membrane', '--json', '--home', sys.argv[1]])\n"
        "except SystemExit as e:\n    code = e.code\n"
        "json.dump({'code': code, 'heavy': [m for m in %r if m in sys.modules]}, open(sys.argv[2], 'w'))\n" % (HEAVY,)
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("KGER_ENCODER", None)
    r = subprocess.run([sys.executable, "-c", code, str(home), str(probe)], capture_output=True, text=True,
                       env=env, timeout=300)
    doc = json.loads(probe.read_text())
    assert doc["code"] in (0, None), r.stderr
    assert doc["heavy"] == [], f"imported on the ONNX query path: {doc['heavy']}"
    results = json.loads(r.stdout)["results"]
    assert len(results) == 10


def test_a_prefetched_export_is_the_encoder_loaded(exported, tmp_path):
    """`prefetch` opens the text graph in a thread; `load_encoder` then hands over that encoder, once."""
    from retrieval.encoder import load_encoder, prefetch
    from retrieval.onnx_encoder import TEXT_FILE

    path, _ = exported
    prefetch(path)
    warm = load_encoder(path)
    assert warm.backend == "onnx" and TEXT_FILE in warm._sessions, "the text graph was opened ahead"
    cold = load_encoder(path)
    assert cold is not warm and TEXT_FILE not in cold._sessions, "a prefetch serves one load only"
    np.testing.assert_array_equal(warm.encode_texts(["left ear"]), cold.encode_texts(["left ear"]))


def test_an_exit_during_a_prefetch_is_a_clean_exit(exported):
    """A command that fails before it takes its encoder (a full disk as the store opens) exits with its own
    code while the prefetch thread may still be inside onnxruntime: exit 1, never an abort (134, "terminate
    called without an active exception"). The exits are spread over the time a prefetch takes here."""
    timing = ("import sys, time; from retrieval.encoder import _opening, prefetch; t = time.perf_counter(); "
              "prefetch(sys.argv[1]); next(iter(_opening.values())).result(); print(time.perf_counter() - t)")
    took = float(subprocess.run([sys.executable, "-c", timing, str(exported[0])], cwd=ROOT, capture_output=True,
                                text=True, timeout=120, check=True).stdout)
    script = ("import sys, time; from retrieval.encoder import prefetch; prefetch(sys.argv[1]); "
              "time.sleep(float(sys.argv[2])); print('Error: no space left', file=sys.stderr); raise SystemExit(1)")
    for i in range(10):
        delay = str(took * i / 8)
        done = subprocess.run([sys.executable, "-c", script, str(exported[0]), delay], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stderr.strip()) == (1, "Error: no space left"), (delay, done.stderr)


def test_a_prefetch_that_fails_leaves_the_error_to_the_caller(exported, tmp_path, monkeypatch):
    import shutil

    from retrieval.encoder import load_encoder, prefetch

    bad = tmp_path / "bad"
    shutil.copytree(exported[0], bad)
    with open(bad / "text.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    prefetch(bad)
    with pytest.raises(BundleError, match="corrupt"):
        load_encoder(bad).encode_texts(["left ear"])
    m = json.loads((bad / "manifest.json").read_text())
    m["export"]["fingerprint"] = "0" * 16
    (bad / "manifest.json").write_text(json.dumps(m))
    monkeypatch.setenv("KGER_ENCODER", "onnx")
    prefetch(bad)
    with pytest.raises(BundleError, match="kger bundle export"):
        load_encoder(bad)


def test_a_wrong_bundle_hint_is_only_a_hint(chat_gallery, exported, monkeypatch):
    """The store's bundle.json lets `open_searcher` start loading before Chroma is imported; the binding in
    the collection decides, and a stale hint is put right."""
    from agent.opening import open_searcher
    from store.hint import HINT_FILE, bundle_hint

    monkeypatch.setenv("KGER_HOME", str(chat_gallery))
    bound = str(chat_gallery.parent / "bundle")
    assert bundle_hint("default") == bound, "kger index names the bundle beside the store"
    (chat_gallery / "stores" / "default" / HINT_FILE).write_text(json.dumps({"path": str(exported[0])}))
    searcher = open_searcher("default")
    try:
        assert searcher.encoder.path == bound != str(exported[0])
        assert len(searcher.text("left ear", k=3)) == 3
    finally:
        searcher.gallery.close()
    assert bundle_hint("default") == bound
