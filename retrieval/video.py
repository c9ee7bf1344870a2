"""Endoscopy videos as a source of gallery images: decode, keep one frame every N seconds, drop still frames.

Decoding is PyAV (FFmpeg's libraries bundled in the wheel, nothing downloaded at install or run time).

Which frames are kept:
- one per `every` seconds of presentation time: the first decoded frame at or after 0, every, 2*every, ...;
- of those, a frame is dropped when it is *near-identical* to the last frame kept from the same video: the
  mean absolute difference of their 32x32 greyscale thumbnails (0-255 grey levels) is below ``NEAR_MAD``.
  Measured on the 70 real ENTRep images (640x480): two different images differ by at least 18.0 (the closest
  pair; 5th percentile 30.9, median 50.3), while the same image held still and passed through a codec differs
  from itself by at most 2.15 (mpeg4; 0.02 with libx264). 6.0 sits three times above the codec noise and
  three times below the closest pair of distinct images, so a resting scope yields one frame and any real
  change of view is kept.

Why kept frames are written to disk (``FRAMES/<id[:2]>/<id>.jpg``, at most ``FRAME_MAX_SIDE`` px, JPEG q90):
every consumer after indexing (search by image, the Gemini judge, chat and HTML thumbnails, `open`) reads an
image *path*; a cached JPEG makes a frame one more image file for all of them, needs no decoder at query
time and keeps working if the video moves. It costs about 40 KB a frame (40 GB per million frames). The
stored record keeps the video's path and the timestamp beside it (``video``, ``t``), and its ``name`` is
already the display form ``exam.mp4 @ 00:01:23`` (see ``display_name``).

Ids are content-derived, sha256 of "<video sha256>@<milliseconds>", so a rerun finds every frame it stored
before (idempotent, resumable), and the same video under another name is the same frames.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from retrieval.preprocess import ImageLoadError
from retrieval.printable import visible

VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".mkv"})
NEAR_MAD = 6.0  # grey levels, 32x32 thumbnails (see the module docstring for how it was measured)
THUMB_SIDE = 32
FRAME_MAX_SIDE = 640
JPEG_QUALITY = 90
MAX_EVERY = 3600.0  # seconds: an endoscopy video is minutes long; more is a typo, not a sampling rate
_EVERY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*$", re.IGNORECASE)


class VideoLoadError(ImageLoadError):
    """A video that cannot be indexed; ``str(err)`` is the one-line reason (as for images)."""


@dataclass(frozen=True)
class FrameItem:
    """One kept frame, ready to index like an image: ``path`` is its cached JPEG."""

    id: str
    path: str
    video: str
    video_sha256: str
    t: float  # seconds from the start of the video, to the millisecond

    def metadata(self) -> dict:
        return {"path": self.path, "name": frame_name(self.video, self.t), "sha256": self.id,
                "video": self.video, "video_sha256": self.video_sha256, "t": self.t}


@dataclass
class FrameStats:
    """What happened to one video's sampled frames (for logs and the bench)."""

    sampled: int = 0
    near_duplicates: int = 0
    kept: list[FrameItem] = field(default_factory=list)
    stopped: Optional[str] = None  # a damaged video: how many frames were decoded, where and why they stop


def parse_every(text: str | float) -> float:
    """'1s', '2s', '0.5s', '500ms' or a bare number of seconds -> seconds (> 0)."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        m = _EVERY.match(str(text))
        if not m:
            raise ValueError(f"--every {text!r}: give a duration like 1s, 0.5s or 500ms")
        seconds = float(m.group(1)) / (1000.0 if (m.group(2) or "s").lower() == "ms" else 1.0)
    if not math.isfinite(seconds) or seconds < 0.001:
        raise ValueError(f"--every {text!r}: the interval must be at least 1ms")
    if seconds > MAX_EVERY:  # 1e20 s "worked" (one frame a video) and overflowed the frame grid's arithmetic
        raise ValueError(f"--every {text!r}: the interval must be at most {MAX_EVERY:.0f}s (one hour)")
    return seconds


def format_timestamp(t: float) -> str:
    """Seconds -> HH:MM:SS, with milliseconds only when the time is not a whole second (00:00:00.5)."""
    ms = int(round(float(t) * 1000))
    s, ms = divmod(ms, 1000)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    frac = f".{ms:03d}".rstrip("0") if ms else ""
    return f"{h:02d}:{m:02d}:{s:02d}{frac}"


def frame_name(video: str | os.PathLike, t: float) -> str:
    """`exam.mp4 @ 00:01:23`; a newline or control character in the file name is stored escaped (`\\x0a`)."""
    return f"{visible(Path(video).name, newlines=False)} @ {format_timestamp(t)}"


def display_name(meta: dict, fallback: str = "?") -> str:
    """How a stored record is named to a person: `exam.mp4 @ 00:01:23` for a frame, the file name for an image."""
    if meta.get("video") and meta.get("t") is not None:
        return frame_name(meta["video"], float(meta["t"]))
    return str(meta.get("name") or (Path(str(meta["path"])).name if meta.get("path") else fallback))


def frame_id(video_sha256: str, t: float) -> str:
    return hashlib.sha256(f"{video_sha256}@{int(round(t * 1000))}".encode()).hexdigest()


def frame_path(frames_dir: str | os.PathLike, fid: str) -> Path:
    return Path(frames_dir) / fid[:2] / f"{fid}.jpg"


def _thumb(frame) -> np.ndarray:
    return frame.to_ndarray(format="gray", width=THUMB_SIDE, height=THUMB_SIDE).astype(np.float32)


def _open(path: Path):
    import av

    try:
        size = path.stat().st_size
    except OSError as e:
        raise VideoLoadError(f"unreadable: {e.strerror or e}", path) from None
    if size == 0:
        raise VideoLoadError("empty file", path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise VideoLoadError(f"not a readable video ({_why(e)})", path) from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise VideoLoadError(f"no video stream ({', '.join(kinds)} only)", path)
    return container


def _why(e: Exception) -> str:
    return " ".join(str(getattr(e, "strerror", None) or e).split())


def sample_frames(
    path: str | os.PathLike, every: float = 1.0, near: float = NEAR_MAD, stopped: Optional[list[str]] = None
) -> Iterator[tuple[float, object, bool]]:
    """(seconds, av.VideoFrame, near-identical?) for each frame sampled on the `every` grid, in order.

    Raises VideoLoadError for an unreadable, empty or audio-only file, or one with no decodable frame.

    A video damaged part-way (a cut file, a stream error, a header claiming more than the frames hold) keeps
    every frame decoded before the damage: with a `stopped` list, one line saying how many frames were
    decoded, where they stop and why is appended to it; without one, the damage raises VideoLoadError."""
    import av

    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        due, last, decoded, t, damage = 0.0, None, 0, None, None
        try:
            for frame in container.decode(stream):
                decoded += 1
                t = frame.time if frame.time is not None else t
                if frame.time is None or frame.time + 1e-6 < due:
                    continue
                due = (math.floor(frame.time / every + 1e-9) + 1) * every
                thumb = _thumb(frame)
                is_near = last is not None and float(np.abs(thumb - last).mean()) < near
                if not is_near:
                    last = thumb
                yield round(max(0.0, frame.time), 3), frame, is_near
        except (av.FFmpegError, EOFError) as e:
            damage = f"the stream is damaged there ({_why(e)})"
        if decoded == 0:
            raise VideoLoadError("no decodable video frames (truncated?)" + (f": {damage}" if damage else ""), path)
        claimed = container.duration / 1e6 if container.duration else None
        if damage is None and claimed and t is not None and t < claimed * 0.9 - 1.0:
            damage = f"the file ends there, its header claims {format_timestamp(claimed)} (truncated?)"
        if damage is not None:
            where = format_timestamp(max(0.0, t)) if t is not None else "an unknown time"
            note = f"frames stop at {where} after {decoded} decoded: {damage}"
            if stopped is None:
                raise VideoLoadError(f"damaged: {note}", path)
            stopped.append(note)
    finally:
        container.close()


def extract_frames(
    path: str | os.PathLike, video_sha256: str, frames_dir: str | os.PathLike, every: float = 1.0,
    near: float = NEAR_MAD,
) -> FrameStats:
    """Decode one video, write each kept frame's JPEG once (atomically), and describe the kept frames.

    A rerun decodes again (deterministic: the same frames, the same ids) but rewrites no JPEG."""
    path = Path(path)
    stats = FrameStats()
    video = str(path.resolve())
    stopped: list[str] = []
    for t, frame, is_near in sample_frames(path, every, near, stopped):
        stats.sampled += 1
        if is_near:
            stats.near_duplicates += 1
            continue
        fid = frame_id(video_sha256, t)
        out = frame_path(frames_dir, fid)
        if not out.is_file():
            img = frame.to_image()
            img.thumbnail((FRAME_MAX_SIDE, FRAME_MAX_SIDE))
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(f".{os.getpid()}.tmp")
            try:
                img.save(tmp, format="JPEG", quality=JPEG_QUALITY)
                os.replace(tmp, out)  # a killed run never leaves a half-written frame behind
            except BaseException:  # a full disk: no half-written .tmp left to fill it further
                tmp.unlink(missing_ok=True)
                raise
        stats.kept.append(FrameItem(fid, str(out), video, video_sha256, t))
    stats.stopped = stopped[0] if stopped else None
    return stats
