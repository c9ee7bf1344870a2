"""`NanoCLIPSpec`: the one description of a NanoCLIP architecture (no torch here, so configs can import it).

A bundle's manifest stores it, `kger bundle init` and `kger train` build it, and `nanoclip.open_clip_config`
derives open_clip's tower configs from it: there is no second source (no JSON model config to keep in step).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class NanoCLIPSpec:
    """Everything needed to rebuild the architecture; stored in the bundle manifest."""

    image_backbone: str = "efficientnet_lite0"  # packaged name or 'timm:ARCH=PATH'
    text_backbone: str = "minilm"  # 'minilm' or a local Hugging Face model dir
    pool: str = "lr_split"  # 'lr_split' (side-aware) or 'avg' (the baseline that cannot see sides)
    image_trainable_stages: int = 1  # last N block stages of the image trunk trained per fold (+ conv head)
    text_trainable_layers: int = 1  # last N transformer layers trained per fold
    embed_dim: int = 64
    image_size: int = 224

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NanoCLIPSpec":
        """Unknown keys are dropped: manifests written before a field was removed still load."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
