"""A small synthetic gallery that imitates endoscopic views of the seven ENTRep classes.

For the offline demo only: the pictures are drawn, not photographed, and every file says so (its name starts
with `synthetic-` and the frame carries a 'SYNTHETIC' mark in the black border). They keep the cues the real task
depends on: a bright circular field on black, the site's structures, and a side that shows only in the layout
(the light reflex of a tympanic membrane, the septum's side in a nasal cavity), so a mirror swaps the side.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("nose-right", "nose-left", "ear-right", "ear-left", "vc-open", "vc-closed", "throat")
W, H = 320, 240


def _field(rng: random.Random) -> tuple[Image.Image, ImageDraw.ImageDraw, tuple[int, int, int]]:
    img = Image.new("RGB", (W, H), (0, 0, 0))
    d = ImageDraw.Draw(img)
    cx, cy = W // 2 + rng.randint(-12, 12), H // 2 + rng.randint(-8, 8)
    r = rng.randint(96, 112)
    base = (200 + rng.randint(-20, 20), 110 + rng.randint(-20, 20), 100 + rng.randint(-20, 20))
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=base)
    return img, d, (cx, cy, r)


def _ear(d, c, rng, side: str) -> None:
    cx, cy, r = c
    # the canal wall, then the pearly-grey tympanic membrane
    d.ellipse((cx - r + 8, cy - r + 8, cx + r - 8, cy + r - 8), fill=(215, 160, 140))
    tw, th = int(r * 0.62), int(r * 0.72)
    d.ellipse((cx - tw, cy - th, cx + tw, cy + th), fill=(188, 186, 180), outline=(150, 140, 135), width=3)
    # malleus handle from the umbo up, and the cone of light: anterior-inferior, so on opposite sides L/R
    d.line((cx, cy, cx + (-8 if side == "left" else 8), cy - th + 10), fill=(230, 225, 205), width=5)
    sgn = -1 if side == "left" else 1
    tip = (cx + sgn * int(tw * 0.85), cy + int(th * 0.7))
    d.polygon([(cx, cy + 4), tip, (tip[0] - sgn * 18, tip[1] + 6)], fill=(252, 250, 240))
    if rng.random() < 0.4:  # some findings: erythema or a little discharge
        d.ellipse((cx - 20, cy + th - 30, cx + 10, cy + th - 8), fill=(235, 235, 210))


def _nose(d, c, rng, side: str) -> None:
    cx, cy, r = c
    # septum (medial wall) on one side of the frame, turbinates on the other; a dark airway between
    sgn = 1 if side == "left" else -1  # left nasal cavity: septum on the image's right
    d.rectangle((cx + sgn * int(r * 0.35) - 30, cy - r, cx + sgn * int(r * 0.35) + 30, cy + r), fill=(222, 140, 130))
    for k, dy in enumerate((-40, 10, 55)):
        tx = cx - sgn * int(r * 0.45)
        d.ellipse((tx - 38, cy + dy - 18, tx + 38, cy + dy + 18), fill=(205 - 10 * k, 120, 115))
    d.polygon([(cx, cy - r + 20), (cx - sgn * 10, cy + r - 20), (cx + sgn * 18, cy + r - 25)], fill=(40, 15, 15))


def _larynx(d, c, rng, open_: bool) -> None:
    cx, cy, r = c
    d.ellipse((cx - 70, cy - 80, cx + 70, cy - 40), fill=(220, 170, 150))  # epiglottis
    gap = rng.randint(22, 34) if open_ else 2
    top, bottom = (cx, cy - 35), cy + 70
    left, right = (cx - gap, bottom), (cx + gap, bottom)
    d.polygon([top, left, right], fill=(25, 10, 10))  # glottis: a dark V when abducted
    d.line([top, (cx - gap - 6, bottom)], fill=(245, 240, 230), width=9)  # vocal folds, pearly white
    d.line([top, (cx + gap + 6, bottom)], fill=(245, 240, 230), width=9)
    d.ellipse((cx - 50, bottom - 5, cx - 20, bottom + 20), fill=(210, 140, 130))  # arytenoids
    d.ellipse((cx + 20, bottom - 5, cx + 50, bottom + 20), fill=(210, 140, 130))


def _throat(d, c, rng) -> None:
    cx, cy, r = c
    d.ellipse((cx - 90, cy - 30, cx - 40, cy + 60), fill=(205, 95, 95))  # tonsils, both sides
    d.ellipse((cx + 40, cy - 30, cx + 90, cy + 60), fill=(205, 95, 95))
    d.polygon([(cx - 14, cy - 70), (cx + 14, cy - 70), (cx + 6, cy + 5), (cx - 6, cy + 5)], fill=(215, 120, 115))
    d.ellipse((cx - 10, cy - 5, cx + 10, cy + 15), fill=(215, 120, 115))  # uvula
    d.rectangle((cx - 30, cy + 40, cx + 30, cy + 90), fill=(60, 20, 20))


def draw(cls: str, rng: random.Random) -> Image.Image:
    img, d, c = _field(rng)
    site, _, side = cls.partition("-")
    if site == "ear":
        _ear(d, c, rng, side)
    elif site == "nose":
        _nose(d, c, rng, side)
    elif site == "vc":
        _larynx(d, c, rng, open_=(side == "open"))
    else:
        _throat(d, c, rng)
    # re-clip to the circular field and soften, as an endoscope's optics would
    mask = Image.new("L", (W, H), 0)
    cx, cy, r = c
    ImageDraw.Draw(mask).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    img = Image.composite(img, Image.new("RGB", (W, H)), mask).filter(ImageFilter.GaussianBlur(1.2))
    img = img.rotate(rng.uniform(-8, 8), resample=Image.BICUBIC)  # small roll of the scope, no mirror
    ImageDraw.Draw(img).text((4, H - 14), "SYNTHETIC", fill=(120, 120, 120))
    return img


def make_gallery(out: str | Path, per_class: int = 12, seed: int = 0) -> dict[str, str]:
    """Write `imgs/` + `cls.json` (ENTRep layout) under `out`; returns image name -> class."""
    out = Path(out)
    (out / "imgs").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    labels = {}
    for cls in CLASSES:
        for i in range(per_class):
            name = f"synthetic-{cls}-{i:03d}.png"
            draw(cls, rng).save(out / "imgs" / name)
            labels[name] = cls
    (out / "cls.json").write_text(json.dumps(labels, indent=1))
    return labels


