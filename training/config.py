"""`TrainConfig`: every training setting in one frozen block, and the one way to override it.

Kept apart from train.py (no torch here) so `kger train` reads its defaults and parses `--set KEY=VALUE` with
the same code as `python -m training.train --key=value`. The model is a `NanoCLIPSpec` inside the config, not
a copy of its fields; its fields are still set by their plain names (`--pool avg`, `--set embed_dim=128`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable

from retrieval.errors import KgerError
from retrieval.spec import NanoCLIPSpec


class TrainError(KgerError):
    """A training run that cannot go ahead as asked; one line that says what to do."""


# -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    # I/O
    data: str = ""  # ENTRep folder, folder-per-class, or CSV (image,text[,label])
    out: str = "out/bundle"  # bundle directory; a rerun with the same settings resumes there
    # data
    folds: int = 10  # K; clamped to the images of the smallest class; 1 = one model on everything
    val_fraction: float = 0.0  # K=1 only: grouped, stratified share held out to pick the epoch (0 = none)
    views: int = 8  # cached views per image: plain, mirrored, then augmented (alternately mirrored)
    flip: bool = True  # mirrored views with the side swapped; pool='avg' cannot use them, so off there
    templates: bool = True  # add the lexicon's class captions to every labelled image
    desc_prob: float = 0.5  # chance a step draws an image's own description (if any) over a class caption
    # model: towers, pool, trainable layers, embedding size (retrieval/spec.py); set its fields by name
    spec: NanoCLIPSpec = field(default_factory=NanoCLIPSpec)
    # optimizer
    epochs: int = 50  # passes over a fold's training images (one random cached view each)
    batch_size: int = 32
    lr: float = 1e-2  # projections, classifier head, temperature
    backbone_lr: float = 1e-3  # trainable layers of both towers
    weight_decay: float = 0.05
    warmup_steps: int = 10  # linear warm-up, then cosine decay
    min_lr_ratio: float = 0.1  # decay to lr * this at the last step
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    # loss
    cls_weight: float = 0.5  # weight of the 7-way classifier cross-entropy on the pooled features
    class_pos_weight: float = 0.5  # target weight of a description and an image sharing only its class (own: 1)
    hard_margin: float = 0.1  # extra cosine margin for opposite-side and open/closed negatives
    label_smoothing: float = 0.1
    select_by: str = "nDCG@10"  # validation metric that picks each fold's best epoch (ties: head accuracy)
    bn_train: bool = False  # update BatchNorm statistics in the fold tops (tiny batches: keep off)
    # system
    seed: int = 0
    threads: int = 0  # torch threads (0 = torch's default)
    progress: bool = True  # progress bars on stderr


PRESETS: dict[str, dict[str, Any]] = {
    # A CPU-sized smoke run, like nanoGPT's train_shakespeare_char.py: seconds per fold, proves the plumbing.
    "debug": dict(folds=2, views=2, epochs=2, batch_size=16),
}
SELECTABLE = ("R@1", "R@5", "R@10", "MRR", "nDCG@10", "acc")
# -----------------------------------------------------------------------------------------------------------

_TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"spec"}
_SPEC_KEYS = {f.name for f in fields(NanoCLIPSpec)}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def make_config(base: TrainConfig | None = None, preset: str | None = None, **overrides) -> TrainConfig:
    """Defaults, then a preset name or JSON file, then keyword overrides; unknown keys are an error.

    A key is a TrainConfig field or a NanoCLIPSpec field (which lands in `spec`); a JSON file may also
    give `"spec": {...}`, as a bundle manifest records it. String values are parsed to the default's type."""
    cfg = base or TrainConfig()
    layers: list[dict] = []
    if preset:
        if preset in PRESETS:
            layers.append(PRESETS[preset])
        elif Path(preset).is_file():
            try:
                layers.append(json.loads(Path(preset).read_text()))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TrainError(f"--config {preset} is not valid JSON ({e})") from None
        else:
            raise TrainError(f"--config {preset!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    layers.append(overrides)
    for layer in layers:
        layer = dict(layer)
        nested = layer.pop("spec", None) or {}
        if not isinstance(nested, dict):
            raise TrainError("the 'spec' setting must be an object of model settings")
        unknown = sorted((set(layer) - _TRAIN_KEYS - _SPEC_KEYS) | (set(nested) - _SPEC_KEYS))
        if unknown:
            raise TrainError(f"unknown training setting(s): {', '.join(unknown)}")
        model = {**nested, **{k: v for k, v in layer.items() if k in _SPEC_KEYS}}
        spec = replace(cfg.spec, **{k: _coerce(k, v, getattr(cfg.spec, k)) for k, v in model.items()})
        cfg = replace(cfg, spec=spec, **{k: _coerce(k, v, getattr(cfg, k)) for k, v in layer.items()
                                         if k in _TRAIN_KEYS})
    return cfg


def parse_settings(items: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (as `kger train --set` takes them) to a dict for `make_config`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TrainError(f"--set takes KEY=VALUE, not {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _coerce(key: str, value, default):
    """Check a value against the default's type, as nanoGPT's configurator does (strings are parsed)."""
    kind = type(default)
    if isinstance(value, str) and kind is not str:
        if kind is bool:
            low = value.lower()
            if low not in _TRUE + _FALSE:
                raise TrainError(f"--{key} wants true or false, not {value!r}")
            return low in _TRUE
        try:
            return kind(value)
        except ValueError:
            raise TrainError(f"--{key} wants a {kind.__name__}, not {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TrainError(f"--{key} wants a {kind.__name__}, not {value!r}")
    return value
