"""Index a folder of images into a gallery: content-hash ids, batched, idempotent, resumable.

Resumable because ids are content hashes and each batch is upserted as soon as it is encoded: after a
`kill -9`, a rerun finds what is already stored and encodes only the rest.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from retrieval.preprocess import IMAGE_SUFFIXES, ImageLoadError, file_sha256, load_for_model

log = logging.getLogger("kger.index")

# Files that often sit next to images (annotations, notes) and are not worth a warning.
QUIET_SUFFIXES = frozenset({".json", ".jsonl", ".csv", ".txt", ".md", ".html", ".yaml", ".yml", ".db"})


@dataclass
class IndexReport:
    indexed: int = 0
    present: int = 0
    trusted: int = 0  # newly indexed images whose predicted class is trusted (retrieval/trust.py)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, same content as path)

    @property
    def total(self) -> int:
        return self.indexed + self.present + len(self.skipped) + len(self.duplicates)


def find_images(root: str | Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Recursive, sorted, hidden entries ignored. Returns candidates and (path, reason) for unsupported files."""
    root = Path(root)
    if root.is_file():
        return [root], []
    if not root.is_dir():
        raise FileNotFoundError(f"no such image folder or file: {root}")
    found, odd = [], []
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts) or p.is_dir():
            continue
        suffix = p.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            found.append(p)
        elif suffix not in QUIET_SUFFIXES:
            odd.append((str(p), f"not an image file type ({suffix or 'no suffix'})"))
    return found, odd


def metadata_for(path: Path, sha: str, labels: dict[str, str], classes, probs, assessed=None) -> dict:
    """The record's metadata. `cls` (what filters match) is the label, else a *trusted* prediction only
    (retrieval/trust.py): an untrusted prediction is stored for display and the judge, never filtered on."""
    meta = {"path": str(path.resolve()), "name": path.name, "sha256": sha}
    label = labels.get(path.name)
    if label:
        meta.update(label=label, cls=label, cls_source="label")
    if assessed is not None:
        meta.update(predicted=assessed.predicted, predicted_prob=assessed.prob, trusted=assessed.trusted,
                    familiarity=assessed.familiarity, familiar=assessed.familiar, class_probs=json.dumps(assessed.probs))
        if not label and assessed.trusted:
            meta.update(cls=assessed.predicted, cls_source="trusted")
    elif probs is not None and classes:  # an uncalibrated bundle: shown, never trusted
        i = int(np.argmax(probs))
        meta.update(predicted=classes[i], predicted_prob=float(probs[i]), trusted=False)
    return meta


def index_images(
    ens,
    gallery,
    root: str | Path,
    *,
    labels: Optional[dict[str, str]] = None,
    batch_size: int = 16,
    workers: int = 2,
    on_progress: Optional[Callable[[int, int], None]] = None,
    on_skip: Optional[Callable[[str, str], None]] = None,
    trust=None,
) -> IndexReport:
    """Encode and upsert every image under `root` that the gallery does not hold yet."""
    labels = labels or {}
    report = IndexReport()

    def skip(path, why: str) -> None:
        report.skipped.append((str(path), why))
        log.debug("skipped %s: %s", path, why)
        if on_skip:
            on_skip(str(path), why)

    paths, odd = find_images(root)
    for p, why in odd:
        skip(p, why)

    by_id: dict[str, Path] = {}
    for p in paths:
        try:
            sha = file_sha256(p)
        except OSError as e:
            skip(p, f"unreadable: {e.strerror or e}")
            continue
        if sha in by_id:
            report.duplicates.append((str(p), str(by_id[sha])))
            continue
        by_id[sha] = p
    present = gallery.existing_ids(list(by_id))
    report.present = len(present)
    todo = [(i, p) for i, p in by_id.items() if i not in present]
    done = 0
    if on_progress:
        on_progress(0, len(todo))
    size, mean, std = ens.spec.image_size, ens.mean, ens.std
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            futures = [pool.submit(load_for_model, p, size, mean, std) for _, p in chunk]
            ok_ids, ok_paths, tensors = [], [], []
            for (i, p), fut in zip(chunk, futures):
                try:
                    tensors.append(fut.result())
                    ok_ids.append(i)
                    ok_paths.append(p)
                except ImageLoadError as e:
                    skip(p, str(e))
            if tensors:
                x = torch.stack(tensors)
                vecs, logits, feats = ens.encode_images_detailed(x)
                probs = None if logits is None else logits.softmax(-1).mean(0).numpy()
                assessed = trust.assess(logits, feats, x) if trust is not None and logits is not None else None
                metas = [
                    metadata_for(p, i, labels, ens.classes, None if probs is None else probs[j],
                                 None if assessed is None else assessed[j])
                    for j, (i, p) in enumerate(zip(ok_ids, ok_paths))
                ]
                report.trusted += sum(a.trusted for a in assessed or [])
                gallery.upsert(ok_ids, vecs, metas)
                report.indexed += len(ok_ids)
                log.info("stored batch of %d (%d new so far)", len(ok_ids), report.indexed)
            done += len(chunk)
            if on_progress:
                on_progress(done, len(todo))
    return report

