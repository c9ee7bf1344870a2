"""Robust image loading and the endoscopic circle crop, shared by indexing, training and the Gemini judge.

Loading policy (one place, so every consumer sees the same pixels):
- Always RGB in RGB order, EXIF orientation applied, fully decoded. Transparency is composited on black
  (the endoscope's own background), 16-bit greyscale is scaled to 8 bits (65535 -> 255), CMYK is converted.
- Only PNG, JPEG, BMP, TIFF and WebP are decoded; anything else is an ``ImageLoadError``.
- Truncated PNG/JPEG files fail even where someone set ``ImageFile.LOAD_TRUNCATED_IMAGES``: the file's
  structure is checked here, not left to that global.
- Decompression bombs are refused, not downscaled: an image over ``MAX_PIXELS`` (67 Mpx, below PIL's own
  ``DecompressionBombWarning`` threshold, or that threshold where someone lowered it) is an ``ImageLoadError``
  before any pixel is decoded, and so is PIL's ``DecompressionBombError``. Accepted images with a side over
  ``LOAD_MAX_SIDE`` are decoded at reduced size (JPEG ``draft``, otherwise ``reduce``): consumers downsample.
"""
from __future__ import annotations

import io
import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from retrieval.errors import InputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("kger.preprocess")

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

# PIL format ids we decode (a camera's multi-frame JPEG opens as JPEG and reports itself as MPO).
DECODE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
MAX_FILE_BYTES = 256 * 1024 * 1024  # refuse to read more than this from disk
MAX_PIXELS = 1 << 26  # 67 Mpx (e.g. 8192 x 8192); larger is refused as a likely decompression bomb
LOAD_MAX_SIDE = 4096  # longer sides are reduced on load; no consumer needs more

# Circle-crop tuning (working resolution is about WORK_SIDE px on the long side).
WORK_SIDE = 320
MIN_SIDE = 16  # below this there is no field to find
MIN_CONTRAST = 16  # grey levels between the 1st and 99.9th percentile
MIN_FIELD_FRACTION = 0.05  # of the frame
MAX_OUTSIDE_BRIGHT = 0.10  # fraction of bright pixels tolerated outside the box (text overlays)
FULL_FRAME = 0.97  # a box this close to the frame on both axes is "no border"


class ImageLoadError(InputError):
    """Raised with a one-line, human reason ('not an image', 'truncated PNG', 'empty file', ...).

    ``str(err)`` is the reason alone; ``err.path`` is the file, so callers can say which one was skipped.
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        super().__init__(" ".join(str(reason).split()))
        self.reason = str(self)
        self.path = None if path is None else Path(path)


# --------------------------------------------------------------------------------------------- loading


def load_image(path) -> Image.Image:
    """Load any supported image file as a fully decoded RGB image, or raise ``ImageLoadError``."""
    path = Path(path)
    data = _read_bytes(path)
    try:
        img = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
    except Image.DecompressionBombError as e:  # PIL's own guard, past its limit: said as kger's one limit
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(int(found.group(1)) if found else None, None, path) from e
    except Exception as e:  # noqa: BLE001 - plugins raise many types on hostile headers
        raise ImageLoadError(_unopenable_reason(data), path) from e

    fmt = "JPEG" if img.format == "MPO" else (img.format or "image")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageLoadError(f"zero-size image ({w}x{h})", path)
    if w * h > pixel_cap():
        raise _too_large(w * h, (w, h), path)
    if fmt == "JPEG" and max(w, h) > LOAD_MAX_SIDE:
        # DCT-domain downscale by 2/4/8 while decoding; draft keeps at least the size asked for, so ask
        # for half the cap to land in [cap/2, cap].
        scale = LOAD_MAX_SIDE / 2 / max(w, h)
        img.draft(img.mode, (math.ceil(w * scale), math.ceil(h * scale)))

    try:
        img.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure on untrusted bytes is a bad file
        raise ImageLoadError(_decode_reason(fmt, e), path) from e
    truncated = _structure_problem(fmt, data)
    if truncated:
        raise ImageLoadError(truncated, path)

    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - a broken EXIF block should not cost the pixels
        log.debug("%s: ignoring unreadable EXIF orientation (%s)", path, e)
    if img.mode in _REDUCIBLE:  # shrink before the RGB copies are made
        img = _cap_side(img)
    rgb = _cap_side(_to_rgb(img, path))
    rgb.load()
    return rgb


_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "I", "F"})  # modes where box-averaging is meaningful


def pixel_cap() -> int:
    """The one image-size limit: kger's MAX_PIXELS, or PIL's MAX_IMAGE_PIXELS where someone set it lower."""
    return min(MAX_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_PIXELS)


def _too_large(pixels: int | None, size: tuple[int, int] | None, path) -> ImageLoadError:
    """One message for every image over the limit, whether kger or PIL noticed first."""
    dims = f"{size[0]}x{size[1]} = " if size else ""
    count = f"{dims}{pixels:,} pixels" if pixels else "the image"
    return ImageLoadError(f"image too large: {count} is over the {pixel_cap():,}-pixel limit "
                          "(refused as a possible decompression bomb)", path)


def _cap_side(img: Image.Image) -> Image.Image:
    side = max(img.size)
    return img.reduce(math.ceil(side / LOAD_MAX_SIDE)) if side > LOAD_MAX_SIDE else img


def _read_bytes(path: Path) -> bytes:
    try:
        if path.is_dir():
            raise ImageLoadError("is a directory, not an image file", path)
        size = path.stat().st_size
        if size == 0:
            raise ImageLoadError("empty file", path)
        if size > MAX_FILE_BYTES:
            raise ImageLoadError(f"file too large ({size:,} bytes > {MAX_FILE_BYTES:,})", path)
        return path.read_bytes()
    except FileNotFoundError as e:
        raise ImageLoadError("file not found", path) from e
    except PermissionError as e:
        raise ImageLoadError("permission denied", path) from e
    except IsADirectoryError as e:
        raise ImageLoadError("is a directory, not an image file", path) from e
    except OSError as e:
        raise ImageLoadError(f"cannot read file ({e.strerror or e})", path) from e


_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for sig, fmt in _SIGNATURES.items() if data.startswith(sig)), None)


def _unopenable_reason(data: bytes) -> str:
    """Say why PIL would not open these bytes, in words a user can act on."""
    fmt = _sniff(data)
    if fmt == "PNG" and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if w == 0 or h == 0:
            return f"zero-size image ({w}x{h})"
    if fmt is not None:
        return f"corrupt or truncated {fmt} header"
    head = data[:512]
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if text and sum(c.isprintable() or c.isspace() for c in text) >= 0.95 * len(text):
            return "not an image (looks like a text file)"
    try:  # identify only (header parse), to name a format we deliberately do not decode
        with Image.open(io.BytesIO(data)) as other:
            return f"unsupported image format {other.format} (supported: PNG, JPEG, BMP, TIFF, WebP)"
    except Exception:  # noqa: BLE001
        return "not an image (unrecognised file type)"


def _decode_reason(fmt: str, e: Exception) -> str:
    msg = " ".join(str(e).split())
    if "truncated" in msg.lower() or isinstance(e, EOFError):
        return f"truncated {fmt} (image data ends early)"
    if isinstance(e, MemoryError):
        return f"{fmt} too large to decode in memory"
    return f"corrupt {fmt} data ({msg or type(e).__name__})"


def _structure_problem(fmt: str, data: bytes) -> str | None:
    """Check that a PNG/JPEG is complete, independent of ``ImageFile.LOAD_TRUNCATED_IMAGES``.

    That global makes PIL pad a truncated file silently; any library in the process may set it.
    """
    if fmt == "PNG":
        pos = 8
        while pos + 8 <= len(data):
            length = int.from_bytes(data[pos:pos + 4], "big")
            kind = data[pos + 4:pos + 8]
            pos += 12 + length  # length, type, data, crc
            if pos > len(data):
                break
            if kind == b"IEND":
                return None
        return "truncated PNG (image data ends early)"
    if fmt == "JPEG":
        last_scan = data.rfind(b"\xff\xda")  # SOS of the last scan (0xFF is stuffed inside scan data)
        if last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0:  # no EOI after it
            return "truncated JPEG (image data ends early)"
    return None


def _to_rgb(img: Image.Image, path=None) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha over black, 16-bit scaled (not clipped), palette expanded."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(img), mode), "L").convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ImageLoadError(f"unsupported colour mode {mode}", path) from e


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale high-bit-depth greyscale to 0..255 by its declared range; stretch only when it has none."""
    a = arr.astype(np.float64)
    if mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    elif mode == "I" and a.size and a.min() >= 0 and a.max() <= 255:
        lo, hi = 0.0, 255.0
    elif mode == "I" and a.size and a.min() >= 0 and a.max() <= 65535:
        lo, hi = 0.0, 65535.0  # how PIL holds 16-bit PNG/TIFF data
    elif mode == "F" and a.size and np.nanmin(a) >= 0 and np.nanmax(a) <= 1:
        lo, hi = 0.0, 1.0
    else:
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
    a = np.nan_to_num((a - lo) * (255.0 / (hi - lo)), nan=0.0)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ circle crop


def find_field(img: Image.Image) -> tuple[int, int, int, int] | None:
    """Box (left, top, right, bottom) that ``circle_crop`` cuts: the bright field plus a small margin.

    None when there is no bright region on a dark border to crop to (the reason is logged at DEBUG).
    """
    return _locate_field(img)[0]


def circle_crop(img: Image.Image) -> Image.Image:
    """Crop to the endoscopic field; never fails: falls back to the whole frame and logs why."""
    box, reason = _locate_field(img)
    if box is None:
        log.debug("circle crop: using the full %dx%d frame (%s)", img.width, img.height, reason)
        return img
    return img.crop(box)


def _locate_field(img: Image.Image) -> tuple[tuple[int, int, int, int] | None, str]:
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        return None, f"image too small ({w}x{h})"
    try:
        return _field_box(img)
    except Exception as e:  # noqa: BLE001 - the crop is an optimisation; it must never cost the image
        return None, f"field search failed: {type(e).__name__}: {e}"


def _field_box(img: Image.Image) -> tuple[tuple[int, int, int, int] | None, str]:
    """Threshold above the border level, drop thin text strokes, keep the big component(s), pad."""
    from scipy import ndimage as ndi  # 0.5 s import; only the crop needs it

    w, h = img.size
    work = img if img.mode in ("RGB", "L") else _to_rgb(img)
    f = max(1, max(w, h) // WORK_SIDE)
    small = work.reduce(f) if f > 1 else work
    g = np.asarray(small)
    if g.ndim == 3:  # brightest channel: tissue is red-dominant, so this separates it from black best
        g = np.maximum(np.maximum(g[..., 0], g[..., 1]), g[..., 2])  # 25x faster than max(axis=2)
    lo, hi = np.percentile(g, (1, 99.9))
    if hi - lo < MIN_CONTRAST:
        return None, f"uniform image (grey levels {lo:.0f}..{hi:.0f})"
    raw = g > lo + max(8.0, 0.06 * (hi - lo))
    iterations = 2 if min(g.shape) >= 64 else 1
    mask = ndi.binary_opening(raw, iterations=iterations)  # cuts text strokes and thin bridges
    labels, n = ndi.label(mask)
    if n == 0:
        return None, "no bright region"
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(sizes.max())
    if largest < MIN_FIELD_FRACTION * g.size:
        return None, f"largest bright region is only {largest / g.size:.1%} of the frame"
    # Keep every big piece (a dark lumen can split the field); small ones are text and glare.
    keep = np.flatnonzero(sizes >= 0.25 * largest)
    slices = ndi.find_objects(labels)
    y0 = min(slices[k - 1][0].start for k in keep)
    y1 = max(slices[k - 1][0].stop for k in keep)
    x0 = min(slices[k - 1][1].start for k in keep)
    x1 = max(slices[k - 1][1].stop for k in keep)

    outside = int(raw.sum()) - int(raw[y0:y1, x0:x1].sum())
    outside_area = g.size - (y1 - y0) * (x1 - x0)
    if outside_area and outside / outside_area > MAX_OUTSIDE_BRIGHT:
        return None, f"{outside / outside_area:.0%} of the area outside the field is bright (no dark border)"

    # Back to full resolution: working pixel i covers [i*f, (i+1)*f).
    left, top, right, bottom = x0 * f, y0 * f, min(w, x1 * f), min(h, y1 * f)
    margin = max(f, round(0.02 * max(right - left, bottom - top)))
    left, top = max(0, left - margin), max(0, top - margin)
    right, bottom = min(w, right + margin), min(h, bottom + margin)
    left, right = _grow(left, right, bottom - top, w)
    top, bottom = _grow(top, bottom, right - left, h)
    if right - left >= FULL_FRAME * w and bottom - top >= FULL_FRAME * h:
        return None, "the bright field fills the frame"
    return (int(left), int(top), int(right), int(bottom)), "ok"


def _grow(a: int, b: int, want: int, limit: int) -> tuple[int, int]:
    """Widen [a, b) to length ``want`` inside [0, limit), centred; never shrinks, so never cuts the field."""
    want = min(want, limit)
    if b - a >= want:
        return a, b
    a = max(0, min(a - (want - (b - a)) // 2, limit - want))
    return a, a + want


# ------------------------------------------------------------------------------------- model / LLM input


def prepare_array(img: Image.Image, size: int = 224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> np.ndarray:
    """RGB image -> normalised (3, size, size) float32 array (bicubic, antialiased resize); no torch needed."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise ValueError(f"mean and std need 3 values each and std no zeros, got {mean}, {std}")
    rgb = _to_rgb(img)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)  # PIL widens the kernel when shrinking
    x = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def prepare(img: Image.Image, size: int = 224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """`prepare_array` as a torch tensor (the same float32 values)."""
    import torch

    return torch.from_numpy(prepare_array(img, size, mean, std))


def load_array(path, size: int = 224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop: bool = True) -> np.ndarray:
    """The one path from a file to a model input: load, circle-crop, resize, normalise."""
    img = load_image(path)
    return prepare_array(circle_crop(img) if crop else img, size=size, mean=mean, std=std)


def load_for_model(
    path, size: int = 224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop: bool = True
) -> torch.Tensor:
    """`load_array` as a torch tensor, for indexing and training."""
    import torch

    return torch.from_numpy(load_array(path, size, mean, std, crop))


def to_jpeg_bytes(img: Image.Image, max_side: int = 512, quality: int = 85) -> bytes:
    """Circle-cropped, downscaled JPEG for a remote LLM; carries no EXIF, ICC or other metadata."""
    if max_side < 1 or not 1 <= quality <= 100:
        raise ValueError(f"need max_side >= 1 and quality in 1..100, got {max_side}, {quality}")
    view = circle_crop(_to_rgb(img))
    if max(view.size) > max_side:
        view = view.copy()
        view.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    clean = Image.frombytes("RGB", view.size, view.tobytes())  # a fresh image: no info, no EXIF
    buf = io.BytesIO()
    clean.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()

