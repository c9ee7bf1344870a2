"""The query-time encoder from a bundle's ONNX export: onnxruntime + `tokenizers`, no torch.

Importing torch, open_clip, timm and transformers costs 10 s and 1 GB before the first query; this path costs
a fraction of a second. It must stay free of them (tests/test_onnx_export.py runs `kger search` in a
subprocess and fails on any of them in sys.modules). The graphs are the whole ensemble (retrieval/export.py),
so this module only tokenises, feeds arrays, and checks files against the manifest.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from retrieval.manifest import BundleError, file_sha256

TEXT_FILE, IMAGE_FILE, TOKENIZER_FILE = "text.onnx", "image.onnx", "tokenizer.json"
EXPORT_FORMAT = 1


def usable_export(manifest: dict, path: Path) -> dict | None:
    """The manifest's export entry when it belongs to these weights and its files exist; else None."""
    entry = manifest.get("export")
    if not isinstance(entry, dict) or entry.get("format") != EXPORT_FORMAT:
        return None
    if entry.get("fingerprint") != manifest.get("fingerprint"):
        return None  # the bundle was retrained or re-saved after the export: stale
    files = entry.get("files") or {}
    if not all(n in files and (path / n).is_file() for n in (TEXT_FILE, IMAGE_FILE, TOKENIZER_FILE)):
        return None
    return entry


class OnnxEncoder:
    """Text and images -> the ensemble's (B, 64*K) vectors, like `FoldEnsemble.encode_*`, from ONNX graphs.

    Sessions open lazily (a text search never loads the image graph) and each file's checksum is checked
    against the manifest before its first use, as the torch path checks the fold weights."""

    backend = "onnx"

    def __init__(self, path: str | Path, manifest: dict, entry: dict, verify: bool = True):
        self.path = str(Path(path).resolve())
        self.manifest, self.entry, self.verify = manifest, entry, verify
        self.fingerprint = manifest["fingerprint"]
        self.folds = int(manifest["folds"])
        self.dim = int(manifest.get("dim") or manifest["embed_dim"] * self.folds)
        self.classes = manifest.get("classes")
        self.image_size = int(entry["image_size"])
        self.mean, self.std = tuple(entry["mean"]), tuple(entry["std"])
        self.spec = SimpleNamespace(**manifest["spec"])
        self._sessions: dict[str, object] = {}
        self._tokenizer = None
        self._lock = threading.Lock()

    def _file(self, name: str) -> Path:
        fp = Path(self.path) / name
        if self.verify and file_sha256(fp) != self.entry["files"].get(name):
            raise BundleError(f"bundle file {fp} is corrupt (checksum differs from the manifest); "
                              f"run `kger bundle export {self.path}`")
        return fp

    def _session(self, name: str):
        with self._lock:
            if name not in self._sessions:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                # One query at a time: a single thread that sleeps when idle (no spinning on a shared machine).
                opts.intra_op_num_threads = int(os.environ.get("KGER_ORT_THREADS", "1"))
                opts.inter_op_num_threads = 1
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                opts.log_severity_level = 3
                self._sessions[name] = ort.InferenceSession(str(self._file(name)), opts,
                                                            providers=["CPUExecutionProvider"])
            return self._sessions[name]

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids padded to the longest text, truncated like the torch path (open_clip's HF tokenizer)."""
        with self._lock:
            if self._tokenizer is None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(self._file(TOKENIZER_FILE)))
                tok.enable_truncation(max_length=int(self.entry["context_length"]))
                pad = int(self.entry["pad_token_id"])
                tok.enable_padding(pad_id=pad, pad_token=tok.id_to_token(pad) or "[PAD]")
                self._tokenizer = tok
        enc = self._tokenizer.encode_batch(list(texts))
        return np.asarray([e.ids for e in enc], dtype=np.int64)

    def warm(self) -> None:
        """Open the text graph and tokenizer now (see retrieval.encoder.prefetch)."""
        self._session(TEXT_FILE)
        self.tokenize(["warm"])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._session(TEXT_FILE).run(None, {"ids": self.tokenize(texts)})[0].astype(np.float32)

    def encode_images(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, 3, S, S) float32 preprocessed images -> ((B, 64*K) vectors, (B, C) probabilities or None)."""
        out = self._session(IMAGE_FILE).run(None, {"images": np.ascontiguousarray(x, dtype=np.float32)})
        return out[0].astype(np.float32), (out[1] if len(out) > 1 else None)
