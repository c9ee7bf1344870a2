"""A large store for benchmarks: a K-fold untrained bundle (with its ONNX export) and N stored vectors.

The real images are not needed for latency: random unit vectors with random labels give Chroma and the
graph the same work. The gallery is closed on return, so other processes (kger search, kger serve) can open it.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

QUESTIONS = ["white discharge in the left ear canal", "right tympanic membrane perforation", "closed vocal cords",
             "left nasal cavity with polyp", "tonsils and uvula", "open glottis during inspiration",
             "R nasal septum deviation", "AS retracted eardrum"]


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every large-store benchmark takes."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--store-size", type=int, default=10000)
    return ap


def build(home: Path, folds: int = 10, n: int = 10000, export: bool = True):
    """KGER_HOME=home with store 'default'; returns the loaded bundle (torch)."""
    os.environ["KGER_HOME"] = str(home)
    from retrieval.bundle import load_bundle
    from retrieval.export import init_bundle
    from retrieval.lexicon import CLASSES
    from store.gallery import Gallery

    init_bundle(home / "bundle", folds=folds, export=export)
    bundle = load_bundle(home / "bundle")
    g = Gallery.open("default", create=True)
    g.bind_bundle(bundle.fingerprint, bundle.path, bundle.dim)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, bundle.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    labels = rng.choice(CLASSES, size=n)
    for s in range(0, n, 2000):
        ids = range(s, min(n, s + 2000))
        g.upsert([f"img{i:06d}" for i in ids], vecs[s:s + 2000],
                 [{"path": f"/gallery/{i}.png", "name": f"{i}.png", "label": str(labels[i]), "cls": str(labels[i])}
                  for i in ids])
    print(f"store: {g.count()} vectors x {bundle.dim}-d; bundle: {folds} folds")
    g.close()
    return bundle


def start_serve(home: Path, env: dict, timeout: float = 180):
    """`kger serve --port 0` over `home` in its own process; (process, base URL) once it has printed it."""
    import re
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    log = home / "serve.log"
    no_token = [] if env.get("KGER_SERVE_TOKEN") else ["--no-token"]  # a loopback bench server
    proc = subprocess.Popen([sys.executable, "-c", "from agent.cli import main; main()", "serve", "--port", "0",
                             *no_token], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=root)
    deadline = time.monotonic() + timeout
    while not (m := re.search(r"(http://127\.0\.0\.1:\d+)", log.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"kger serve did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc, m.group(1)
