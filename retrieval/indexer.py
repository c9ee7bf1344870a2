"""Index a folder of images and videos into a gallery: content-hash ids, batched, idempotent, resumable.

Resumable because ids are content hashes and each batch is upserted as soon as it is encoded: after a
`kill -9`, a rerun finds what is already stored and encodes only the rest. A video becomes one item per kept
frame (retrieval/video.py); `plan_items` and `encode_batch` are shared with the Ray path (retrieval/ray_index.py).
Each record also gets its image-to-image vector (retrieval/similarity.py) in the store's second collection
(store/similar.py); records stored before that collection existed get theirs when the same command reruns.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from retrieval.manifest import file_sha256
from retrieval.preprocess import IMAGE_SUFFIXES, ImageLoadError, load_for_model
from retrieval.similarity import UNTRAINED, Similarity
from retrieval.similarity import encode as similarity_vectors
from retrieval.video import VIDEO_SUFFIXES, extract_frames

log = logging.getLogger("kger.index")

# Files that often sit next to images (annotations, notes) and are not worth a warning.
QUIET_SUFFIXES = frozenset({".json", ".jsonl", ".csv", ".txt", ".md", ".html", ".yaml", ".yml", ".db"})


@dataclass
class IndexReport:
    indexed: int = 0
    present: int = 0
    trusted: int = 0  # newly indexed images whose predicted class is trusted (retrieval/trust.py)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    partial: list[tuple[str, str]] = field(default_factory=list)  # (video, where and why its frames stop)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, same content as path)

    @property
    def total(self) -> int:
        return self.indexed + self.present + len(self.skipped) + len(self.duplicates)


def not_regular(path: Path) -> Optional[str]:
    """Why `path` is not a regular file that can be read (None when it is). Only regular files are opened:
    opening a named pipe blocks forever, a device can be endless; a symbolic link loop cannot be followed."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return "a symbolic link loop" if e.errno == errno.ELOOP else f"unreadable: {e.strerror or e}"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not a regular file: not opened"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file: not opened"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file: not opened"
    return "not a regular file: not opened"


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
        why = not_regular(p)
        if why:
            odd.append((str(p), why))
            continue
        suffix = p.suffix.lower()
        if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
            found.append(p)
        elif suffix not in QUIET_SUFFIXES:
            odd.append((str(p), f"not an image or video file type ({suffix or 'no suffix'})"))
    return found, odd


def metadata_for(path: Path, sha: str, labels: dict[str, str], classes, probs, base: Optional[dict] = None,
                 assessed=None) -> dict:
    """The record's metadata. `base` is a video frame's own (its JPEG, video and time); frames take no
    file-name labels. `cls` (what filters match) is the label, else a *trusted* prediction only
    (retrieval/trust.py): an untrusted prediction is stored for display and the judge, never filtered on."""
    meta = dict(base) if base else {"path": str(path.resolve()), "name": path.name, "sha256": sha}
    label = None if base else labels.get(path.name)
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
    by_id: dict[str, Path], skip: Callable[[Path, str], None], *, every: float, frames_dir: Optional[Path],
    partial: Optional[Callable[[Path, str], None]] = None,
) -> list[Item]:
    """Images as they are; each video decoded into its kept frames (cached JPEGs under `frames_dir`). A video
    damaged part-way keeps the frames before the damage; `partial(path, note)` hears where and why it stopped."""
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
        if stats.stopped:
            note = f"kept {len(stats.kept)} frames; {stats.stopped}"
            if partial:
                partial(p, note)
            else:
                log.warning("%s: %s", p, note)
        items.extend((f.id, Path(f.path), f.metadata()) for f in stats.kept)
    return items


def similarity_of(ens) -> Similarity:
    """The bundle's image-to-image similarity (set on the ensemble by `load_bundle`), else the untrained one."""
    return getattr(ens, "similarity", None) or Similarity(dict(UNTRAINED))


def encode_batch(ens, chunk: list[Item], labels: dict[str, str], load: Callable = None, trust=None):
    """Encode one batch: (ids, vectors, metadatas, [(path, reason) skipped], image-to-image vectors).
    `load(path)` may be a pool's map; `trust` (retrieval/trust.py, from a calibrated bundle) decides which
    predictions may act like labels."""
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
        return [], None, [], skipped, None
    x = torch.stack(tensors)
    with torch.no_grad():
        vecs, logits, feats = ens.encode_images_detailed(x)
        probs = None if logits is None else logits.softmax(-1).mean(0).numpy()
        assessed = trust.assess(logits, feats, x) if trust is not None and logits is not None else None
        sims = similarity_vectors(ens, similarity_of(ens), x, feats, vecs, logits)
    metas = [
        metadata_for(p, i, labels, ens.classes, None if probs is None else probs[j], base,
                     None if assessed is None else assessed[j])
        for j, (i, p, base) in enumerate(ok)
    ]
    return [i for i, _, _ in ok], vecs, metas, skipped, sims


def store_batch(gallery, ens, ids: list[str], vecs, metas: list[dict], sims) -> None:
    """Upsert a batch's records and their image-to-image vectors (one id in both collections)."""
    gallery.upsert(ids, vecs, metas)
    gallery.similar().upsert(ids, sims, [m.get("cls") for m in metas], similarity_of(ens).id)


def to_encode(gallery, items: list[Item]) -> tuple[list[Item], set[str]]:
    """(items to encode, ids already in the gallery): new items, and stored ones still without an
    image-to-image vector (a store indexed before it existed gets them on the next run)."""
    ids = [i for i, _, _ in items]
    present = gallery.existing_ids(ids)
    with_sim = gallery.similar().existing_ids(sorted(present)) if present else set()
    return [it for it in items if it[0] not in with_sim], present


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
    trust=None,
    on_partial: Optional[Callable[[str, str], None]] = None,
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

    def partial(path, note: str) -> None:
        report.partial.append((str(path), note))
        if on_partial:
            on_partial(str(path), note)

    items = plan_items(hash_files(paths, report, skip), skip, every=every, frames_dir=frames_dir, partial=partial)
    todo, present = to_encode(gallery, items)
    report.present = len(present)
    done = 0
    if on_progress:
        on_progress(0, len(todo))
    size, mean, std = ens.spec.image_size, ens.mean, ens.std
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        def load(paths):
            return list(pool.map(lambda p: _try_load(p, size, mean, std), paths))

        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            ids, vecs, metas, skipped, sims = encode_batch(ens, chunk, labels, load, trust)
            for p, why in skipped:
                skip(p, why)
            if ids:
                store_batch(gallery, ens, ids, vecs, metas, sims)
                new = [m for i, m in zip(ids, metas) if i not in present]
                report.indexed += len(new)
                report.trusted += sum(m.get("trusted") is True for m in new)
                log.info("stored batch of %d (%d new so far)", len(ids), report.indexed)
            done += len(chunk)
            if on_progress:
                on_progress(done, len(todo))
    gallery.similar().mark_complete()
    return report
