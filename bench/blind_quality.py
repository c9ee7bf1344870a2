"""Blind quality on the 70 real ENTRep images: does each stage add, and is a trusted prediction right?

Run on demand (minutes per split; not a test):

    PYTHONPATH=$PWD python bench/blind_quality.py              # 3 seeded splits, `kger train` defaults (~5 min each)
    PYTHONPATH=$PWD python bench/blind_quality.py --folds 3 --epochs 20 --views 4   # quicker, weaker heads
    PYTHONPATH=$PWD python bench/blind_quality.py --work DIR --reuse --tune-fusion --json out.json

Per seeded split: 6 training / 4 held-out images per class (byte-identical files kept on one side,
training/heldout.py), `kger train`, the held-out images indexed blind (`kger index --no-labels`), then
`kger eval --labels held/cls.json` (offline planner and judge) on
- the 7 plain class names ("left ear", ..., class-level truth), and
- the ENTRep descriptions whose image's class is known (annotations t2i.json joined with cls.json), scored at
  region level (ear / nose / throat / larynx: R@1 = the top-1 image is from the right region);
plus image-to-image search among the held-out images through `Searcher.similar` (what `kger search --image`,
serve /similar and MCP similar answer), old (the ensemble vector) against new (the bundle's image-to-image
similarity): class P@1 / P@5, the same-side share of the top 5 for ear and nose queries, and each held-out image
mirrored (the other side is the answer); the head's ECE before/after calibration, how many
held-out images get a trusted prediction and how many of those are right, and how well three familiarity
scores separate held-out real images from greyscale copies of them and the demo's synthetic drawings (AUROC).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval import lexicon  # noqa: E402
from retrieval.bundle import load_bundle  # noqa: E402
from retrieval.manifest import file_sha256, read_manifest  # noqa: E402
from retrieval.preprocess import load_array, load_for_model  # noqa: E402
from retrieval.trust import descriptor, familiarity  # noqa: E402
from training.heldout import split_per_class, write_entrep_layout  # noqa: E402
from training.simfit import figures, other_side, refit, region_side  # noqa: E402
from training.synthetic import make_gallery  # noqa: E402
from training.train import train_from_path  # noqa: E402

ENTREP = Path(os.environ.get("KGER_ENTREP_DIR", ROOT.parent / "shared" / "data" / "entrep"))
ANN = ENTREP / "annotations" / "data" / "train" / "train"
STAGES = ("ensemble", "retrieval", "judge", "fused")


def kger(*args: str, home: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "KGER_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", "from agent.cli import main; main()", *args, "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"kger {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def region_truth() -> dict[str, str]:
    """ENTRep description -> region of its image, for the descriptions whose image has a class."""
    t2i = json.loads((ANN / "t2i.json").read_text())
    cls = json.loads((ANN / "cls.json").read_text())
    site_of = {c: s for s in lexicon.SITES for c in lexicon.classes_for(s)}
    return {q: site_of[cls[img]] for q, img in t2i.items() if img in cls}


@torch.no_grad()
def encode(bundle, paths):
    """Vectors, fold logits and trunk descriptors of image files (or PIL images)."""
    ens = bundle.ensemble
    vecs, logits, descs = [], [], []
    for i in range(0, len(paths), 16):
        x = torch.stack([load_for_model(p, ens.spec.image_size, ens.mean, ens.std) for p in paths[i:i + 16]])
        v, z, feats = ens.encode_images_detailed(x)
        vecs.append(v)
        logits.append(z)
        descs.append(descriptor(feats, x, ens.mean, ens.std))
    return np.concatenate(vecs), torch.cat(logits, dim=1), torch.cat(descs)


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a familiar image scores above an unfamiliar one), ties counting half."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def i2i(home: Path, store: str, held_dir: Path, held: dict[str, str], names: list[str]) -> dict:
    """Image-to-image figures of the held-out store, old (ensemble vector) and new (Searcher.similar)."""
    from retrieval.search import Searcher
    from store.gallery import Gallery

    mirror_dir = held_dir.parent / "mirrored"
    mirror_dir.mkdir(exist_ok=True)
    gallery = Gallery.open(store, home=home)
    try:
        searcher = Searcher.for_gallery(gallery)
        new_ok = searcher.similarity() is not None
        out = {}
        for kind in ("old", "new"):
            rows = {"plain": ([], []), "mirrored": ([], [])}
            for n in names:
                path = held_dir / "imgs" / n
                mirrored = mirror_dir / n
                if not mirrored.exists():
                    Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
                for q, want, key in ((path, held[n], "plain"), (mirrored, other_side(held[n]), "mirrored")):
                    if kind == "new":
                        got = searcher.similar(str(q), 5)
                    else:  # the ensemble vector, as every door ranked before issue 21
                        own = file_sha256(q)
                        stored = gallery.get([own], include_embeddings=True)
                        enc = searcher.encoder
                        vec = stored[0].embedding if stored else enc.encode_images(
                            load_array(q, enc.image_size, enc.mean, enc.std)[None])[0][0]
                        got = [c for c in searcher.by_vector(vec, 6) if c.id != own][:5]
                    rows[key][0].append(want)
                    rows[key][1].append([held[Path(c.path).name] for c in got])
            out[kind] = {key: _figures(w, g, held, key == "plain") for key, (w, g) in rows.items()}
        out["oracle"] = oracle(held, names)
        out["new_is_similarity"] = new_ok
        return out
    finally:
        gallery.close()


def oracle(held: dict[str, str], names: list[str]) -> dict:
    """The ceilings of these figures on this gallery: a similarity that knows every class ranks the query's class
    first, then the rest of its region (the other side), then other regions. With 3 other images per class a
    top 5 holds 2 of the other side, so 'same side' (issue 21's measure) cannot pass 0.60 for any similarity that
    keeps a region together; 'same side, first m' (m = the gallery's images of the wanted class) can reach 1."""
    def ranked(want: str, exclude: str | None) -> list[str]:
        reg = region_side(want)[0]
        order = sorted((n for n in names if n != exclude),
                       key=lambda n: (held[n] != want, region_side(held[n])[0] != reg, n))
        return [held[n] for n in order[:5]]
    return {"plain": _figures([held[n] for n in names], [ranked(held[n], n) for n in names], held, True),
            "mirrored": _figures([other_side(held[n]) for n in names],
                                 [ranked(other_side(held[n]), None) for n in names], held, False)}


def side_first(want: list[str], got: list[list[str]], held: dict[str, str], region: str,
               in_gallery: bool) -> float | None:
    """Same-side share among a sided query's first m neighbours from its region, m = how many images of the
    wanted class the gallery holds besides the query (a mirrored query is not in it): 1.0 is reachable."""
    count = Counter(held.values())
    shares = []
    for w, g in zip(want, got):
        reg, side = region_side(w)
        if reg != region or side is None:
            continue
        m = count.get(w, 0) - int(in_gallery)
        same = [c for c in g if region_side(c)[0] == reg][:max(m, 1)]
        if same:
            shares.append(sum(region_side(c)[1] == side for c in same) / len(same))
    return round(float(np.mean(shares)), 4) if shares else None


def _figures(want: list[str], got: list[list[str]], held: dict[str, str], in_gallery: bool) -> dict:
    """figures() over ranked class lists (a one-hot similarity row per query's top 5)."""
    rows = np.full((len(want), 5 * len(want)), -np.inf)
    cols = []
    for i, g in enumerate(got):
        for r, c in enumerate(g):
            rows[i, len(cols)] = 5 - r
            cols.append(c)
    rows = rows[:, :len(cols)]
    fig = figures(rows, want, cols, [-1] * len(want))
    for region in ("ear", "nose"):
        sel = [i for i, w in enumerate(want) if region_side(w)[0] == region]
        fig[f"same_side_{region}"] = figures(rows[sel], [want[i] for i in sel], cols, [-1] * len(sel))["same_side"]
        fig[f"side_first_{region}"] = side_first(want, got, held, region, in_gallery)
    sided = [i for i, w in enumerate(want) if region_side(w)[1] is not None]
    fig["P@1_sided"] = figures(rows[sided], [want[i] for i in sided], cols, [-1] * len(sided))["P@1"]
    return fig


def greyscale_copies(paths: list[Path], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for p in paths:
        q = out / f"grey-{p.stem}.png"
        Image.open(p).convert("L").convert("RGB").save(q)
        copies.append(q)
    return copies


def run_split(seed: int, args, work: Path) -> dict:
    img_dir = ENTREP / "train" / "imgs"
    labels = json.loads((ENTREP / "train" / "cls.json").read_text())
    train, held = split_per_class(labels, img_dir, 6, seed)
    root = work / f"split{seed}"
    write_entrep_layout(root / "train", train, img_dir)
    write_entrep_layout(root / "held", held, img_dir)
    bundle_dir = root / "bundle"
    home, store = root / "home", f"blind{seed}"
    if args.reuse and (root / "index.json").is_file():  # a finished split of an earlier run: re-measure only
        manifest, index = read_manifest(bundle_dir), json.loads((root / "index.json").read_text())
        if not manifest.get("similarity"):  # trained before issue 21: fit it now, add the vectors to the store
            manifest["similarity"] = refit(bundle_dir, root / "train")
            kger("index", str(root / "held" / "imgs"), "--bundle", str(bundle_dir), "--no-labels", "--store",
                 store, home=home)
    else:
        manifest = train_from_path(root / "train", bundle_dir, folds=args.folds, epochs=args.epochs,
                                   views=args.views, seed=seed, progress=False)
        index = kger("index", str(root / "held" / "imgs"), "--bundle", str(bundle_dir), "--no-labels", "--store",
                     store, home=home)
        (root / "index.json").write_text(json.dumps(index))
    gts = {"classes": root / "classes.json", "entrep": root / "entrep_regions.json"}
    gts["classes"].write_text(json.dumps({lexicon.class_description(c): c for c in lexicon.CLASSES}))
    gts["entrep"].write_text(json.dumps(region_truth()))
    evals = {}
    for name, gt in gts.items():
        extra = ["--tune-fusion"] if args.tune_fusion else []
        evals[name] = kger("eval", str(gt), "--labels", str(root / "held" / "cls.json"), "--store", store,
                           "--k", str(args.k), *extra, home=home)

    bundle = load_bundle(bundle_dir)
    trust = bundle.trust
    names = sorted({file_sha256(img_dir / n): n for n in held}.values())  # one name per distinct file
    truth = [held[n] for n in names]
    x_real = [img_dir / n for n in names]
    vecs, logits, descs = encode(bundle, x_real)
    assessed = trust.assess_descriptors(logits, descs)
    site_of = {c: s for s in lexicon.SITES for c in lexicon.classes_for(s)}

    def region_side(c: str) -> tuple:
        return site_of[c], (c.split("-")[1] if site_of[c] in ("ear", "nose") else None)
    trusted = [(a, t) for a, t in zip(assessed, truth) if a.trusted]
    confident = [(a.prob, a.predicted == t, region_side(a.predicted) == region_side(t)) for a, t in zip(assessed, truth)]

    # unfamiliar inputs: greyscale copies of the held-out frames and the demo's synthetic gallery
    grey = greyscale_copies(x_real, root / "grey")
    synth_dir = root / "synthetic"
    if not synth_dir.exists():
        make_gallery(synth_dir, per_class=4, seed=seed)
    synth = sorted(synth_dir.rglob("*.png"))
    a_grey, a_synth = _assess(bundle, grey), _assess(bundle, synth)
    train_paths = [img_dir / n for n in sorted(train)]
    t_vecs, _, _ = encode(bundle, train_paths)
    scores = {}
    for kind, fn in (("trunk+colour cosine (used)", lambda v, z, d: familiarity(d, trust.reference)),
                     ("trunk cosine", lambda v, z, d: familiarity(d[:, :-64], trust.reference[:, :-64])),
                     ("embedding_cosine", lambda v, z, d: (v @ t_vecs.T).max(1)),
                     ("neg_energy", lambda v, z, d: torch.logsumexp(z.mean(0), -1).numpy())):
        per = [fn(*encode(bundle, ps)) for ps in (x_real, grey, synth)]
        scores[kind] = {"auroc_vs_grey": auroc(per[0], per[1]), "auroc_vs_synthetic": auroc(per[0], per[2])}
    cal = manifest.get("calibration") or {}
    return {
        "seed": seed, "n_train": len(train), "n_held": len(names), "indexed": index["indexed"],
        "index_trusted": index.get("trusted_predictions"),
        "stages": {name: {s: {m: doc["stages"][s][m] for m in ("R@1", "MRR")} for s in STAGES if s in doc["stages"]}
                   for name, doc in evals.items()},
        "evaluated": {name: doc["evaluated"] for name, doc in evals.items()},
        "tune_fusion": {name: doc.get("tune_fusion") for name, doc in evals.items()} if args.tune_fusion else None,
        "i2i": i2i(home, store, root / "held", held, names),
        "similarity_fit": manifest.get("similarity"),
        "ece_before": cal.get("ece_before"), "ece_after": cal.get("ece_after"), "temperature": cal.get("temperature"),
        "thresholds": cal.get("thresholds"), "familiar_at": (cal.get("familiarity") or {}).get("threshold"),
        "held_familiar": sum(a.familiar for a in assessed),
        "trusted": len(trusted), "trusted_right_class": sum(a.predicted == t for a, t in trusted),
        "trusted_right_region_side": sum(region_side(a.predicted) == region_side(t) for a, t in trusted),
        "confident": confident,
        "grey_untrusted": f"{sum(not a.trusted for a in a_grey)}/{len(a_grey)}",
        "synthetic_untrusted": f"{sum(not a.trusted for a in a_synth)}/{len(a_synth)}",
        "grey_unfamiliar": f"{sum(not a.familiar for a in a_grey)}/{len(a_grey)}",
        "synthetic_unfamiliar": f"{sum(not a.familiar for a in a_synth)}/{len(a_synth)}",
        "familiarity_separation": scores,
    }


def _assess(bundle, paths):
    _, logits, descs = encode(bundle, paths)
    return bundle.trust.assess_descriptors(logits, descs)


def table(results: list[dict]) -> str:
    lines = ["| split | query set | " + " | ".join(f"{s} R@1 / MRR" for s in STAGES) + " |",
             "|---|---|" + "---|" * len(STAGES)]
    for r in results:
        for name, st in r["stages"].items():
            cells = [f"{st[s]['R@1']:.2f} / {st[s]['MRR']:.2f}" if s in st else "-" for s in STAGES]
            lines.append(f"| {r['seed']} | {name} ({r['evaluated'][name]}) | " + " | ".join(cells) + " |")
    lines += ["", "Image to image (held-out gallery; old = ensemble vector, new = Searcher.similar, oracle = the "
                  "ceiling on this gallery: see oracle()). 'same side': share among the top 5's neighbours from the "
                  "query's region (issue 21's measure); 'first m': among the first m of them, m = the gallery's "
                  "images of the wanted class:",
              "| split | vector | P@1 | P@5 | same side ear / nose | first m ear / nose | mirrored: other side P@1 "
              "(sided) | mirrored same side ear / nose | mirrored first m ear / nose |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for kind in ("old", "new", "oracle"):
            if kind not in r["i2i"]:  # a result saved before the oracle row
                continue
            p, m = r["i2i"][kind]["plain"], r["i2i"][kind]["mirrored"]
            lines.append(f"| {r['seed']} | {kind} | {p['P@1']:.2f} | {p['P@5']:.2f} | {p['same_side_ear']} / "
                         f"{p['same_side_nose']} | {p.get('side_first_ear')} / {p.get('side_first_nose')} | "
                         f"{m['P@1_sided']} | {m['same_side_ear']} / {m['same_side_nose']} | "
                         f"{m.get('side_first_ear')} / {m.get('side_first_nose')} |")
    lines += ["", "| split | ECE before -> after | T | held familiar | trusted (right class / region+side) "
                  "| grey untrusted | synthetic untrusted |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['seed']} | {r['ece_before']} -> {r['ece_after']} | {r['temperature']} "
                     f"| {r['held_familiar']}/{r['n_held']} | {r['trusted']}/{r['n_held']} ({r['trusted_right_class']} "
                     f"/ {r['trusted_right_region_side']}) | {r['grey_untrusted']} | {r['synthetic_untrusted']} |")
    conf = sorted((c for r in results for c in r["confident"]), reverse=True)
    lines += ["", "What a raw confidence rule would trust (held-out, all splits; for comparison with the measured rule):",
              "| calibrated confidence >= | held-out images | right class | right region and side |", "|---|---|---|---|"]
    for t in (0.95, 0.9, 0.85, 0.8, 0.7, 0.5):
        sel = [c for c in conf if c[0] >= t]
        if sel:
            lines.append(f"| {t:.2f} | {len(sel)}/{len(conf)} | {sum(c[1] for c in sel) / len(sel):.3f} "
                         f"| {sum(c[2] for c in sel) / len(sel):.3f} |")
    lines += ["", "| split | familiarity score | AUROC held-out vs greyscale | AUROC held-out vs synthetic |",
              "|---|---|---|---|"]
    for r in results:
        for kind, s in r["familiarity_separation"].items():
            lines.append(f"| {r['seed']} | {kind} | {s['auroc_vs_grey']:.3f} | {s['auroc_vs_synthetic']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--folds", type=int, default=10, help="clamped by training to the 6 images per class")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--reuse", action="store_true", help="with --work: keep the bundles and stores of finished splits")
    ap.add_argument("--k", type=int, default=20, help="candidates per query")
    ap.add_argument("--tune-fusion", action="store_true")
    ap.add_argument("--work", type=Path, default=None, help="keep bundles and stores here (reused when rerun)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kger-blind-"))
    results = []
    for seed in args.seeds:
        results.append(run_split(seed, args, work))
        print(f"split {seed} done", file=sys.stderr, flush=True)
    print(f"folds {args.folds}, epochs {args.epochs}, views {args.views}, k {args.k}; work dir {work}\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
