"""Preprocessing as the models and the LLM see it: tensors in RGB order with the bundle's mean and std,
left and right kept apart, the circle crop applied, and the metadata-free JPEG sent to a remote judge."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from retrieval import preprocess as pp
from retrieval.preprocess import IMAGE_SUFFIXES, load_for_model, load_image, prepare, to_jpeg_bytes
from test_preprocess import synthetic_frame


def test_prepare_red_proves_rgb_order():
    x = prepare(Image.new("RGB", (10, 7), (255, 0, 0)))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.allclose(x[0], torch.ones(224, 224)) and torch.allclose(x[1:], -torch.ones(2, 224, 224))


def test_prepare_uses_given_mean_and_std():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = prepare(Image.new("RGB", (5, 5), (51, 102, 204)), size=16, mean=mean, std=std)
    expected = [(v / 255 - m) / s for v, m, s in zip((51, 102, 204), mean, std)]
    assert torch.allclose(x[:, 8, 8], torch.tensor(expected), atol=1e-5)


def test_prepare_keeps_left_and_right():
    a = np.zeros((32, 64, 3), np.uint8)
    a[:, :32] = (255, 0, 0)
    a[:, 32:] = (0, 0, 255)
    x = prepare(Image.fromarray(a), size=32)
    assert x[0, 16, 2] > 0.9 and x[2, 16, 2] < -0.9 and x[2, 16, 29] > 0.9 and x[0, 16, 29] < -0.9


def test_load_for_model_crops_away_the_border(tmp_path):
    img, _ = synthetic_frame()
    img.save(tmp_path / "frame.png")
    cropped = load_for_model(tmp_path / "frame.png", size=64)
    full = load_for_model(tmp_path / "frame.png", size=64, crop=False)
    assert cropped.shape == full.shape == (3, 64, 64)
    assert cropped.mean() > full.mean() + 0.2  # far less black border


def test_to_jpeg_bytes_is_cropped_small_and_clean(tmp_path):
    img, _ = synthetic_frame()
    exif = Image.Exif()
    exif[0x010F] = "SecretScopeCo"  # Make
    exif[0x0112] = 1
    img.resize((1280, 960)).save(tmp_path / "frame.jpg", quality=90, exif=exif, comment=b"patient 004217")
    loaded = load_image(tmp_path / "frame.jpg")
    data = to_jpeg_bytes(loaded)
    out = Image.open(io.BytesIO(data))
    assert out.format == "JPEG" and out.mode == "RGB"
    assert max(out.size) <= 512 and abs(out.width - out.height) <= 4  # the disc, not the 4:3 frame
    assert b"Exif" not in data and b"SecretScopeCo" not in data and b"004217" not in data
    assert not out.getexif()
    small = to_jpeg_bytes(Image.new("RGB", (40, 30), (10, 200, 10)), max_side=512)
    assert Image.open(io.BytesIO(small)).size == (40, 30)  # never upscaled


def test_module_constants_are_consistent():
    assert IMAGE_SUFFIXES == frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
    assert pp.MAX_PIXELS < Image.MAX_IMAGE_PIXELS  # our refusal comes before PIL's bomb warning
