"""A bundle's manifest and files without torch: what the ONNX query path, the CLI and `store/` read.

Holds the manifest format and its check, `BundleError`, the fold file names, the fingerprint and the one file
hash kger uses (bundle files, ONNX exports and image ids alike). Nothing here imports a model library, so
`kger search` over an exported bundle reads a manifest without loading torch, and the modules that build or
export models (bundle.py, export.py) import this one, never the other way round.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrieval.errors import KgerError

FORMAT = "kger-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(KgerError):
    """A bundle that cannot be used as asked; the message says which file and what is wrong."""


def file_sha256(path) -> str:
    """Hex sha256 of the file's bytes: a content id that survives renames and copies."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fold_file(f: int) -> str:
    return f"fold_{f:02d}.safetensors"


class Manifest(BaseModel):
    """What the loader relies on in manifest.json, checked before anything is built: types (strict: JSON's
    "2" is not 2), and that the fold count, the listed fold files and the vector width agree. Fields the
    loader does not read (metrics, calibration, ...) pass through unchecked."""

    model_config = ConfigDict(extra="allow", strict=True)

    format: str
    format_version: int
    spec: dict[str, Any]
    folds: int = Field(ge=1)
    seed: int = 0
    classes: Optional[list[str]] = None
    shared_hash: str
    files: dict[str, str]
    fingerprint: str
    embed_dim: Optional[int] = Field(default=None, ge=1)
    dim: Optional[int] = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _agree(self) -> "Manifest":
        names = sorted(self.files)
        if names != [fold_file(f) for f in range(len(names))]:
            raise ValueError(f"field 'files' must list fold_00.safetensors, fold_01.safetensors, ... (got {names})")
        if self.folds != len(self.files):
            raise ValueError(f"field 'folds' is {self.folds} but field 'files' lists {len(self.files)} fold files")
        if self.dim is not None and self.embed_dim is not None and self.dim != self.embed_dim * self.folds:
            raise ValueError(f"field 'dim' is {self.dim} but embed_dim x folds is {self.embed_dim * self.folds}")
        return self


def fingerprint(manifest: dict) -> str:
    """Identity of a bundle: the architecture, the shared trunk, and every fold's weights."""
    basis = {k: manifest[k] for k in ("spec", "folds", "shared_hash", "files", "classes")}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def write_manifest(path: str | Path, manifest: dict) -> None:
    """Write manifest.json atomically (tmp file + rename): a reader never sees half a manifest."""
    path = Path(path)
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path / MANIFEST)


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    mf = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"no bundle directory at {path}")
    if not mf.is_file():
        raise BundleError(f"{path} is not a kger bundle (no {MANIFEST}); create one with `kger bundle init --out {path}`")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{mf} is not valid JSON ({e.msg} at line {e.lineno})") from e
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{mf} is not a kger bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{mf} has format version {manifest.get('format_version')}, this kger reads version {FORMAT_VERSION}"
        )
    try:
        Manifest.model_validate(manifest)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        what = "is missing" if err["type"] == "missing" else f"is invalid: {err['msg']}"
        why = f"field {where!r} {what}" if where else err["msg"].removeprefix("Value error, ")
        raise BundleError(f"{mf}: {why}") from None
    return manifest


def set_manifest_entry(path: str | Path, key: str, value: Any) -> dict:
    """Add one entry (e.g. the ONNX export) to a bundle's manifest, atomically; the fingerprint is unchanged."""
    manifest = read_manifest(path)
    manifest[key] = value
    write_manifest(path, manifest)
    return manifest
