"""Image loading and the circle crop: odd and broken files made on the fly, a synthetic frame, the real 70."""
from __future__ import annotations

import hashlib
import io
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile, ImageFont

from retrieval.manifest import file_sha256
from retrieval.preprocess import (
    IMAGE_SUFFIXES,
    ImageLoadError,
    circle_crop,
    find_field,
    load_image,
    prepare,
)

RNG = np.random.default_rng(0)


def noisy_rgb(w: int, h: int) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def smooth_rgb(w: int, h: int) -> Image.Image:
    """Gradients: JPEG keeps them within a few levels, so decoded pixels can be compared."""
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)]
    return Image.fromarray(np.stack(planes, -1).astype(np.uint8))


def png_with_header_size(path, w: int, h: int):
    """A tiny valid PNG whose IHDR claims another size (never decoded: the size checks come first)."""
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


# Disc geometry of the synthetic endoscopic frame (off-centre, with a text overlay top-left).
FRAME = (640, 480)
DISC_C, DISC_R = (420, 250), 170
TEXT_XY = (8, 8)


def synthetic_frame() -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Black canvas, bright textured disc with a dark lumen, white text in a corner; returns (img, text box)."""
    w, h = FRAME
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx - DISC_C[0], yy - DISC_C[1])
    tissue = np.stack([200 + 30 * np.sin(xx / 9.0), 110 + 30 * np.cos(yy / 7.0), 100 + 0 * xx], axis=-1)
    tissue += RNG.normal(0, 12, tissue.shape)
    tissue[np.hypot(xx - DISC_C[0] - 30, yy - DISC_C[1]) < 45] = 6  # dark lumen: a hole in the mask
    arr = np.where((r <= DISC_R)[..., None], tissue, RNG.normal(3, 2, tissue.shape))  # JPEG-ish dark noise
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    text = "PATIENT 004217\n2025-06-01 10:42\nENT SCOPE 4mm"
    font = ImageFont.load_default(size=16)
    draw.multiline_text(TEXT_XY, text, fill=(255, 255, 255), font=font)
    return img, draw.multiline_textbbox(TEXT_XY, text, font=font)


# ------------------------------------------------------------------------------------------- broken files


def _empty(p):
    p.write_bytes(b"")
    return p


def _text_as_png(p):
    p.write_text("image,label\nfoo.png,ear-left\n")
    return p


def _truncated(fmt):
    def make(p):
        buf = io.BytesIO()
        noisy_rgb(96, 64).save(buf, fmt)
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 6 // 10])
        return p
    return make


def _directory(p):
    p.mkdir()
    return p


def _missing(p):
    return p


def _zero_size(p):
    return png_with_header_size(p, 0, 10)


def _gif(p):
    Image.new("P", (8, 8)).save(p, "GIF")
    return p


def _bomb_over_cap(p):
    return png_with_header_size(p, 9000, 9000)  # 81 Mpx: over our cap, under PIL's own warning


def _bomb_over_pil(p):
    return png_with_header_size(p, 30000, 30000)  # PIL raises DecompressionBombError itself


def _garbage(p):
    p.write_bytes(bytes(RNG.integers(0, 256, 300, dtype=np.uint8)) + b"\x00\xff")
    return p


BROKEN = [
    ("empty.png", _empty, "empty file"),
    ("notes.png", _text_as_png, "text file"),
    ("cut.png", _truncated("PNG"), "truncated PNG"),
    ("cut.jpg", _truncated("JPEG"), "truncated JPEG"),
    ("folder.png", _directory, "directory"),
    ("missing.png", _missing, "not found"),
    ("zero.png", _zero_size, "zero-size"),
    ("anim.gif", _gif, "unsupported image format GIF"),
    ("bomb.png", _bomb_over_cap, "too large"),
    ("bigbomb.png", _bomb_over_pil, "too large"),
    ("noise.bin", _garbage, "not an image"),
]


@pytest.mark.parametrize("name,make,reason", BROKEN, ids=[b[0] for b in BROKEN])
def test_bad_files_raise_one_line_reason(tmp_path, name, make, reason):
    path = make(tmp_path / name)
    with pytest.raises(ImageLoadError) as err:
        load_image(path)
    msg = str(err.value)
    assert reason in msg
    assert "\n" not in msg and len(msg) < 200
    assert err.value.path == path
    assert isinstance(err.value, ValueError)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_lowered_pil_bomb_limit_is_honoured(tmp_path, monkeypatch):
    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")  # 1,600 px: over 1,000, under PIL's own 2x error
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="too large: 40x40"):
        load_image(tmp_path / "x.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_fails_even_if_pil_is_told_to_accept_truncation(tmp_path, monkeypatch, fmt):
    path = _truncated(fmt)(tmp_path / f"cut.{fmt.lower()}")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageLoadError, match=f"truncated {fmt}"):
        load_image(path)


@pytest.mark.parametrize("fmt,opts", [
    ("PNG", {}),
    ("JPEG", {"quality": 95}),
    ("JPEG", {"quality": 95, "progressive": True}),  # many scans: the structure check must see the last
    ("MPO", {"save_all": True, "append_images": [Image.new("RGB", (96, 64), (0, 0, 255))]}),  # camera JPEG
], ids=["png", "jpeg", "progressive", "mpo"])
def test_complete_files_pass_the_structure_check(tmp_path, fmt, opts):
    path = tmp_path / f"ok.{fmt.lower()}"
    src = smooth_rgb(96, 64)
    src.save(path, fmt, **opts)
    img = load_image(path)
    assert img.size == (96, 64) and img.mode == "RGB"
    diff = np.abs(np.asarray(img, dtype=int) - np.asarray(src, dtype=int))
    assert diff.max() == 0 if fmt == "PNG" else diff.mean() < 4  # the first frame, decoded whole


# ------------------------------------------------------------------------------------ odd but valid files


def test_rgba_is_composited_on_black(tmp_path):
    a = np.zeros((10, 20, 4), np.uint8)
    a[:, :10] = (255, 0, 0, 255)  # opaque red
    a[:, 10:] = (255, 255, 255, 0)  # fully transparent white
    a[0, 0] = (200, 100, 50, 128)  # half transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.mode == "RGB"
    assert img.getpixel((5, 5)) == (255, 0, 0)
    assert img.getpixel((15, 5)) == (0, 0, 0)
    assert np.allclose(img.getpixel((0, 0)), (100, 50, 25), atol=2)


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (10, 10), 0)
    p.putpalette([255, 255, 255, 255, 0, 0] + [0] * 762)
    p.paste(1, (0, 0, 5, 10))
    p.save(tmp_path / "p.png", transparency=0)
    img = load_image(tmp_path / "p.png")
    assert img.mode == "RGB"
    assert img.getpixel((2, 2)) == (255, 0, 0)
    assert img.getpixel((8, 2)) == (0, 0, 0)  # the transparent white index


@pytest.mark.parametrize("mode,value", [("L", 77), ("LA", 77)])
def test_grayscale_becomes_equal_rgb(tmp_path, mode, value):
    Image.new(mode, (6, 4), value if mode == "L" else (value, 255)).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.mode == "RGB" and img.getpixel((3, 2)) == (value, value, value)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    a = np.zeros((8, 8), np.uint16)
    a[0, :4] = [0, 30000, 32896, 65535]
    src = Image.fromarray(a)
    assert src.mode == "I;16"
    src.save(tmp_path / "deep.png")
    img = load_image(tmp_path / "deep.png")
    assert img.mode == "RGB"
    assert [img.getpixel((x, 0)) for x in range(4)] == [(0,) * 3, (117,) * 3, (128,) * 3, (255,) * 3]


def test_cmyk_jpeg_colour_survives(tmp_path):
    Image.new("RGB", (32, 32), (200, 40, 60)).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    img = load_image(tmp_path / "c.jpg")
    assert img.mode == "RGB"
    assert np.allclose(img.getpixel((16, 16)), (200, 40, 60), atol=12)


def test_exif_rotation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (230, 20, 20)  # left half red
    a[:, 20:] = (20, 20, 230)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(a).save(tmp_path / "rot.jpg", quality=95, exif=exif)
    img = load_image(tmp_path / "rot.jpg")
    assert img.size == (20, 40)  # width and height swapped
    top, bottom = np.asarray(img.getpixel((10, 5))), np.asarray(img.getpixel((10, 34)))
    assert top[0] > 180 and top[2] < 80  # the left (red) half is now on top
    assert bottom[2] > 180 and bottom[0] < 80


def test_one_pixel_image_loads_and_crops_to_itself(tmp_path):
    Image.new("RGB", (1, 1), (9, 8, 7)).save(tmp_path / "one.png")
    img = load_image(tmp_path / "one.png")
    assert img.size == (1, 1) and img.getpixel((0, 0)) == (9, 8, 7)
    assert circle_crop(img).size == (1, 1)
    assert prepare(img, size=8).shape == (3, 8, 8)


@pytest.mark.parametrize("fmt,size,expected", [("JPEG", (8000, 6000), (4000, 3000)),
                                               ("PNG", (6000, 4500), (3000, 2250))])
def test_large_images_are_reduced_on_load(tmp_path, fmt, size, expected):
    w, h = size
    ramp = np.broadcast_to(np.linspace(0, 255, w, dtype=np.float32).astype(np.uint8), (h, w))
    path = tmp_path / f"big.{fmt.lower()}"
    opts = {"compress_level": 1} if fmt == "PNG" else {}
    Image.fromarray(np.ascontiguousarray(ramp), "L").save(path, fmt, **opts)
    img = load_image(path)
    assert img.size == expected and img.mode == "RGB"
    row = np.asarray(img)[expected[1] // 2, :, 0].astype(int)
    assert row[5] < 10 and row[-5] > 245  # the whole picture, not a corner of it


def test_every_indexed_suffix_loads(tmp_path):
    src = noisy_rgb(24, 16)
    for suffix in sorted(IMAGE_SUFFIXES):
        path = tmp_path / f"x{suffix}"
        src.save(path)
        img = load_image(path)
        assert img.size == (24, 16) and img.mode == "RGB", suffix


def test_file_sha256_is_the_content_hash(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    (tmp_path / "b").write_bytes(b"abd")
    assert file_sha256(tmp_path / "a") == hashlib.sha256(b"abc").hexdigest()
    assert file_sha256(str(tmp_path / "a")) != file_sha256(tmp_path / "b")


# ------------------------------------------------------------------------------------------- circle crop


def test_synthetic_frame_crops_to_the_disc_not_the_text():
    img, text_box = synthetic_frame()
    box = find_field(img)
    assert box is not None
    left, top, right, bottom = box
    cx, cy = DISC_C
    assert left <= cx - DISC_R and top <= cy - DISC_R and right >= cx + DISC_R and bottom >= cy + DISC_R
    assert (right - left) * (bottom - top) < 0.5 * FRAME[0] * FRAME[1]
    assert left > text_box[2] or top > text_box[3]  # the overlay is outside the crop
    assert abs((right - left) - (bottom - top)) <= 2  # square-ish
    assert circle_crop(img).size == (right - left, bottom - top)


def disc_beside_fine_texture() -> Image.Image:
    """A bright disc, and beside it 1-px checkerboard content that a crop to the disc would throw away."""
    a = np.zeros((240, 320, 3), np.uint8)
    yy, xx = np.mgrid[0:240, 0:320]
    a[np.hypot(xx - 90, yy - 120) < 80] = (210, 120, 110)
    a[:, 180:] = (((xx[:, 180:] + yy[:, 180:]) % 2) * 255)[..., None]
    return Image.fromarray(a)


FALLBACKS = [
    ("black", Image.new("RGB", (64, 48), 0), "uniform"),
    ("white", Image.new("RGB", (64, 48), (255, 255, 255)), "uniform"),
    ("grey", Image.new("RGB", (300, 200), (120, 120, 120)), "uniform"),
    ("palette", Image.new("P", (40, 40), 3), "uniform"),
    ("1x1", Image.new("RGB", (1, 1), (255, 0, 0)), "too small"),
    ("3x5", Image.new("RGB", (3, 5), (255, 255, 255)), "too small"),
    ("noise", noisy_rgb(320, 240), "fills the frame"),  # bright everywhere: no dark border to remove
    ("speck", Image.fromarray(np.pad(np.full((20, 20, 3), 255, np.uint8), ((110, 110), (150, 150), (0, 0)))),
     "of the frame"),
    ("texture", disc_beside_fine_texture(), "outside the field is bright"),
]


@pytest.mark.parametrize("name,img,why", FALLBACKS, ids=[f[0] for f in FALLBACKS])
def test_crop_falls_back_to_full_frame_and_logs_why(caplog, name, img, why):
    with caplog.at_level(logging.DEBUG, logger="kger.preprocess"):
        out = circle_crop(img)
    assert out.size == img.size
    assert find_field(img) is None
    msgs = [r.getMessage() for r in caplog.records if r.name == "kger.preprocess" and r.levelno == logging.DEBUG]
    assert any("full" in m and why in m for m in msgs), msgs


def test_overlay_touching_the_disc_is_not_part_of_the_field():
    """A caption joined to the disc by a thin leader line must not stretch the crop towards it."""
    img, _ = synthetic_frame()
    draw = ImageDraw.Draw(img)
    cx, cy = DISC_C
    caption_xy = (20, cy - 40)
    draw.text(caption_xy, "L EAR", fill=(255, 255, 255), font=ImageFont.load_default(size=28))
    caption = draw.textbbox(caption_xy, "L EAR", font=ImageFont.load_default(size=28))
    draw.line([(caption[2], cy - 25), (cx - DISC_R + 20, cy - 25)], fill=(255, 255, 255), width=2)
    left, top, right, bottom = find_field(img)
    assert left > caption[2]  # the caption is left out
    assert left <= cx - DISC_R and right >= cx + DISC_R  # the disc is kept whole


def test_field_split_by_a_dark_band_is_kept_whole():
    img, _ = synthetic_frame()
    cx, cy = DISC_C
    ImageDraw.Draw(img).rectangle([0, cy - 20, FRAME[0], cy + 20], fill=(2, 2, 2))  # shadow across the field
    left, top, right, bottom = find_field(img)
    assert top <= cy - DISC_R and bottom >= cy + DISC_R and left <= cx - DISC_R and right >= cx + DISC_R


@pytest.mark.parametrize("rx,ry", [(150, 90), (90, 150)])
def test_oval_field_is_padded_to_square_not_cut(rx, ry):
    """Padding (never trimming) to a square keeps the anatomy's aspect through prepare()'s square resize."""
    yy, xx = np.mgrid[0:480, 0:640]
    a = np.zeros((480, 640, 3), np.uint8)
    a[((xx - 320) / rx) ** 2 + ((yy - 240) / ry) ** 2 <= 1] = (220, 130, 120)
    left, top, right, bottom = find_field(Image.fromarray(a))
    assert left <= 320 - rx and right >= 320 + rx and top <= 240 - ry and bottom >= 240 + ry
    assert abs((right - left) - (bottom - top)) <= 2


def test_crop_works_on_grayscale_and_rgba_input():
    img, _ = synthetic_frame()
    for mode in ("L", "RGBA"):
        box = find_field(img.convert(mode))
        assert box is not None and box[0] <= DISC_C[0] - DISC_R and box[2] >= DISC_C[0] + DISC_R


def test_real_images_all_crop_sanely(entrep_train):
    paths = sorted((entrep_train / "imgs").iterdir())
    assert len(paths) == 70
    fractions, sizes = [], []
    for path in paths:
        img = load_image(path)
        assert img.mode == "RGB"
        box = find_field(img)
        assert box is not None, path.name
        crop = circle_crop(img)
        assert crop.mode == "RGB"
        fractions.append(crop.width * crop.height / (img.width * img.height))
        sizes.append(crop.size)
        # nothing bright is left outside the box: the crop does not cut into the field
        a = np.asarray(img)
        g = np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2])
        inside = np.zeros(g.shape, bool)
        inside[box[1]:box[3], box[0]:box[2]] = True
        assert (g[~inside] > 40).mean() < 0.01, path.name
    assert min(fractions) >= 0.4
    ws, hs = zip(*sizes)
    print(f"\ncircle crop of {len(paths)} real frames: width {min(ws)}-{max(ws)}, height {min(hs)}-{max(hs)}, "
          f"area kept {min(fractions):.0%}-{max(fractions):.0%} (mean {np.mean(fractions):.0%})")
