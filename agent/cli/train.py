"""`kger train`: the training module behind a command (torch is imported only when this command runs).

Defaults and `--set` parsing come from training/config.py (no torch), the same code as
`python -m training.train --key=value`: one default per setting, one parser.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agent.cli.common import (
    HomeOpt, ImagePoolOpt, JsonOpt, OldPoolOpt, err_console, image_pool, out_console, print_json, set_home,
)
from agent.core.render import literal
from retrieval.spec import NanoCLIPSpec
from training.config import TrainConfig, TrainError, make_config, parse_settings


def train(
    data: Annotated[Path, typer.Argument(help="ENTRep folder (imgs/ + cls.json and/or t2i.json), a folder per class, or a CSV (image,text[,label]).")],
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write (a rerun resumes there).")],
    folds: Annotated[int, typer.Option("--folds", min=1, max=64, help="K folds of the ensemble (1 = one model on everything).")] = TrainConfig.folds,
    epochs: Annotated[int, typer.Option("--epochs", min=1, max=10000, help="Epochs per fold.")] = TrainConfig.epochs,
    seed: Annotated[int, typer.Option("--seed", help="Seed for folds, augmentation and initialisation.")] = TrainConfig.seed,
    pool: ImagePoolOpt = NanoCLIPSpec.pool,
    old_pool: OldPoolOpt = None,
    image_backbone: Annotated[str, typer.Option("--image-backbone", help="efficientnet_lite0 | mobilenetv2 | timm:ARCH=PATH")] = NanoCLIPSpec.image_backbone,
    text_backbone: Annotated[str, typer.Option("--text-backbone", help="minilm | /local/hf-model-dir")] = NanoCLIPSpec.text_backbone,
    setting: Annotated[Optional[list[str]], typer.Option("--set", help="Any other TrainConfig or NanoCLIPSpec field, KEY=VALUE (repeatable), e.g. --set lr=1e-3.")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Train a K-fold NanoCLIP ensemble and write it as a bundle (per-fold metrics in its manifest).

    Safe to interrupt: finished folds are kept and a rerun with the same settings resumes.
    """
    set_home(home)
    pool = image_pool(pool, old_pool)
    if not data.exists():
        raise FileNotFoundError(f"no training data at {data}")
    try:
        options = dict(data=str(data), out=str(out), folds=folds, epochs=epochs, seed=seed, pool=pool,
                       image_backbone=image_backbone, text_backbone=text_backbone)
        cfg = make_config(**{**options, **parse_settings(setting or [])})
    except TrainError as e:  # a bad setting is a usage error (exit 2), like a bad option
        raise typer.BadParameter(str(e), param_hint="--set") from None
    from training.train import main

    manifest = main(cfg, console=err_console)
    from retrieval.export import export_bundle

    with err_console.status("Exporting the query-time towers (ONNX)..."):
        manifest["export"] = export_bundle(out)
    if json_out:
        print_json(manifest)
    else:
        out_console.print(literal(f"Bundle {manifest['fingerprint']} written to {out}.", limit=None))
        err_console.print(literal(f"Next: kger index IMAGES --bundle {out}", limit=None))
