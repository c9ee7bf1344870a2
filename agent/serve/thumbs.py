"""Thumbnails in results, opt-in per request: a client on another machine cannot open the `path` a row
carries, so it may ask to see the image itself (issue 20).

Each is a JPEG of at most THUMB_SIDE px on its longest side, circle-cropped and without EXIF/ICC (the same
`to_jpeg_bytes` that prepares images for a remote judge), so a row adds ~5-15 KB, not the original file.
"""
from __future__ import annotations

import base64
import os
from functools import lru_cache
from typing import Iterable, Optional

THUMB_SIDE = 256  # px, longest side
THUMB_QUALITY = 80  # JPEG quality
THUMB_MIME = "image/jpeg"


@lru_cache(maxsize=512)
def _jpeg(path: str, mtime_ns: int, size: int) -> Optional[bytes]:
    from retrieval.preprocess import ImageLoadError, load_image, to_jpeg_bytes

    try:
        return to_jpeg_bytes(load_image(path), max_side=THUMB_SIDE, quality=THUMB_QUALITY)
    except (ImageLoadError, OSError):
        return None


def thumbnail_jpeg(path: str) -> Optional[bytes]:
    """The row's image as a small JPEG, or None where the file is gone or unreadable (the row stays)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return _jpeg(path, st.st_mtime_ns, st.st_size)


def add_thumbnails(rows: Iterable[dict]) -> None:
    """Each row gains `thumbnail`: base64 JPEG text, or None where the image cannot be read."""
    for row in rows:
        data = thumbnail_jpeg(str(row.get("path") or ""))
        row["thumbnail"] = None if data is None else base64.b64encode(data).decode("ascii")
