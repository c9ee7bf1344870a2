"""A bundle: a directory with a manifest and the per-fold trainable weights only (the torch side: writing and
loading fold weights; the manifest itself is retrieval/manifest.py, creating and exporting is retrieval/export.py).

The frozen shared trunk is not stored: it is rebuilt from the packaged pretrained weights and checked against
the manifest's hash, so a bundle stays small and a changed pretrained package is caught, not silently used.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from retrieval.manifest import (
    FORMAT, FORMAT_VERSION, MANIFEST, BundleError, file_sha256, fingerprint, fold_file, read_manifest, write_manifest,
)
from retrieval.spec import NanoCLIPSpec

if TYPE_CHECKING:  # torch loads only when weights are read or written: the ONNX query path reads manifests only
    import torch

    from retrieval.ensemble import FoldEnsemble
    from retrieval.trust import Trust

@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the ensemble, the manifest it was checked against, and where it lives.

    Kept apart from the `nn.Module` so the model stays a model; a store binds to `fingerprint` and `path`."""

    ensemble: "FoldEnsemble"
    manifest: dict
    path: str  # resolved directory

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def folds(self) -> int:
        return self.ensemble.folds

    @property
    def dim(self) -> int:
        return self.ensemble.dim

    @property
    def trust(self):
        """The calibration and familiarity reference (retrieval/trust.py), None when the bundle has none."""
        from retrieval.trust import Trust

        return Trust.from_bundle(self.manifest, self.path, self.ensemble.mean, self.ensemble.std)


def fold_state(ens: FoldEnsemble, f: int) -> dict[str, torch.Tensor]:
    state = {f"image.{k}": v for k, v in ens.image_tops[f].state_dict().items()}
    state.update({f"text.{k}": v for k, v in ens.text_tops[f].state_dict().items()})
    state["logit_scale"] = ens.logit_scale.detach()[f : f + 1].clone()
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def write_fold(ens: FoldEnsemble, out: Path, f: int) -> str:
    """Write one fold atomically (tmp file + rename): a crash never leaves a half-written fold behind."""
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    tmp = out / (fold_file(f) + ".tmp")
    save_file(fold_state(ens, f), str(tmp))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # readable like the manifest, so a bundle can be shared
    os.replace(tmp, out / fold_file(f))
    return file_sha256(out / fold_file(f))


def load_fold(ens: FoldEnsemble, path: str | Path, f: int) -> None:
    """Put one fold's stored weights back into the ensemble (the inverse of `fold_state`)."""
    import torch
    from safetensors.torch import load_file

    fp = Path(path) / fold_file(f)
    try:
        state = load_file(str(fp))
    except Exception as e:  # safetensors raises several types for damaged files
        raise BundleError(f"bundle file {fp} cannot be read: {e}") from e
    image = {k[6:]: v for k, v in state.items() if k.startswith("image.")}
    text = {k[5:]: v for k, v in state.items() if k.startswith("text.")}
    try:
        ens.image_tops[f].load_state_dict(image)
        ens.text_tops[f].load_state_dict(text)
    except RuntimeError as e:
        raise BundleError(f"bundle file {fp} does not fit the manifest's architecture: {e}") from e
    with torch.no_grad():
        ens.logit_scale[f] = state["logit_scale"][0]


def save_bundle(
    ens: FoldEnsemble,
    out: str | Path,
    *,
    trained: bool,
    metrics: dict | None = None,
    data_hash: str | None = None,
    extra: dict | None = None,
    folds_written: Sequence[int] | None = None,
    folds: int | None = None,
) -> dict:
    """Write every fold (or reuse `folds_written`' files already on disk) and then the manifest, last.

    `folds`: only the first N folds, a usable partial bundle while training is still running."""
    out = Path(out)
    n = ens.folds if folds is None else folds
    if not 1 <= n <= ens.folds:
        raise ValueError(f"folds must be in 1..{ens.folds}")
    files = {}
    for f in range(n):
        path = out / fold_file(f)
        files[fold_file(f)] = file_sha256(path) if folds_written and f in folds_written and path.exists() else write_fold(ens, out, f)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "spec": ens.spec.to_dict(),
        "folds": n,
        "seed": ens.seed,
        "fold_seeds": [ens.fold_seed(f) for f in range(n)],
        "embed_dim": ens.spec.embed_dim,
        "dim": ens.spec.embed_dim * n,
        "shared_hash": ens.shared_hash(),
        "classes": ens.classes,
        "trained": trained,
        "data_hash": data_hash,
        "metrics": metrics or {},
        "files": files,
    }
    manifest.update(extra or {})
    manifest["fingerprint"] = fingerprint(manifest)
    write_manifest(out, manifest)
    return manifest


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Rebuild the ensemble, check the shared trunk's hash and every fold file's checksum, load the folds."""
    from retrieval.ensemble import FoldEnsemble

    path = Path(path)
    manifest = read_manifest(path)
    try:
        spec = NanoCLIPSpec.from_dict(manifest["spec"])
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path / MANIFEST}: field 'spec' is invalid: {e}") from None
    ens = FoldEnsemble(spec, manifest["folds"], seed=manifest.get("seed", 0), classes=manifest.get("classes"))
    if verify and ens.shared_hash() != manifest["shared_hash"]:
        raise BundleError(
            f"bundle {path} was made with other pretrained weights (shared trunk hash differs): "
            "the installed weight packages changed; retrain or re-init the bundle"
        )
    for f in range(ens.folds):
        name = fold_file(f)
        fp = path / name
        if not fp.is_file():
            raise BundleError(f"bundle {path} is missing {name}")
        if verify and file_sha256(fp) != manifest["files"].get(name):
            raise BundleError(f"bundle file {fp} is corrupt (checksum differs from the manifest)")
        load_fold(ens, path, f)
    from retrieval.similarity import Similarity

    ens.similarity = Similarity.from_manifest(manifest)
    return Bundle(ensemble=ens.eval(), manifest=manifest, path=str(path.resolve()))


def load_for_indexing(path: str | Path) -> tuple["FoldEnsemble", Optional["Trust"]]:
    """What an indexing worker needs: the checked ensemble and the bundle's trust (None when uncalibrated).
    Picklable by reference, unlike a loaded model, so Ray actors load it themselves."""
    bundle = load_bundle(path)
    return bundle.ensemble, bundle.trust
