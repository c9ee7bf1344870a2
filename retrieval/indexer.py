"""Index a folder of images and videos into a gallery: content-hash ids, batched, idempotent, resumable.

Resumable because ids are content hashes and each batch is upserted as soon as it is encoded: after a
`kill -9`, a rerun finds what is already stored and encodes only the rest. A video becomes one item per kept
frame (retrieval/video.py); `plan_items` and `encode_batch` are shared with the Ray path (retrieval/ray_index.py).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from retrieval.preprocess import IMAGE_SUFFIXES, ImageLoadError, file_sha256, load_for_model
from retrieval.video import VIDEO_SUFFIXES, extract_frames

log = logging.getLogger("kger.index")

# Files that often sit next to images (annotations, notes) and are not worth a warning.
QUIET_SUFFIXES = frozenset({".json", ".jsonl", ".csv", ".txt", ".md", ".html", ".yaml", ".yml", ".db"})


@dataclass
class IndexReport:
    indexed: int = 0
    present: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, same content as path)

    @property
    def total(self) -> int:
        return self.indexed + self.present + len(self.skipped) + len(self.duplicates)


def find_images(root: str | Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Recursive, sorted, hidden entries ignored. Returns images and videos, and (path, reason) for other files."""
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
        if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
            found.append(p)
        elif suffix not in QUIET_SUFFIXES:
            odd.append((str(p), f"not an image or video file type ({suffix or 'no suffix'})"))
    return found, odd


def metadata_for(path: Path, sha: str, labels: dict[str, str], classes, probs, base: Optional[dict] = None) -> dict:
    """`base` is a video frame's own metadata (its JPEG, video and time); frames take no file-name labels."""
    meta = dict(base) if base else {"path": str(path.resolve()), "name": path.name, "sha256": sha}
    label = None if base else labels.get(path.name)
    if label:
        meta.update(label=label, cls=label, cls_source="label")
    if probs is not None and classes:
        i = int(np.argmax(probs))
        meta.update(predicted=classes[i], predicted_prob=float(probs[i]))
        if not label:
            meta.update(cls=classes[i], cls_source="predicted")
    return meta


# One unit of work: (id, image file to load, frame metadata or None for a plain image).
Item = tuple[str, Path, Optional[dict]]


def hash_files(paths: list[Path], report: IndexReport, skip: Callable[[Path, str], None]) -> dict[str, Path]:
    """Content ids of the files; a second file with the same bytes is a duplicate, not indexed twice."""
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
    return by_id


def plan_items(
    by_id: dict[str, Path], skip: Callable[[Path, str], None], *, every: float, frames_dir: Optional[Path]
) -> list[Item]:
    """Images as they are; each video decoded into its kept frames (cached JPEGs under `frames_dir`)."""
    items: list[Item] = []
    for sha, p in by_id.items():
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            items.append((sha, p, None))
            continue
        if frames_dir is None:
            raise ValueError("indexing a video needs a frames folder (frames_dir)")
        try:
            stats = extract_frames(p, sha, frames_dir, every)
        except ImageLoadError as e:
            skip(p, str(e))
            continue
        log.info("%s: %d frames sampled, %d near-identical dropped", p, stats.sampled, stats.near_duplicates)
        items.extend((f.id, Path(f.path), f.metadata()) for f in stats.kept)
    return items


def encode_batch(ens, chunk: list[Item], labels: dict[str, str], load: Callable = None):
    """Encode one batch: (ids, vectors, metadatas, [(path, reason) skipped]). `load(path)` may be a pool's map."""
    size, mean, std = ens.spec.image_size, ens.mean, ens.std
    results = (load or (lambda ps: [_try_load(p, size, mean, std) for p in ps]))([p for _, p, _ in chunk])
    ok, tensors, skipped = [], [], []
    for item, got in zip(chunk, results):
        if isinstance(got, ImageLoadError):
            skipped.append((str(item[1]), str(got)))
        else:
            ok.append(item)
            tensors.append(got)
    if not tensors:
        return [], None, [], skipped
    vecs, probs = ens.encode_images(torch.stack(tensors))
    metas = [
        metadata_for(p, i, labels, ens.classes, None if probs is None else probs[j], base)
        for j, (i, p, base) in enumerate(ok)
    ]
    return [i for i, _, _ in ok], vecs, metas, skipped


def _try_load(path, size, mean, std):
    try:
        return load_for_model(path, size, mean, std)
    except ImageLoadError as e:
        return e


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
    every: float = 1.0,
    frames_dir: Optional[Path] = None,
) -> IndexReport:
    """Encode and upsert every image and kept video frame under `root` that the gallery does not hold yet."""
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
    items = plan_items(hash_files(paths, report, skip), skip, every=every, frames_dir=frames_dir)
    present = gallery.existing_ids([i for i, _, _ in items])
    report.present = len(present)
    todo = [it for it in items if it[0] not in present]
    done = 0
    if on_progress:
        on_progress(0, len(todo))
    size, mean, std = ens.spec.image_size, ens.mean, ens.std
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        def load(paths):
            return list(pool.map(lambda p: _try_load(p, size, mean, std), paths))

        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            ids, vecs, metas, skipped = encode_batch(ens, chunk, labels, load)
            for p, why in skipped:
                skip(p, why)
            if ids:
                gallery.upsert(ids, vecs, metas)
                report.indexed += len(ids)
                log.info("stored batch of %d (%d new so far)", len(ids), report.indexed)
            done += len(chunk)
            if on_progress:
                on_progress(done, len(todo))
    return report
