"""NanoCLIP as an open_clip model: tower configs from the spec, side-aware pooling, the frozen/trainable split.

open_clip's `CustomTextCLIP` (timm image tower + Hugging Face text tower) is built from configs derived from
a `NanoCLIPSpec` (retrieval/spec.py), the one description of the architecture. kger then owns two things
open_clip does not have: a pooling that keeps left from right (DESIGN.md §4, "Laterality") and a clean cut
of each tower into a frozen lower part (shared by every fold) and a trainable top (one copy per fold).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from retrieval import weights as W
from retrieval.errors import InputError
from retrieval.spec import NanoCLIPSpec

__all__ = ["NanoCLIPSpec", "create_clip", "open_clip_config", "split_clip", "make_tokenizer", "POOLS"]

log = logging.getLogger("kger.nanoclip")

CONTEXT_LENGTH = 77  # text tokens at most, as CLIP; clinical captions are far shorter


# ---------------------------------------------------------------------------------------------- pooling
POOLS: dict[str, type[nn.Module]] = {}


def register_pool(cls):
    """Pools are keyed by snake_case name, as open_clip's `@register_pooler` does for text poolers."""
    POOLS[cls.key] = cls
    return cls


@register_pool
class AvgPool(nn.Module):
    """Plain global average: a frame and its mirror pool to almost the same vector (kept as the baseline)."""

    key = "avg"
    mult = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


@register_pool
class LRSplitPool(nn.Module):
    """Average the left and right halves of the feature map separately and concatenate: mirroring swaps them."""

    key = "lr_split"
    mult = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        halves = F.adaptive_avg_pool2d(x, (1, 2))  # odd widths: the middle column counts on both sides
        return torch.cat([halves[..., 0], halves[..., 1]], dim=1).flatten(1)


@contextlib.contextmanager
def _quiet_loaders():
    """open_clip warns 'initialized partially' (we load towers ourselves); transformers prints load reports."""
    import transformers

    root = logging.getLogger()
    level, tf_level = root.level, transformers.logging.get_verbosity()
    root.setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        root.setLevel(level)
        transformers.logging.set_verbosity(tf_level)


def open_clip_config(spec: NanoCLIPSpec, timm_name: str, text_path: str) -> dict:
    """open_clip's `CustomTextCLIP` arguments for this spec and its resolved towers.

    kger owns pooling and projection (the trunk hands back its last feature map) and loads every weight
    from local files itself, so open_clip is asked for architecture only."""
    return {
        "embed_dim": spec.embed_dim,
        "vision_cfg": {"timm_model_name": timm_name, "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "none", "image_size": spec.image_size},
        "text_cfg": {"hf_model_name": text_path, "hf_tokenizer_name": text_path, "hf_model_pretrained": True,
                     "hf_pooler_type": "mean_pooler", "hf_proj_type": "linear", "context_length": CONTEXT_LENGTH},
    }


def create_clip(spec: NanoCLIPSpec):
    """Build the open_clip `CustomTextCLIP` with pretrained towers loaded from local files only."""
    from open_clip.model import CustomTextCLIP

    if spec.pool not in POOLS:
        raise InputError(f"unknown pool {spec.pool!r}; known: {', '.join(POOLS)}")
    backbone = W.image_backbone(spec.image_backbone)
    text_path = str(W.resolve_text_backbone(spec.text_backbone))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _quiet_loaders():
        model = CustomTextCLIP(**open_clip_config(spec, backbone.timm_name, text_path))
    W.load_image_weights(model.visual.trunk, backbone)
    return model, backbone, text_path


# ---------------------------------------------------------------------------------------------- split
def is_vit(trunk: nn.Module) -> bool:
    """timm's VisionTransformer family (DINOv2, BiomedCLIP's tower, ...): tokens instead of a feature map."""
    return all(hasattr(trunk, a) for a in ("patch_embed", "_pos_embed", "blocks", "norm", "num_prefix_tokens"))


def is_convnet(trunk: nn.Module) -> bool:
    """timm's EfficientNet / MobileNet family: stem, block stages, conv head."""
    return all(hasattr(trunk, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"))


class ImageTrunk(nn.Module):
    """The frozen lower image layers (stem + first blocks): computed once for all folds."""

    def __init__(self, trunk: nn.Module, cut: int):
        super().__init__()
        if is_vit(trunk):
            # keep the patch/position embedding as timm wrote it; the blocks above `cut` belong to the tops
            trunk.blocks = nn.Sequential(*list(trunk.blocks)[:cut])
            trunk.norm = nn.Identity()
            self.vit = trunk
        else:
            self.stem = nn.Sequential(trunk.conv_stem, trunk.bn1)
            self.blocks = nn.Sequential(*list(trunk.blocks)[:cut])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "vit"):
            v = self.vit
            return v.blocks(v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x)))))
        return self.blocks(self.stem(x))


class TokensToMap(nn.Module):
    """A ViT's final norm, then its patch tokens laid back on their grid, so any pool sees left from right."""

    def __init__(self, norm: nn.Module, prefix_tokens: int, grid: tuple[int, int]):
        super().__init__()
        self.norm, self.prefix, self.grid = norm, prefix_tokens, tuple(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)[:, self.prefix:]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.grid)


class ImageTop(nn.Module):
    """One fold's trainable image layers: last blocks, conv head (or ViT norm), side-aware pool, projection."""

    def __init__(self, trunk: nn.Module, cut: int, pool: str, embed_dim: int):
        super().__init__()
        self.blocks = nn.Sequential(*list(trunk.blocks)[cut:])
        if is_vit(trunk):
            self.head = TokensToMap(trunk.norm, trunk.num_prefix_tokens, trunk.patch_embed.grid_size)
        else:
            self.head = nn.Sequential(trunk.conv_head, trunk.bn2)
        self.pool = POOLS[pool]()
        self.pooled_dim = trunk.num_features * self.pool.mult
        self.proj = nn.Linear(self.pooled_dim, embed_dim, bias=False)
        self.classifier: nn.Linear | None = None

    def add_classifier(self, n_classes: int) -> None:
        self.classifier = nn.Linear(self.pooled_dim, n_classes)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projected embedding, pooled features); not normalised, so training sees the raw geometry."""
        pooled = self.pool(self.head(self.blocks(feats)))
        return self.proj(pooled), pooled


def _bert_layers(transformer: nn.Module) -> nn.ModuleList:
    encoder = getattr(transformer, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise W.WeightsUnavailable(f"text backbone {type(transformer).__name__} has no encoder.layer list")
    return layers


class TextTrunk(nn.Module):
    """The frozen lower text layers (embeddings + first transformer layers)."""

    def __init__(self, transformer: nn.Module, cut: int, pad_token_id: int):
        super().__init__()
        self.embeddings = transformer.embeddings
        self.layers = nn.ModuleList(list(_bert_layers(transformer))[:cut])
        self.pad_token_id = pad_token_id

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (ids != self.pad_token_id).long()
        hidden = self.embeddings(input_ids=ids)
        return run_layers(self.layers, hidden, mask), mask


def run_layers(layers, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Run transformer layers with an additive padding mask (matches the full model exactly; tested)."""
    additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
    for layer in layers:
        out = layer(hidden, attention_mask=additive)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class TextTop(nn.Module):
    """One fold's trainable text layers: the last transformer layers, mean pooling, projection."""

    def __init__(self, transformer: nn.Module, cut: int, width: int, embed_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(list(_bert_layers(transformer))[cut:])
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = run_layers(self.layers, hidden, mask)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return self.proj((hidden * m).sum(1) / m.sum(1).clamp(min=1.0))


def split_clip(model, spec: NanoCLIPSpec) -> tuple[ImageTrunk, ImageTop, TextTrunk, TextTop]:
    """Cut the open_clip model into shared trunks and one (template) top per tower."""
    trunk = model.visual.trunk
    if not (is_convnet(trunk) or is_vit(trunk)):
        raise W.WeightsUnavailable(
            f"image architecture {type(trunk).__name__} cannot be split into a shared trunk and fold tops "
            "(kger supports timm's EfficientNet/MobileNet and VisionTransformer families)"
        )
    n_stages = len(trunk.blocks)
    if not 0 <= spec.image_trainable_stages <= n_stages:
        raise InputError(f"image_trainable_stages must be in 0..{n_stages}")
    icut = n_stages - spec.image_trainable_stages
    transformer = model.text.transformer
    n_layers = len(_bert_layers(transformer))
    if not 0 <= spec.text_trainable_layers <= n_layers:
        raise InputError(f"text_trainable_layers must be in 0..{n_layers}")
    tcut = n_layers - spec.text_trainable_layers
    pad = model.text.config.pad_token_id or 0
    width = model.text.config.hidden_size
    image_top = ImageTop(trunk, icut, spec.pool, spec.embed_dim)  # before the trunk is cut (ViT)
    return (
        ImageTrunk(trunk, icut),
        image_top,
        TextTrunk(transformer, tcut, pad),
        TextTop(transformer, tcut, width, spec.embed_dim),
    )


def make_tokenizer(text_path: str, context_length: int = CONTEXT_LENGTH) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's HF tokenizer, but padded to the longest text in the batch instead of to 77 tokens:
    a short clinical query then costs a fraction of the transformer work (padding is masked anyway)."""
    from open_clip.tokenizer import HFTokenizer

    hf = HFTokenizer(text_path, context_length=context_length).tokenizer

    def tokenize(texts: list[str]) -> torch.Tensor:
        return hf(list(texts), padding="longest", truncation=True, max_length=context_length,
                  return_tensors="pt")["input_ids"]

    return tokenize
