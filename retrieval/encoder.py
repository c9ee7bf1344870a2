"""What query-time code holds: an encoder for text and images, from the bundle's ONNX export or from torch.

`load_encoder` picks the export when the bundle has a current one (no torch, open_clip, timm or transformers
imported: a search starts in about a second), else the torch ensemble. `KGER_ENCODER=torch|onnx|auto`
forces one (benchmarks compare them side by side; `onnx` fails loudly when there is no export).
Both give the same vectors (tests/test_onnx_export.py: cosine >= 0.9999, same top-10).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from retrieval.bundle import BundleError, read_manifest

BACKENDS = ("auto", "onnx", "torch")


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


def load_encoder(path: str | Path, backend: str | None = None) -> Encoder:
    """The query-time encoder of the bundle at `path`: its ONNX export when usable, else torch."""
    path = Path(path)
    backend = (backend or os.environ.get("KGER_ENCODER") or "auto").lower()
    if backend not in BACKENDS:
        raise ValueError(f"KGER_ENCODER must be one of {', '.join(BACKENDS)}, not {backend!r}")
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
