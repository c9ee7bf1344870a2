"""`kger index` and `kger search`: build a gallery from images, query it by text or by image."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from agent.cli.common import (
    ChromaUrlOpt, HomeOpt, JsonOpt, KOpt, StoreOpt, err_console, open_gallery, out_console, print_json, progress,
    set_home, start,
)
from agent.core.render import line, literal


def _default_labels(images: Path) -> Optional[Path]:
    """ENTRep layout: imgs/ next to cls.json."""
    for cand in (images / "cls.json", images.parent / "cls.json"):
        if images.is_dir() and cand.is_file():
            return cand
    return None


def index(
    images: Annotated[Path, typer.Argument(help="Folder of images and videos (searched recursively), or one file.")],
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle directory (kger bundle init / kger train).")],
    labels: Annotated[Optional[Path], typer.Option(
        "--labels", help="cls.json (image -> class) or CSV (image,label). Default: a cls.json beside the images.")] = None,
    no_labels: Annotated[bool, typer.Option("--no-labels", help="Store no labels (a blind gallery; the classifier head still predicts).")] = False,
    store: StoreOpt = "default",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=512, help="Images encoded per batch.")] = 16,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each stored batch to stderr.")] = False,
    chroma_url: ChromaUrlOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
    every: Annotated[str, typer.Option("--every", help="Videos: keep one frame every this long (1s, 0.5s, 500ms).")] = "1s",
    ray: Annotated[bool, typer.Option("--ray", help="Embed on Ray (kger[scale]) into the --chroma-url server.")] = False,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", envvar="RAY_ADDRESS", help="Ray cluster to join (ray://HOST:10001, auto) \\[default: a local runtime].")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=1024, help="With --ray: actors, each holding one ensemble.")] = 2,
):
    """Index images and videos (mp4, avi, mov, mkv) into a store: idempotent and resumable (ids are content hashes).

    Broken files are reported and skipped; a rerun after a crash encodes only what is missing.
    """
    home_dir = set_home(home)
    if verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from retrieval.bundle import load_bundle
    from retrieval.indexer import index_images
    from retrieval.labels import read_labels

    from agent.cli.checks import images_path

    images_path(images)
    if no_labels and labels:
        raise typer.BadParameter("--labels and --no-labels exclude each other")
    from retrieval.video import parse_every

    try:
        every_s = parse_every(every)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if ray and not chroma_url:
        raise typer.BadParameter("--ray writes from many processes: give a Chroma server with --chroma-url (or KGER_CHROMA_URL)")
    labels = None if no_labels else (labels or _default_labels(images))
    label_map = read_labels(labels) if labels else {}
    if labels:
        err_console.print(literal(f"Labels: {len(label_map)} from {labels}"))
    with err_console.status("Loading bundle..."):
        loaded = load_bundle(bundle)
    gallery = open_gallery(store, chroma_url, create=True)
    gallery.bind_bundle(loaded.fingerprint, loaded.path, loaded.dim)
    with progress(disable=False) as bar:
        task = bar.add_task("Indexing", total=None)
        hooks = dict(
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
            on_skip=lambda p, why: err_console.print(line("[yellow]skipped[/yellow] ", literal(f"{p}: {why}", newlines=False))),
            every=every_s, frames_dir=home_dir / "frames",
        )
        if ray:
            from agent.cli.ray_index import index_on_ray

            report = index_on_ray(images, bundle, store, chroma_url, ray_address, workers, label_map,
                                  batch_size, hooks)
        else:
            report = index_images(loaded.ensemble, gallery, images, labels=label_map, batch_size=batch_size,
                                  trust=loaded.trust, on_partial=lambda p, note: err_console.print(line(
                                      "[yellow]partly indexed[/yellow] ", literal(f"{p}: {note}", newlines=False))),
                                  **hooks)
    summary = {
        "store": store, "indexed": report.indexed, "already_present": report.present,
        "skipped": [{"path": p, "reason": r} for p, r in report.skipped],
        "partial": [{"path": p, "stopped": note} for p, note in report.partial],
        "duplicates": [{"path": p, "same_as": s} for p, s in report.duplicates],
        "count": gallery.count(), "bundle": loaded.fingerprint, "trusted_predictions": report.trusted,
    }
    if json_out:
        print_json(summary)
    else:
        out_console.print(literal(
            f"Store '{store}': {report.indexed} indexed, {report.present} already present, "
            f"{len(report.skipped)} skipped, {len(report.duplicates)} duplicate files; {summary['count']} images in all."))
        out_console.print(f"Trusted predicted classes: {report.trusted} of {report.indexed} newly indexed images "
                          "(the others' predictions are shown but never filtered on)")
        err_console.print(f'Next: kger search "left ear, tympanic membrane" --store {store}')


def results_table(results, title: Text) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("#", "image", "label", "score"):
        t.add_column(col, justify="right" if col in ("#", "score") else "left")
    for r in results:
        mark = "" if r.trusted else "?"
        label = r.label or (f"{r.predicted}{mark} ({r.predicted_prob:.2f})" if r.predicted else "-")
        t.add_row(str(r.rank), literal(r.name), literal(label), f"{r.score:.3f}")
    return t


def search(
    text: Annotated[Optional[str], typer.Argument(help="A clinical description, e.g. 'left ear, dull tympanic membrane'.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Find images like this one instead.")] = None,
    k: KOpt = 10,
    store: StoreOpt = "default",
    chroma_url: ChromaUrlOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Retrieval only (no judge, no fusion): the ensemble's ranking, with per-fold scores in --json."""
    start(home, k=k)  # k within agent/core/limits.py's bound, or one line naming it
    if (text is None) == (image is None):
        raise typer.BadParameter("give either TEXT or --image PATH")
    from agent.cli.checks import image_file
    from agent.opening import open_searcher
    from retrieval.candidate import TOOL_FIELDS

    if image is not None:
        image_file(image)
    with err_console.status("Loading bundle and store..."):
        searcher = open_searcher(store, chroma_url)
    try:
        results = searcher.image(image, k=k) if image is not None else searcher.text(text, k=k)
    finally:
        searcher.gallery.close()
    if json_out:
        print_json({"query": text, "image": str(image) if image else None, "store": store,
                    "bundle": searcher.bundle.fingerprint,
                    "results": [r.model_dump(exclude=TOOL_FIELDS) for r in results]})
    else:
        title = literal(f"Top {len(results)} for {text!r}" if text else f"Images like {image}")
        out_console.print(results_table(results, title))
