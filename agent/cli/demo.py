"""`kger demo`: the whole product offline, end to end, in a few minutes on a laptop-sized machine."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from agent.cli.common import HomeOpt, err_console, out_console, set_home
from agent.core.render import literal
from store.paths import DEFAULT_HOME

QUESTIONS = (
    "left ear: tympanic membrane with a bright cone of light",
    "closed vocal cords during phonation",
    "right nasal cavity, septum and inferior turbinate",
)


def _step(n: int, text: str) -> None:
    err_console.rule(f"[bold]{n}. {text}")


def demo(
    images: Annotated[Optional[Path], typer.Option(
        "--images", help="Use these images (ENTRep layout or a folder with cls.json beside it) instead of the synthetic gallery.")] = None,
    folds: Annotated[int, typer.Option("--folds", min=1, max=10, help="Folds of the demo ensemble.")] = 3,
    epochs: Annotated[int, typer.Option("--epochs", min=1, max=200, help="Training epochs per fold.")] = 12,
    per_class: Annotated[int, typer.Option("--per-class", min=4, max=100, help="Synthetic images per class.")] = 10,
    home: HomeOpt = None,
):
    """Generate (or take) a gallery, train a small fold ensemble, index it, ask three questions offline, write an HTML report."""
    home_dir = set_home(home)
    from agent.assistant import Assistant
    from agent.cli.ask import answer_table
    from agent.cli.thumbs import can_draw, thumbnail_strip
    from retrieval.bundle import load_bundle
    from retrieval.indexer import index_images
    from retrieval.labels import read_labels
    from store.gallery import BundleMismatchError, Gallery

    work = home_dir / "demo"
    work.mkdir(parents=True, exist_ok=True)
    _step(1, "Gallery")
    if images is None:
        from training.synthetic import make_gallery

        data = work / "synthetic"
        if not (data / "cls.json").is_file():
            make_gallery(data, per_class=per_class, seed=0)
        imgs = data / "imgs"
        err_console.print(f"[yellow]SYNTHETIC[/yellow] drawn images imitating the 7 ENTRep classes "
                          f"({per_class} each) in {imgs} — not real endoscopy.")
    else:
        imgs = images / "imgs" if (images / "imgs").is_dir() else images
        data = images if (images / "cls.json").is_file() else imgs.parent
        err_console.print(literal(f"Images: {imgs}", limit=None))
    labels_file = next((p for p in (data / "cls.json", imgs / "cls.json") if p.is_file()), None)

    bundle = work / "bundle"
    if labels_file is not None:
        _step(2, f"Training a {folds}-fold NanoCLIP ensemble")
        from training.train import TrainConfig, main as train_main

        train_main(TrainConfig(data=str(data), out=str(bundle), folds=folds, epochs=epochs, seed=0),
                   console=err_console)
    else:
        _step(2, "No labels beside the images: an untrained ensemble (pretrained towers)")
        from retrieval.export import init_bundle
        from retrieval.manifest import MANIFEST

        if not (bundle / MANIFEST).is_file():
            init_bundle(bundle, folds=folds)

    _step(3, "Indexing into store 'demo'")
    loaded = load_bundle(bundle)
    root = home_dir / "stores" / "demo"
    gallery = Gallery.open("demo", create=True)
    try:
        gallery.bind_bundle(loaded.fingerprint, loaded.path, loaded.dim)
    except BundleMismatchError:  # the demo owns its store: one made by an earlier bundle is rebuilt
        gallery.close()
        shutil.rmtree(root, ignore_errors=True)
        gallery = Gallery.open("demo", create=True)
        gallery.bind_bundle(loaded.fingerprint, loaded.path, loaded.dim)
    report = index_images(loaded.ensemble, gallery, imgs, labels=read_labels(labels_file) if labels_file else {},
                          trust=loaded.trust)
    err_console.print(f"{report.indexed} indexed, {report.present} already there, {len(report.skipped)} skipped")
    gallery.close()

    _step(4, "Asking the agent (offline planner and judge: nothing leaves this machine)")
    assistant = Assistant.open("demo", llm="offline", k=5)
    runs = []
    for q in QUESTIONS:
        ans = assistant.ask(q, kind="ask")
        out_console.print(answer_table(ans))
        if can_draw(out_console):
            strip = thumbnail_strip(ans.rows, out_console.width)
            if strip is not None:
                out_console.print(strip)
        out_console.print(f"run {ans.run_id}\n")
        runs.append(ans.run_id)

    _step(5, "Report")
    html_path = work / "report.html"
    from agent.core.report import render_batch

    html_path.write_text(render_batch([assistant.traces.get_run(r) for r in runs], title="kger demo"), encoding="utf-8")
    out_console.print(literal(f"HTML report: {html_path}", limit=None))
    out_console.print(literal(next_steps(home_dir, runs[0][:12]), limit=None))


def next_steps(home: Path, run_id: str, kger_dir: Optional[Path] = None, near: Optional[list[Path]] = None) -> str:
    """What to type next, as it is on this machine: how to reach `kger` in a new shell (`make demo` runs it
    from .venv/bin, which a new shell's PATH lacks), the home the demo used (`make demo`'s is the clone's own
    .kger, which a new shell must be given as KGER_HOME), and the ENTRep data only where it is (../shared
    beside the clone)."""
    import shlex

    kger_dir = kger_dir or Path(sys.executable).parent
    found = shutil.which("kger")
    lines = ["", "Next, on real data:"]
    if found is None or Path(found).parent.resolve() != kger_dir.resolve():
        lines += [f"  source {shlex.quote(str(kger_dir / 'activate'))}   # puts kger on PATH in this shell "
                  f"(or call {shlex.quote(str(kger_dir / 'kger'))})"]
    shared = home.expanduser().resolve() == DEFAULT_HOME.expanduser().resolve()
    if not shared:  # `make demo` gives each clone its own home: a new shell must be told where it is
        lines += [f"  export KGER_HOME={shlex.quote(str(home))}   # the demo's home: its store, runs and bundles"]
    near = near if near is not None else [Path.cwd().parent, Path(__file__).resolve().parents[3]]
    data = next((d / "shared" / "data" / "entrep" / "train" for d in near
                 if (d / "shared" / "data" / "entrep" / "train" / "imgs").is_dir()), None)
    src = shlex.quote(str(data.resolve())) if data else "ENTREP_TRAIN"
    bundle = shlex.quote(str(home / "bundles" / "entrep"))
    lines += [f"  kger train {src} --out {bundle} --folds 5",
              f"  kger index {src}/imgs --bundle {bundle}",
              '  kger ask "white discharge in the left external auditory canal"',
              "  kger chat        # a conversation, with follow-ups",
              f"  kger trace show {run_id}   # how #1 was chosen, step by step"]
    if shared:
        lines.append(f"(KGER_HOME is {home}, shared by every clone: set KGER_HOME or --home for a home of its own)")
    if data is None:
        lines.append("(ENTREP_TRAIN: your copy of the ENTRep training folder, with imgs/ and cls.json)")
    return "\n".join(lines) + "\n"
