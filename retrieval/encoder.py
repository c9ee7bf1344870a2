"""What query-time code holds: an encoder for text and images, from the bundle's ONNX export or from torch.

`load_encoder` picks the export when the bundle has a current one (no torch, open_clip, timm or transformers
imported: a search starts in about a second), else the torch ensemble. `KGER_ENCODER=torch|onnx|auto`
forces one (benchmarks compare them side by side; `onnx` fails loudly when there is no export).
Both give the same vectors (tests/test_onnx_export.py: cosine >= 0.9999, same top-10).
"""
from __future__ import annotations

import atexit
import os
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from retrieval.manifest import BundleError, read_manifest

BACKENDS = ("auto", "onnx", "torch")
_opening: dict[Path, Future] = {}  # see `prefetch`


class Encoder(Protocol):
    backend: str
    fingerprint: str
    path: str
    folds: int
    dim: int
    classes: list[str] | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_images(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


def fold_scores(query: np.ndarray, stored: np.ndarray, folds: int) -> np.ndarray:
    """Every fold's own cosine from the concatenated vectors (slices of 64-d; see retrieval/ensemble.py)."""
    d = query.shape[-1] // folds
    q = np.asarray(query, dtype=np.float64).reshape(folds, d)
    s = np.asarray(stored, dtype=np.float64).reshape(-1, folds, d)
    return np.einsum("nkd,kd->nk", s, q) * folds


class TorchEncoder:
    """A loaded `Bundle`'s ensemble behind the same interface (numpy in, numpy out)."""

    backend = "torch"

    def __init__(self, bundle):
        self.ens = ens = bundle.ensemble
        self.fingerprint, self.path, self.folds, self.dim = bundle.fingerprint, bundle.path, ens.folds, ens.dim
        self.classes, self.spec, self.manifest = ens.classes, ens.spec, bundle.manifest
        self.image_size, self.mean, self.std = ens.spec.image_size, tuple(ens.mean), tuple(ens.std)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.ens.encode_texts(texts)

    def encode_images(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        return self.ens.encode_images(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))


def _backend(backend: str | None) -> str:
    backend = (backend or os.environ.get("KGER_ENCODER") or "auto").lower()
    if backend not in BACKENDS:
        raise ValueError(f"KGER_ENCODER must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return backend


def prefetch(path: str | Path) -> None:
    """Start opening the bundle's ONNX export and text graph in a thread; `load_encoder(path)` then takes it.

    Why: a one-shot `kger search` spends ~0.4 s importing Chroma and ~0.35 s opening the text graph (checksum,
    onnxruntime session), and onnxruntime does its part without the GIL, so on 2 cores the two overlap.
    Only the export is prefetched (torch is never imported from a thread); any failure is left for
    `load_encoder` to raise in the caller's thread."""
    key = Path(path).resolve()
    if key in _opening or _backend(None) == "torch":
        return
    done: Future = Future()

    def open_export() -> None:
        try:
            from retrieval.onnx_encoder import OnnxEncoder, usable_export

            manifest = read_manifest(Path(path))
            entry = usable_export(manifest, Path(path))
            encoder = OnnxEncoder(Path(path), manifest, entry) if entry is not None else None
            if encoder is not None:
                encoder.warm()
            done.set_result(encoder)
        except BaseException as e:  # noqa: BLE001 - re-raised by load_encoder's own attempt
            done.set_exception(e)

    _opening[key] = done
    threading.Thread(target=open_export, name="kger-prefetch", daemon=True).start()


def _settle(timeout: float = 30.0) -> None:
    """At exit, let an unfinished prefetch end first. A command that fails before it takes its encoder (a full
    disk when the store opens) would otherwise exit while the thread is inside onnxruntime: the interpreter
    halts daemon threads where they stand, and one halted in C++ aborts the process ("terminate called without
    an active exception", exit 134) after the command has already said its one-line error."""
    for done in list(_opening.values()):
        try:
            done.exception(timeout=timeout)
        except Exception:  # noqa: BLE001 - a timeout or a cancelled future: nothing more to wait for
            pass


atexit.register(_settle)  # once; it waits only for prefetches not yet taken by `load_encoder`


def _prefetched(path: Path) -> Encoder | None:
    done = _opening.pop(path.resolve(), None)
    if done is None or done.exception() is not None:
        return None
    return done.result()


def load_encoder(path: str | Path, backend: str | None = None) -> Encoder:
    """The query-time encoder of the bundle at `path`: its ONNX export when usable, else torch."""
    path = Path(path)
    backend = _backend(backend)
    if backend != "torch" and (encoder := _prefetched(path)) is not None:
        return encoder
    manifest = read_manifest(path)
    if backend != "torch":
        from retrieval.onnx_encoder import OnnxEncoder, usable_export

        entry = usable_export(manifest, path)
        if entry is not None:
            return OnnxEncoder(path, manifest, entry)
        if backend == "onnx":
            raise BundleError(f"bundle {path} has no current ONNX export; run `kger bundle export {path}`")
    from retrieval.bundle import load_bundle

    return TorchEncoder(load_bundle(path))
