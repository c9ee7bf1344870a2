"""Make a bundle's files: `init_bundle` (an untrained ensemble) and the ONNX export of its query-time towers,
so that search and ask need onnxruntime, not torch.

Two graphs, each the whole ensemble in one piece (shared trunk, every fold's top, normalisation, the
1/sqrt(K) concatenation), so the query side does no model arithmetic of its own:
- text:  token ids (B, L) int64 -> (B, 64*K) float32;
- image: the preprocessed image (B, 3, S, S) float32 -> (B, 64*K) float32 [+ (B, C) fold-averaged class
  probabilities when the bundle has a classifier head].
The tokenizer goes along as `tokenizer.json` (the same fast tokenizer the torch path uses), and the manifest
records every file's sha256 and the fingerprint of the weights the graphs were made from: a retrained bundle
with a stale export is detected, not silently used (retrieval/onnx_encoder.py).
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.bundle import load_bundle, save_bundle
from retrieval.manifest import MANIFEST, BundleError, file_sha256, read_manifest, set_manifest_entry
from retrieval.onnx_encoder import EXPORT_FORMAT, IMAGE_FILE, TEXT_FILE, TOKENIZER_FILE
from retrieval.spec import NanoCLIPSpec

EXPORT_KEY = "export"
OPSET = 17


class TextGraph(nn.Module):
    def __init__(self, ens):
        super().__init__()
        self.ens = ens

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden, mask = self.ens.text_trunk(ids)
        parts = [F.normalize(top(hidden, mask), dim=-1) for top in self.ens.text_tops]
        return torch.cat(parts, dim=-1) / math.sqrt(self.ens.folds)


class StaticLRSplit(nn.Module):
    """`LRSplitPool` for a known feature-map width, as two slices: the exporter cannot size an adaptive pool
    whose input has a dynamic batch, and the columns are the same ([0, ceil(W/2)) and [floor(W/2), W))."""

    def __init__(self, width: int):
        super().__init__()
        self.cut_left, self.cut_right = math.ceil(width / 2), width // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., : self.cut_left].mean(dim=(2, 3)), x[..., self.cut_right:].mean(dim=(2, 3))], dim=1)


@contextlib.contextmanager
def static_pools(ens, size: int):
    """Swap every fold's side-aware pool for its static twin while exporting; restored afterwards."""
    from retrieval.nanoclip import LRSplitPool

    saved = [top.pool for top in ens.image_tops]
    with torch.no_grad():
        top = ens.image_tops[0]
        width = top.head(top.blocks(ens.image_trunk(torch.zeros(1, 3, size, size)))).shape[-1]
    try:
        for t in ens.image_tops:
            if isinstance(t.pool, LRSplitPool):
                t.pool = StaticLRSplit(width)
        yield
    finally:
        for t, p in zip(ens.image_tops, saved):
            t.pool = p


class ImageGraph(nn.Module):
    def __init__(self, ens):
        super().__init__()
        self.ens = ens

    def forward(self, x: torch.Tensor):
        feats = self.ens.image_trunk(x)
        parts, probs = [], []
        for top in self.ens.image_tops:
            emb, pooled = top(feats)
            parts.append(F.normalize(emb, dim=-1))
            if top.classifier is not None:
                probs.append(top.classifier(pooled).softmax(-1))
        vec = torch.cat(parts, dim=-1) / math.sqrt(self.ens.folds)
        return (vec, torch.stack(probs).mean(0)) if probs else vec


def _export(module: nn.Module, example: torch.Tensor, path: Path, inputs: list[str], outputs: list[str],
            axes: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module.eval(), (example,), str(tmp), dynamo=False, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)
    os.replace(tmp, path)


def _save_tokenizer(text_path: str, path: Path) -> None:
    """The fast tokenizer the torch path uses (open_clip's HFTokenizer wraps the same AutoTokenizer)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(text_path)
    if not getattr(tok, "is_fast", False):
        raise BundleError(f"text backbone {text_path} has no fast tokenizer (tokenizer.json); it cannot be exported")
    tok.backend_tokenizer.save(str(path))


def export_ensemble(ens, out: str | Path, manifest: dict) -> dict:
    """Write the two graphs and the tokenizer into the bundle directory; returns the manifest entry."""
    out = Path(out)
    size = ens.spec.image_size
    ids = ens.tokenizer(["left ear, tympanic membrane", "nose"])
    _export(TextGraph(ens), ids, out / TEXT_FILE, ["ids"], ["vectors"],
            {"ids": {0: "batch", 1: "tokens"}, "vectors": {0: "batch"}})
    has_probs = any(top.classifier is not None for top in ens.image_tops)
    outputs = ["vectors", "probs"] if has_probs else ["vectors"]
    with static_pools(ens, size):
        _export(ImageGraph(ens), torch.zeros(2, 3, size, size), out / IMAGE_FILE, ["images"], outputs,
                {"images": {0: "batch"}, **{o: {0: "batch"} for o in outputs}})
    _save_tokenizer(ens.text_path, out / TOKENIZER_FILE)
    for name in (TEXT_FILE, IMAGE_FILE, TOKENIZER_FILE):
        os.chmod(out / name, 0o644)
    return {
        "format": EXPORT_FORMAT,
        "runtime": "onnx",
        "opset": OPSET,
        "fingerprint": manifest["fingerprint"],  # the weights these graphs were made from
        "files": {n: file_sha256(out / n) for n in (TEXT_FILE, IMAGE_FILE, TOKENIZER_FILE)},
        "context_length": min(77, ens.context_length or 77),
        "pad_token_id": int(ens.text_trunk.pad_token_id),
        "image_size": size,
        "mean": list(ens.mean),
        "std": list(ens.std),
        "probs": has_probs,
    }


def export_bundle(path: str | Path, ens=None) -> dict:
    """Export the bundle at `path` (loading it unless the caller holds it) and record it in its manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    ens = ens if ens is not None else load_bundle(path).ensemble
    entry = export_ensemble(ens, path, manifest)
    set_manifest_entry(path, EXPORT_KEY, entry)
    return entry


def init_bundle(
    out: str | Path,
    *,
    folds: int = 10,
    seed: int = 0,
    spec: NanoCLIPSpec | None = None,
    export: bool = False,
    **spec_fields,
) -> dict:
    """An untrained ensemble: pretrained towers, seeded projections. Refuses to overwrite another bundle.

    `spec_fields` (image_backbone=, pool=, ...) replace those of `spec` (default: NanoCLIPSpec()).
    `export`: also write the ONNX query-time towers (`export_bundle`)."""
    from retrieval.ensemble import FoldEnsemble

    out = Path(out)
    if (out / MANIFEST).exists():
        raise BundleError(f"{out} already holds a bundle; choose another --out or delete it first")
    ens = FoldEnsemble(replace(spec or NanoCLIPSpec(), **spec_fields), folds, seed=seed)
    manifest = save_bundle(ens, out, trained=False)
    if export:
        manifest["export"] = export_bundle(out, ens)
    return manifest
