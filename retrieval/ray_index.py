"""`kger index --ray`: the same indexing, spread over a Ray cluster (or a local Ray runtime), into a Chroma server.

Ray Data streams *source files* through ``map_batches`` with a pool of actors, each holding one ensemble and
one connection to the Chroma server. An actor turns its batch into items exactly as the single-process path
does (``indexer.plan_items``: an image is one item, a video is decoded into its kept frames), drops the ids the
server already holds, encodes the rest with ``indexer.encode_batch`` and upserts them at once. So:

- ids and vectors are the single-process ones (same item plan, same encoder, same content-hash ids);
- a killed worker's batch is retried by Ray (upserts are idempotent), and after a killed driver a rerun asks
  the server which ids it has and encodes only the rest: nothing is indexed twice;
- video decoding is spread over the workers too (one video per batch), not left to the driver.

Only the driver walks the folder and hashes files (to find duplicates); every node must see the images,
the videos and the frames folder at the same paths (a shared filesystem), and have kger installed.
Without an address, a local runtime is started on this machine: ``workers`` CPUs, no dashboard, no usage
statistics, bound to 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Callable, Optional

from retrieval.indexer import IndexReport, encode_batch, find_images, hash_files, plan_items, store_batch, to_encode
from retrieval.video import VIDEO_SUFFIXES

log = logging.getLogger("kger.index.ray")
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # a batch of paths and statuses needs little; leave RAM to the models


# Ray Data's actor pool always passes its context and transformer to an actor by object reference, with
# restarts on, so Ray's core prints this error-level line for every pool, on runs that succeed
# (ray-project/ray#57733, open upstream; the pool's restarts are what retry a killed worker's batch here)
KNOWN_NOISE = (b"has constructor arguments in the object store and max_restarts > 0",)


@contextlib.contextmanager
def without_known_noise(markers: tuple[bytes, ...] = KNOWN_NOISE):
    """Standard error (file descriptor 2, where Ray's C++ core writes) with the lines holding one of `markers`
    dropped and everything else passed through as it comes. Not a lower log level: that would hide Ray's real
    errors too."""
    sys.stderr.flush()
    saved, (read_end, write_end) = os.dup(2), os.pipe()

    def pump() -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            pending += chunk
            lines = pending.split(b"\n")
            pending = lines.pop()  # a partial line (a progress bar's \r redraw) goes out at once unless noise
            kept = [line + b"\n" for line in lines if not any(m in line for m in markers)]
            if pending and not any(m in pending for m in markers) and b"\r" in pending:
                kept.append(pending)
                pending = b""
            if kept:
                os.write(saved, b"".join(kept))
        if pending and not any(m in pending for m in markers):
            os.write(saved, pending)

    reader = threading.Thread(target=pump, name="kger-stderr-filter", daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the last write end closes: the pump reads to the end and stops
        reader.join(timeout=5)
        os.close(read_end)
        os.close(saved)


class RayUnavailable(ValueError):
    """Ray (the optional `scale` extra) is not installed, or the cluster cannot be reached."""


def start_ray(address: Optional[str], workers: int):
    """Connect to a cluster at `address`, or start a private local runtime of `workers` CPUs.

    Returns (ray, started): `started` when this call connected, so the caller disconnects (and a local
    runtime stops) when it is done; a caller already connected keeps its own session."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before ray is imported: no usage report, ever
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # the C++ core's warnings are not the user's business
    logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray: pip install 'kger[scale]'") from None
    if ray.is_initialized():
        return ray, False
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(
                num_cpus=max(1, workers), include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                _node_ip_address="127.0.0.1", log_to_driver=False, logging_level=logging.WARNING,
            )
    except ConnectionError as e:
        raise RayUnavailable(f"Cannot reach the Ray cluster at {address} ({e})") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines between kger's own
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # kger draws its own
    ctx.print_on_execution_start = False
    return ray, True


class _Encoder:
    """One Ray actor: one ensemble, one store connection; a batch of source files in, one status row per item out."""

    def __init__(self, load_model: Callable, open_store: Callable, labels: dict, every: float, frames_dir: str,
                 batch_size: int):
        self.ens, self.trust = load_model()
        self.gallery = open_store()
        self.labels, self.every, self.frames_dir, self.batch_size = labels, every, Path(frames_dir), batch_size

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"path": [], "status": [], "reason": [], "trusted": []}

        def row(path, status: str, reason: str = "", trusted: bool = False) -> None:
            out["path"].append(str(path))
            out["status"].append(status)
            out["reason"].append(reason)
            out["trusted"].append(trusted)

        by_id = {str(i): Path(p) for i, p in zip(batch["id"], batch["path"])}
        items = plan_items(by_id, lambda p, why: row(p, "skipped", why), every=self.every, frames_dir=self.frames_dir)
        todo, present = to_encode(self.gallery, items)
        encoding = {i for i, _, _ in todo}
        for item in items:
            if item[0] in present and item[0] not in encoding:
                row(item[1], "present")
        for start in range(0, len(todo), self.batch_size):
            ids, vecs, metas, skipped, sims = encode_batch(self.ens, todo[start : start + self.batch_size],
                                                             self.labels, trust=self.trust)
            for p, why in skipped:
                row(p, "skipped", why)
            if ids:
                store_batch(self.gallery, self.ens, ids, vecs, metas, sims)
                for i, m in zip(ids, metas):
                    row(m["path"], "present" if i in present else "indexed", trusted=m.get("trusted") is True)
        return out


def index_with_ray(
    root: str | Path,
    *,
    load_model: Callable,
    open_store: Callable,
    labels: Optional[dict[str, str]] = None,
    batch_size: int = 16,
    workers: int = 2,
    address: Optional[str] = None,
    every: float = 1.0,
    frames_dir: Optional[Path] = None,
    on_progress: Optional[Callable[[int, int], None]] = None,
    on_skip: Optional[Callable[[str, str], None]] = None,
) -> IndexReport:
    """Index `root` like ``index_images``, on Ray. `load_model()` -> (ensemble, trust or None) and `open_store()`
    run inside each actor (they must pickle: e.g. functools.partial of ``retrieval.bundle.load_for_indexing``)."""
    report = IndexReport()

    def skip(path, why: str) -> None:
        report.skipped.append((str(path), why))
        if on_skip:
            on_skip(str(path), why)

    paths, odd = find_images(root)
    for p, why in odd:
        skip(p, why)
    by_id = hash_files(paths, report, skip)
    images = [{"id": i, "path": str(p)} for i, p in by_id.items() if p.suffix.lower() not in VIDEO_SUFFIXES]
    videos = [{"id": i, "path": str(p)} for i, p in by_id.items() if p.suffix.lower() in VIDEO_SUFFIXES]
    if videos and frames_dir is None:
        raise ValueError("indexing a video needs a frames folder (frames_dir)")
    actor_args = dict(load_model=load_model, open_store=open_store, labels=dict(labels or {}), every=every,
                      frames_dir=str(frames_dir or ""), batch_size=batch_size)
    done, total = 0, len(by_id)
    if on_progress:
        on_progress(0, total)
    # Ray's driver prints cluster messages ("Task ... failed ... will be retried") to sys.stdout from its own
    # thread, whatever log_to_driver says: while Ray runs they go to stderr, so `--json` stdout stays JSON.
    with contextlib.redirect_stdout(sys.stderr):
        ray, started = start_ray(address, workers)
        try:
            # Images in batches of `batch_size`; videos one per batch (one video may be hundreds of frames).
            for rows, per_batch in ((images, batch_size), (videos, 1)):
                with without_known_noise():  # entered after ray.init: Ray's own processes keep the real stderr
                    for out in _stream(ray, rows, per_batch, workers, actor_args):
                        for path, status, reason, trusted in zip(out["path"], out["status"], out["reason"],
                                                                 out["trusted"]):
                            if status == "indexed":
                                report.indexed += 1
                                report.trusted += bool(trusted)
                            elif status == "present":
                                report.present += 1
                            else:
                                skip(path, str(reason))
                        done = min(total, done + (len(out["path"]) if per_batch > 1 else 1))
                        if on_progress:
                            on_progress(done, total)
        finally:
            if started:
                ray.shutdown()
    gallery = open_store()  # every actor is done: record whether each record has its image-to-image vector
    try:
        gallery.similar().mark_complete()
    finally:
        gallery.close()
    log.info("ray: %s", json.dumps({"indexed": report.indexed, "present": report.present}))
    return report


def _stream(ray, rows: list[dict], per_batch: int, workers: int, actor_args: dict):
    """Status batches as the actors finish them (Ray Data streams: the driver never holds the whole output)."""
    if not rows:
        return
    ds = ray.data.from_items(rows).map_batches(
        _Encoder, fn_constructor_kwargs=actor_args, batch_size=per_batch, num_cpus=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")
