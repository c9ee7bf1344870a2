"""The K-fold ensemble: one shared frozen trunk per tower, K small trainable tops.

Each fold f gives unit vectors t_f, i_f in R^D. The mean cosine over folds equals the cosine of the
concatenations T = [t_1..t_K]/sqrt(K) and I = [i_1..i_K]/sqrt(K) (both unit norm), so a single vector store
query gives the exact ensemble score, and slices of the stored vector give back every fold's own score.
"""
from __future__ import annotations

import copy
import hashlib
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.nanoclip import NanoCLIPSpec, create_clip, make_tokenizer, split_clip


def state_hash(*modules: nn.Module) -> str:
    """sha256 over names and bytes of every tensor: proves the shared trunk is identical across folds/bundles."""
    h = hashlib.sha256()
    for i, m in enumerate(modules):
        for name, t in sorted(m.state_dict().items()):
            h.update(f"{i}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class FoldEnsemble(nn.Module):
    def __init__(self, spec: NanoCLIPSpec, folds: int, seed: int = 0, classes: Sequence[str] | None = None):
        super().__init__()
        if folds < 1:
            raise ValueError("folds must be >= 1")
        clip, backbone, text_path = create_clip(spec)
        image_trunk, image_top, text_trunk, text_top = split_clip(clip, spec)
        self.spec, self.folds, self.seed = spec, folds, seed
        self.mean, self.std = backbone.mean, backbone.std
        self.text_path = text_path
        self.classes: list[str] | None = list(classes) if classes else None
        self.similarity = None  # the bundle's image-to-image similarity (retrieval/similarity.py), set by load_bundle
        self.image_trunk, self.text_trunk = image_trunk, text_trunk
        self.image_tops = nn.ModuleList()
        self.text_tops = nn.ModuleList()
        for f in range(folds):
            it, tt = copy.deepcopy(image_top), copy.deepcopy(text_top)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.fold_seed(f))
                it.proj.reset_parameters()
                tt.proj.reset_parameters()
                if self.classes:
                    it.add_classifier(len(self.classes))
            self.image_tops.append(it)
            self.text_tops.append(tt)
        self.logit_scale = nn.Parameter(torch.full((folds,), math.log(1 / 0.07)))
        self.context_length = clip.text.context_length if hasattr(clip.text, "context_length") else 77
        self.tokenizer = make_tokenizer(text_path, context_length=min(77, self.context_length or 77))
        for p in list(self.image_trunk.parameters()) + list(self.text_trunk.parameters()):
            p.requires_grad_(False)
        self.eval()

    def fold_seed(self, f: int) -> int:
        return self.seed * 1000 + f

    @property
    def dim(self) -> int:
        return self.spec.embed_dim * self.folds

    def train(self, mode: bool = True):
        """Frozen trunks stay in eval mode (BatchNorm statistics), so the shared part really is shared."""
        super().train(mode)
        self.image_trunk.eval()
        self.text_trunk.eval()
        return self

    def shared_hash(self) -> str:
        return state_hash(self.image_trunk, self.text_trunk)

    # ----------------------------------------------------------------------------------- fold-level pieces
    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.image_trunk(x)

    def text_features(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer(list(texts))
        with torch.no_grad():
            return self.text_trunk(ids)

    # ----------------------------------------------------------------------------------- ensemble encoders
    @torch.no_grad()
    def encode_images(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, K*D) concatenated unit vectors / sqrt(K), and (B, C) class probabilities averaged over folds."""
        vec, logits, _ = self.encode_images_detailed(x)
        return vec, (logits.softmax(-1).mean(0).numpy() if logits is not None else None)

    @torch.no_grad()
    def encode_images_detailed(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor | None, torch.Tensor]:
        """One trunk pass: the stored vectors, every fold's class logits (K, B, C) and the frozen trunk's
        features (what retrieval/trust.py calibrates and measures familiarity on)."""
        feats = self.image_trunk(x)
        parts, logits = [], []
        for top in self.image_tops:
            emb, pooled = top(feats)
            parts.append(F.normalize(emb, dim=-1))
            if top.classifier is not None:
                logits.append(top.classifier(pooled))
        vec = torch.cat(parts, dim=-1) / math.sqrt(self.folds)
        return vec.float().numpy(), (torch.stack(logits) if logits else None), feats

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        hidden, mask = self.text_features(texts)
        parts = [F.normalize(top(hidden, mask), dim=-1) for top in self.text_tops]
        return (torch.cat(parts, dim=-1) / math.sqrt(self.folds)).float().numpy()
