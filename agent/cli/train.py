"""`kger train`: the training module behind a command (imported only when this command runs)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agent.cli.common import HomeOpt, JsonOpt, err_console, out_console, print_json, set_home


def _coerce(cfg_cls, key: str, raw: str):
    import dataclasses

    types = {f.name: f.type for f in dataclasses.fields(cfg_cls)}
    default = {f.name: f.default for f in dataclasses.fields(cfg_cls)}
    if key not in types:
        raise typer.BadParameter(f"unknown training setting {key!r}; see training/train.py TrainConfig")
    d = default[key]
    if isinstance(d, bool):
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise typer.BadParameter(f"{key} takes true or false, not {raw!r}")
        return raw.lower() in ("true", "1", "yes")
    try:
        return type(d)(raw) if d is not None else raw
    except ValueError:
        raise typer.BadParameter(f"{key} takes a {type(d).__name__}, not {raw!r}") from None


def train(
    data: Annotated[Path, typer.Argument(help="ENTRep folder (imgs/ + cls.json and/or t2i.json), a folder per class, or a CSV (image,text[,label]).")],
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write (a rerun resumes there).")],
    folds: Annotated[int, typer.Option("--folds", min=1, max=64, help="K folds of the ensemble (1 = one model on everything).")] = 10,
    epochs: Annotated[int, typer.Option("--epochs", min=1, max=10000, help="Epochs per fold.")] = 40,
    seed: Annotated[int, typer.Option("--seed", help="Seed for folds, augmentation and initialisation.")] = 0,
    pool: Annotated[str, typer.Option("--pool", help="lr_split (side-aware) | avg (baseline)")] = "lr_split",
    image_backbone: Annotated[str, typer.Option("--image-backbone", help="efficientnet_lite0 | mobilenetv2 | timm:ARCH=PATH")] = "efficientnet_lite0",
    text_backbone: Annotated[str, typer.Option("--text-backbone", help="minilm | /local/hf-model-dir")] = "minilm",
    setting: Annotated[Optional[list[str]], typer.Option("--set", help="Any other TrainConfig field, KEY=VALUE (repeatable), e.g. --set lr=1e-3.")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Train a K-fold NanoCLIP ensemble and write it as a bundle (per-fold metrics in its manifest).

    Safe to interrupt: finished folds are kept and a rerun with the same settings resumes.
    """
    set_home(home)
    if not data.exists():
        raise FileNotFoundError(f"no training data at {data}")
    from training.train import TrainConfig, main

    overrides = {}
    for item in setting or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set takes KEY=VALUE, not {item!r}")
        overrides[key.strip()] = _coerce(TrainConfig, key.strip(), raw.strip())
    cfg = TrainConfig(data=str(data), out=str(out), folds=folds, epochs=epochs, seed=seed, pool=pool,
                      image_backbone=image_backbone, text_backbone=text_backbone, **overrides)
    manifest = main(cfg, console=err_console)
    from retrieval.export import export_bundle

    with err_console.status("Exporting the query-time towers (ONNX)..."):
        manifest["export"] = export_bundle(out)
    if json_out:
        print_json(manifest)
    else:
        out_console.print(f"Bundle {manifest['fingerprint']} written to {out}.")
        err_console.print(f"Next: kger index IMAGES --bundle {out}")
