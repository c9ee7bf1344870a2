"""`kger bundle ...`: create and inspect model bundles."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.cli.common import (
    HomeOpt, ImagePoolOpt, JsonOpt, OldPoolOpt, err_console, image_pool, out_console, print_json, set_home,
)
from agent.core.render import literal
from retrieval.spec import NanoCLIPSpec

app = typer.Typer(help="Create and inspect model bundles (a manifest + per-fold weights).", no_args_is_help=True)


@app.command("init")
def init(
    out: Annotated[Path, typer.Option("--out", help="Directory to create the bundle in.")],
    folds: Annotated[int, typer.Option("--folds", min=1, max=64, help="Number of ensemble folds (K).")] = 10,
    image_backbone: Annotated[str, typer.Option(
        "--image-backbone", help="efficientnet_lite0 | mobilenetv2 | timm:ARCH=/local/checkpoint.pth")] = NanoCLIPSpec.image_backbone,
    text_backbone: Annotated[str, typer.Option(
        "--text-backbone", help="minilm | /path/to/local/hf-model-dir")] = NanoCLIPSpec.text_backbone,
    pool: ImagePoolOpt = NanoCLIPSpec.pool,
    old_pool: OldPoolOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the per-fold projections.")] = 0,
    export: Annotated[bool, typer.Option(
        "--export/--no-export", help="Also write the ONNX query-time towers (fast, torch-free search).")] = True,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """An untrained ensemble: pretrained towers, seeded projections.

    Good for image-to-image search and for trying the pipeline; train one with [bold]kger train[/bold].
    """
    set_home(home)
    pool = image_pool(pool, old_pool)
    from retrieval.export import init_bundle

    with err_console.status(f"Building a {folds}-fold bundle..."):
        manifest = init_bundle(out, folds=folds, seed=seed, image_backbone=image_backbone,
                               text_backbone=text_backbone, pool=pool, export=export)
    if json_out:
        print_json(manifest)
    else:
        out_console.print(literal(f"Bundle {manifest['fingerprint']} written to {out} ({folds} folds, {manifest['dim']}-d).", limit=None))
        err_console.print(literal(f"Next: kger index IMAGES --bundle {out}", limit=None))


@app.command("export")
def export(
    path: Annotated[Path, typer.Argument(help="Bundle directory.")],
    json_out: JsonOpt = False,
):
    """Write the query-time towers for onnxruntime into the bundle (search, ask, chat, batch and eval then
    start without torch). [bold]kger train[/bold] and [bold]kger bundle init[/bold] already do this."""
    from retrieval.export import export_bundle

    with err_console.status(f"Exporting {path}..."):
        entry = export_bundle(path)
    if json_out:
        print_json(entry)
    else:
        out_console.print(f"Exported {path}: {', '.join(entry['files'])} (bundle {entry['fingerprint']}).")


@app.command("show")
def show(path: Annotated[Path, typer.Argument(help="Bundle directory.")], json_out: JsonOpt = False):
    """Print a bundle's manifest: towers, folds, hashes, metrics."""
    from retrieval.manifest import read_manifest

    m = read_manifest(path)
    if json_out:
        print_json(m)
        return
    spec = m["spec"]
    out_console.print(literal(path, style="bold", limit=None), f" fingerprint {m['fingerprint']}  ({'trained' if m['trained'] else 'untrained'})")
    out_console.print(f"  image: {spec['image_backbone']} (pool {spec['pool']}, {spec['image_trainable_stages']} trainable stages)")
    out_console.print(f"  text:  {spec['text_backbone']} ({spec['text_trainable_layers']} trainable layers)")
    out_console.print(f"  folds: {m['folds']} x {m['embed_dim']}-d = {m['dim']}-d; shared trunk {m['shared_hash'][:16]}")
    exp = m.get("export") or {}
    state = "none (kger bundle export)" if not exp else (
        "current" if exp.get("fingerprint") == m["fingerprint"] else "stale (kger bundle export)")
    out_console.print(f"  onnx export: {state}")
    if m.get("classes"):
        out_console.print(f"  classifier: {', '.join(m['classes'])}")
    for key, value in (m.get("metrics") or {}).get("mean", {}).items():
        out_console.print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
