"""Train a NanoCLIP K-fold ensemble and write it as a bundle.

Commands (run from the project root):

    python -m training.train ../shared/data/entrep/train --out /tmp/B --folds 5
    python -m training.train DATA --out DIR --folds 1 --val_fraction=0.2   # one model, 20 % held out
    python -m training.train DATA --out DIR --config=debug                  # CPU smoke run (seconds)
    python -m training.train DATA --out DIR --config=my.json --lr=5e-4      # a JSON file, then overrides
    kger train DATA --out DIR --folds 10 --epochs 30                        # the same, from the CLI

DATA is an ENTRep folder (imgs/ + cls.json and/or t2i.json), a folder per class, or a CSV (image,text[,label]).
Overrides apply in order: the defaults (training/config.py), `--config` (a preset name or a JSON file), then `--key=value`;
unknown keys and values of the wrong type are refused.

What it does, top to bottom: read the data; deal grouped, stratified folds; build the ensemble (pretrained
frozen trunks shared by all folds); run the frozen trunks once over a fixed set of augmented views per image
and over every caption (cache.py); then per fold train the image top + text top + projections + classifier
head, keep the best epoch by validation, write the fold and a partial manifest at once. A rerun with the same
settings resumes after the last finished fold. The manifest, with per-fold metrics, is written last.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import torch
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from retrieval.bundle import load_fold, save_bundle, write_fold
from retrieval.ensemble import FoldEnsemble
from retrieval.errors import KgerError
from retrieval.manifest import read_manifest
from retrieval.metrics import summarize
from training.augment import AugmentConfig
from training.cache import TextCache, ViewCache, build_text_cache, build_view_cache, view_texts
from training.calibrate import calibrate, thresholds_text
from training.config import PRESETS, SELECTABLE, TrainConfig, TrainError, make_config  # noqa: F401 (PRESETS: re-exported)
from training.data import Dataset, load_dataset
from training.folds import assign_folds, clamp_folds, holdout, split
from training.loss import classifier_loss, hard_negatives, multi_positive_loss, positive_weights
from training.progress import PROGRESS, resume_state, write_progress
from training.simfit import fit_similarity

# Settings that do not change the weights: a resumed run may differ in these.
_NOT_IN_KEY = ("data", "out", "threads", "progress")


# ----------------------------------------------------------------------------------------------- schedule
def get_lr(step: int, total: int, base: float, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to base * min_lr_ratio; pure, like nanoGPT's."""
    if step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    coeff = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return base * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * coeff)


def configure_optimizer(image_top, text_top, scale: torch.nn.Parameter, cfg: TrainConfig) -> torch.optim.AdamW:
    """Heads (projections, classifier, temperature) at lr; pretrained layers at backbone_lr; no decay on
    norms, biases or the temperature."""
    head_names = ("proj.", "classifier.")
    groups: dict[tuple[bool, bool], list] = {}
    for prefix, module in (("image", image_top), ("text", text_top)):
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            head = name.startswith(head_names)
            decay = p.ndim >= 2
            groups.setdefault((head, decay), []).append(p)
    param_groups = [
        {"params": ps, "base_lr": cfg.lr if head else cfg.backbone_lr, "weight_decay": cfg.weight_decay if decay else 0.0}
        for (head, decay), ps in sorted(groups.items())
    ]
    param_groups.append({"params": [scale], "base_lr": cfg.lr, "weight_decay": 0.0})
    for g in param_groups:
        g["lr"] = g["base_lr"]
    return torch.optim.AdamW(param_groups, betas=(0.9, 0.98))


# --------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def evaluate(ens: FoldEnsemble, f: int, val: Sequence[int], views: ViewCache, texts: TextCache,
             source: Callable | None = None) -> dict[str, float]:
    """Text -> image on the held-out images: every caption of a held-out image is a query, the relevant
    images are the held-out ones that share it; plus class accuracy of the head on their plain view."""
    image_top, text_top = ens.image_tops[f], ens.text_tops[f]
    image_top.eval()
    text_top.eval()
    source = source or views.features
    n = torch.as_tensor(list(val), dtype=torch.long)
    emb, pooled = image_top(source(n, torch.zeros_like(n)))
    emb = torch.nn.functional.normalize(emb, dim=-1)
    queries = sorted({t for i in val for t in views.captions(i, 0)})
    hidden, mask = texts.batch(queries)
    q = torch.nn.functional.normalize(text_top(hidden, mask), dim=-1)
    order = (q @ emb.T).argsort(dim=1, descending=True)
    val_ids = list(val)
    results = [([val_ids[j] for j in row.tolist()], {i for i in val_ids if t in views.captions(i, 0)})
               for t, row in zip(queries, order)]
    out = summarize(results)
    labels = views.labels[n, 0]
    known = labels >= 0
    if image_top.classifier is not None and bool(known.any()):
        pred = image_top.classifier(pooled).argmax(-1)
        out["acc"] = float((pred[known] == labels[known]).float().mean())
    out["n_val"] = len(val_ids)
    return out


# ---------------------------------------------------------------------------------------------- one fold
def set_mode(ens: FoldEnsemble, f: int, training: bool, bn_train: bool) -> None:
    for top in (ens.image_tops[f], ens.text_tops[f]):
        top.train(training)
        if training and not bn_train:
            for m in top.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()


def fit_fold(
    ens: FoldEnsemble,
    f: int,
    train: Sequence[int],
    val: Sequence[int],
    views: ViewCache,
    texts: TextCache,
    cfg: TrainConfig,
    *,
    source: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[int, float, dict], None] | None = None,
) -> dict:
    """Train fold f's tops in place and keep its best epoch; `source(n, v)` gives trunk features (the cache
    unless a benchmark recomputes them)."""
    source = source or views.features
    image_top, text_top = ens.image_tops[f], ens.text_tops[f]
    scale = torch.nn.Parameter(ens.logit_scale.detach()[f].clone())
    opt = configure_optimizer(image_top, text_top, scale, cfg)
    gen = torch.Generator().manual_seed(ens.fold_seed(f))
    torch.manual_seed(ens.fold_seed(f))  # dropout in the text layer
    train_t = torch.as_tensor(list(train), dtype=torch.long)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total, step = cfg.epochs * steps_per_epoch, 0
    best: dict | None = None
    for epoch in range(1, cfg.epochs + 1):
        set_mode(ens, f, True, cfg.bn_train)
        perm = train_t[torch.randperm(len(train_t), generator=gen)]
        losses = []
        for b in range(steps_per_epoch):
            n = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            v = torch.randint(views.n_views, (len(n),), generator=gen)
            pairs = list(zip(n.tolist(), v.tolist()))
            text_ids = [draw_caption(views, i, j, cfg.desc_prob, gen) for i, j in pairs]
            classes = [views.view_class(i, j) for i, j in pairs]
            emb, pooled = image_top(source(n, v))
            temb = text_top(*texts.batch(text_ids))
            weights = positive_weights([views.captions(i, j) for i, j in pairs], classes, text_ids, classes,
                                       cfg.class_pos_weight)
            loss = multi_positive_loss(emb, temb, scale, weights, hard_negatives(classes, classes), cfg.hard_margin)
            if image_top.classifier is not None and cfg.cls_weight:
                loss = loss + cfg.cls_weight * classifier_loss(image_top.classifier(pooled), views.labels[n, v],
                                                               cfg.label_smoothing)
            for g in opt.param_groups:
                g["lr"] = get_lr(step, total, g["base_lr"], cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            step += 1
            if on_step:
                on_step(epoch, step, losses[-1])
        metrics = evaluate(ens, f, val, views, texts, source) if val else {}
        mean_loss = sum(losses) / len(losses)
        if on_epoch:
            on_epoch(epoch, mean_loss, metrics)
        # ties (small validation sets saturate) go to the better classifier head; no validation: the last epoch
        score = (metrics.get(cfg.select_by, 0.0), metrics.get("acc", 0.0)) if val else (epoch,)
        if best is None or score > best["score"]:
            best = {"score": score, "epoch": epoch, "loss": mean_loss, "metrics": metrics,
                    "image": copy.deepcopy(image_top.state_dict()), "text": copy.deepcopy(text_top.state_dict()),
                    "scale": float(scale.detach())}
    assert best is not None
    image_top.load_state_dict(best["image"])
    text_top.load_state_dict(best["text"])
    with torch.no_grad():
        ens.logit_scale[f] = best["scale"]
    set_mode(ens, f, False, cfg.bn_train)
    return {"fold": f, "best_epoch": best["epoch"], "train_loss": round(best["loss"], 4),
            "n_train": len(train), **{k: _round(v) for k, v in best["metrics"].items()}}


def draw_caption(views: ViewCache, n: int, v: int, desc_prob: float, gen: torch.Generator) -> int:
    """One caption for a view: its own description with probability desc_prob (when it has one), else a
    class caption; falls back to whichever exists."""
    descs, temps = views.descriptions[n][v], views.templates[n][v]
    r = float(torch.rand((), generator=gen))
    pool = descs if descs and (r < desc_prob or not temps) else temps
    return pool[int(torch.randint(len(pool), (), generator=gen))]


def _round(v):
    return round(v, 4) if isinstance(v, float) else v


# --------------------------------------------------------------------------------------------- bookkeeping
def run_key(cfg: TrainConfig, data_hash: str, folds: int) -> str:
    """What a resumed run must share with the interrupted one: every weight-changing setting and the data."""
    basis = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_KEY}
    basis.update(data_hash=data_hash, folds=folds)
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def summarize_folds(per_fold: list[dict]) -> dict:
    keys = [k for k in ("R@1", "R@5", "R@10", "MRR", "nDCG@10", "acc") if all(k in m for m in per_fold)]
    mean = {k: round(sum(m[k] for m in per_fold) / len(per_fold), 4) for k in keys} if per_fold else {}
    return {"per_fold": per_fold, "mean": mean,
            "validation": "text->image on each fold's held-out images; queries are their captions, relevant "
                          "images are the held-out ones sharing the caption; acc = classifier head, plain view"}


def metrics_table(metrics: dict, title: str = "validation per fold") -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, caption="epoch: best epoch kept; acc: classifier head")
    cols = ["fold", "best_epoch", "n_train", "n_val", "R@1", "R@5", "R@10", "MRR", "nDCG@10", "acc"]
    for h in ["fold", "epoch", "train", "val", "R@1", "R@5", "R@10", "MRR", "nDCG", "acc"]:
        table.add_column(h, justify="right")
    for m in metrics.get("per_fold", []):
        table.add_row(*[_fmt(m.get(c)) for c in cols])
    if metrics.get("mean"):
        table.add_row("mean", "", "", "", *[_fmt(metrics["mean"].get(c)) for c in cols[4:]], style="bold")
    return table


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _progress(cfg: TrainConfig, console: Console):
    if not cfg.progress:
        return nullcontext(None)
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


# --------------------------------------------------------------------------------------------------- main
def main(cfg: TrainConfig, *, console: Console | None = None) -> dict:
    """Train and write the bundle; returns the manifest. Safe to interrupt: rerun to resume."""
    console = console or Console(stderr=True)
    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out).expanduser()
    if not cfg.data:
        raise TrainError("no training data given (an ENTRep folder, a folder per class, or a CSV)")
    if cfg.select_by not in SELECTABLE:
        raise TrainError(f"--select_by must be one of {', '.join(SELECTABLE)}, not {cfg.select_by!r}")

    # data
    data = load_dataset(cfg.data, templates=cfg.templates)
    console.print(f"data: {data.summary()}")

    # folds
    k, why = clamp_folds(data.items, cfg.folds)
    if why:
        console.print(f"[yellow]note:[/] {why}")
    if k > 1:
        fold_ids = assign_folds(data.items, k, cfg.seed)
        splits = [split(fold_ids, f) for f in range(k)]
        if cfg.val_fraction:
            console.print(f"note: val_fraction is for a single model (--folds 1); {k} folds validate on their own")
    else:
        splits = [holdout(data.items, cfg.val_fraction, cfg.seed)]
        held_out = set(splits[0][1])
        fold_ids = [0 if i in held_out else -1 for i in range(len(data.items))]  # -1: trained on by every fold
    flip = cfg.flip and cfg.spec.pool != "avg"
    if cfg.flip and not flip:
        console.print("note: no mirrored views with pool='avg' (average pooling cannot tell the sides apart)")

    # resume
    key = run_key(cfg, data.data_hash, k)
    done = resume_state(out, key)
    if done is None:  # already complete
        console.print(f"{out} already holds this run's finished bundle; nothing to do")
        return read_manifest(out)

    # model
    ens = FoldEnsemble(cfg.spec, k, seed=cfg.seed, classes=data.classes)
    untrained_shared = ens.shared_hash()
    for f in sorted(done):
        load_fold(ens, out, f)
    if done:
        console.print(f"resuming: folds {', '.join(str(f) for f in sorted(done))} already trained in {out}")

    # caches (once for all folds and epochs)
    extra = train_extra(cfg, data, key, k, fold_ids, flip)
    with _progress(cfg, console) as bars:
        t_cache = time.time()
        texts = build_text_cache(ens, view_texts(data.items, flip))
        task = bars.add_task("caching trunk features", total=len(data.items)) if bars else None
        views = build_view_cache(ens, data.items, data.classes, texts, n_views=cfg.views, seed=cfg.seed, flip=flip,
                                 advance=(lambda a: bars.advance(task, a)) if bars else None)
        console.print(f"cached {len(data.items)} x {cfg.views} views and {len(texts.texts)} captions "
                      f"in {time.time() - t_cache:.1f}s")

        # folds, one after the other; each is written as soon as it is done
        for f in range(k):
            if f in done:
                continue
            train, val = splits[f]
            steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
            task = bars.add_task(f"fold {f + 1}/{k}", total=steps) if bars else None
            t_fold = time.time()

            def on_step(epoch, step, loss, task=task, f=f):
                if bars:
                    bars.update(task, completed=step, description=f"fold {f + 1}/{k} epoch {epoch}/{cfg.epochs} "
                                                                  f"loss {loss:.3f}")

            def on_epoch(epoch, loss, m, f=f):
                if not bars and (epoch == cfg.epochs or epoch % 10 == 0):
                    shown = " ".join(f"{k_} {m[k_]:.3f}" for k_ in ("R@1", "MRR", "acc") if k_ in m)
                    console.print(f"fold {f + 1}/{k} epoch {epoch}/{cfg.epochs} loss {loss:.3f} {shown}")

            result = fit_fold(ens, f, train, val, views, texts, cfg, on_step=on_step, on_epoch=on_epoch)
            result["seconds"] = round(time.time() - t_fold, 1)
            write_fold(ens, out, f)
            done[f] = result
            write_progress(out, key, k, done)
            if len(done) < k and sorted(done) == list(range(len(done))):
                save_bundle(ens, out, folds=len(done), trained=True, metrics=summarize_folds(sorted_results(done)),
                            data_hash=data.data_hash, extra={**extra, "partial": True, "folds_planned": k},
                            folds_written=list(done))
            if bars:
                bars.update(task, description=f"fold {f + 1}/{k} done (best epoch {result['best_epoch']})")

    # the shared trunk must be exactly the pretrained one: that is what lets one index serve all folds
    if ens.shared_hash() != untrained_shared:
        raise TrainError("the frozen shared trunk changed during training (a bug): refusing to write the bundle")
    metrics = summarize_folds(sorted_results(done)) if any(splits[f][1] for f in range(k)) else {}
    paths = [it.path for it in data.items]
    cal = calibrate(ens, views, splits, paths, out) if metrics else {}
    extra.update(similarity=fit_similarity(ens, views, splits, cal, paths), seconds=round(time.time() - t0, 1))
    manifest = save_bundle(ens, out, trained=True, metrics=metrics, data_hash=data.data_hash,
                           extra={**extra, "partial": False, "calibration": cal}, folds_written=list(range(k)))
    (out / PROGRESS).unlink(missing_ok=True)
    if metrics:
        console.print(metrics_table(metrics))
        console.print(f"class head: temperature {cal.get('temperature')}, ECE {cal.get('ece_before')} -> "
                      f"{cal.get('ece_after')} (out of fold)\ntrust thresholds: {thresholds_text(cal.get('thresholds'))}")
    else:
        console.print("no held-out images (K=1, val_fraction=0): the last epoch was kept, nothing was validated")
    console.print(f"bundle written to {out} ({k} folds, fingerprint {manifest['fingerprint']}) "
                  f"in {time.time() - t0:.0f}s")
    return manifest


def sorted_results(done: dict[int, dict]) -> list[dict]:
    return [done[f] for f in sorted(done) if done[f] is not None]


def train_extra(cfg: TrainConfig, data: Dataset, key: str, k: int, fold_ids: list[int], flip: bool) -> dict:
    """What the manifest records about the run: the whole config (as nanoGPT's checkpoint does) and which
    images each fold held out, so later evaluations can avoid scoring a fold on its own training images."""
    return {"train": {"config": asdict(cfg), "run_key": key, "folds_requested": cfg.folds, "layout": data.layout,
                      "n_images": len(data.items), "class_counts": data.class_counts(), "flip": flip,
                      "augment": asdict(AugmentConfig()),
                      "val_fold": {it.name: fid for it, fid in zip(data.items, fold_ids)}}}


# --------------------------------------------------------------------------------------------------- entry
def train_from_path(data, out, *, console: Console | None = None, **overrides) -> dict:
    """Train from Python with any settings (`folds=2, epochs=3, pool="avg"`); returns the manifest."""
    return main(make_config(data=str(data), out=str(out), **overrides), console=console)


def parse_args(argv: Sequence[str]) -> TrainConfig:
    """`DATA --out DIR [--config NAME|FILE] [--key=value | --key value]...`"""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    positional, pairs = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise TrainError(f"--{name} needs a value")
                value, i = argv[i + 1], i + 1
            pairs[name.replace("-", "_")] = value
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 1:
        raise TrainError("give exactly one DATA path (an ENTRep folder, a folder per class, or a CSV)")
    preset = pairs.pop("config", None)
    return make_config(preset=preset, data=positional[0], **pairs)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = main(parse_args(sys.argv[1:]))
    except KgerError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    except KeyboardInterrupt:
        print("interrupted: finished folds are saved; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130)
