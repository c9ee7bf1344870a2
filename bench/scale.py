"""Stores at archive scale, a two-stage search proposal, and indexing on Ray at 1 vs 2 workers. On demand only.

    python bench/scale.py --n 100000 --stores embedded,server,twostage   # default data: simulated 10-fold vectors
    python bench/scale.py --n 100000 --stores embedded --data random      # the worst case: random unit vectors
    python bench/scale.py --million --stores twostage                     # 1,000,000 vectors
    python bench/scale.py --ray-only                                      # only the Ray throughput part
    python bench/scale.py --table RESULTS.jsonl                           # one table of every run appended there

All vectors are SIMULATED, 640-d (10 folds x 64): `--data folds` as a 10-fold bundle would store video frames
(clustered, redundant across folds), `--data random` as uniform random unit vectors (no structure: the worst
case). The generators and their parameters are in bench/scale_data.py. Each item has one of 7 classes (the
ENTRep ones); 200 queries; recall@10 is against exact numpy search over the same full 640-d vectors (with
the class filter: over that class's vectors).

Store kinds, all made and filled through kger's own `Gallery` (HNSW: cosine, M 32, ef_construction 200,
ef_search 400; upserts in batches of up to 5,000; bound to a simulated bundle):
- `embedded`, `server` (`chroma run`): the full 640-d vectors; top-10 through `Gallery.query`, with metadata.
  The class filter twice: as kger's tools ask (`classes=`: one unfiltered look at the top 200, Chroma's filter
  only when fewer than 10 of the class are there) and as Chroma's own `where` (every matching id from SQLite).
- `twostage` (`twostage-server`): the proposal. The index holds a 64-d projection of each vector (uncentred
  PCA fitted on 20,000 stored vectors, or the mean of the 10 fold slices, whichever keeps more recall when the
  first stage is exact: printed); the full vectors lie beside it as float16 rows in a flat file read through a
  memmap (row = item index). A query: project, ANN top-N ids from Chroma (ids only: asking for N metadata
  rows costs 5x more at N=400), exact re-scoring of those N rows, top-10, then the 10 records' metadata by id.
  With the class filter the first stage is an exact scan of that class's projections (scale_data.ClassScan).
  One row per N in --candidates. Build time counts the PCA fit, the projection, the files and the upserts.
`Gallery.query` no longer asks the store for its count before each query (SQLite counts by scanning: ~50-60 ms
at 1M); count() is still timed apart (count() ms), since `kger index` and `kger store` reports call it.
Rows saved without `variant` (marked v1) were measured with that count inside each query, and the two-stage
class filter as a Chroma `where`; in variant 2 rows a plain store's class filter was Chroma's `where` alone.

- `similar`: "more like this" as `Searcher.similar` asks it (issue 21): the image-to-image collection beside
  the gallery (store/similar.py) holds `--sim-dim`-d vectors (default 263: the side, colour and class blocks a
  fitted bundle stores; 455 with the trunk block), simulated as the first dims of the same vectors, renormalised;
  a query is its top-10 there plus the 10 records' metadata and vectors from the gallery. Recall@10 against
  exact search over those vectors; unfiltered only.

Measured per store: upsert (build) rate, size on disk (with the row file), resident memory (the server's, or
this process's growth for embedded stores; the row file is in the page cache, not counted), query latency
p50/p95 for top-10 with and without a class filter, recall@10.

Ray part: the 70 real ENTRep images in 4 orientations (280 distinct files) indexed with `index_with_ray` on a
local runtime into the server, with a 10-fold bundle, at 1 and at 2 workers. Throughput counts from the first
stored batch to the last (actor start-up, a fixed cost per run, is printed apart).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import retrieval  # noqa: E402,F401  (first: sets the OpenMP wait policy before torch loads)

import numpy as np  # noqa: E402

import scale_data as sd  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
CLASSES = ["ear-left", "ear-right", "nose-left", "nose-right", "vc-open", "vc-closed", "throat"]
CHUNK = 5000
PCA_SAMPLE = 20_000


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def start_server(path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("chroma", path=str(Path(sys.executable).parent)) or "chroma"
    path.mkdir(parents=True, exist_ok=True)
    log = open(path.parent / f"{path.name}.log", "wb")
    proc = subprocess.Popen([exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("chroma run did not start")


def fill(label: str, gallery, vectors: np.ndarray, cls: np.ndarray) -> None:
    t0 = time.perf_counter()
    for s in range(0, len(vectors), CHUNK):
        e = min(len(vectors), s + CHUNK)
        gallery.upsert([f"v{i:07d}" for i in range(s, e)], vectors[s:e],
                       [{"cls": CLASSES[c], "name": f"v{i}"} for i, c in zip(range(s, e), cls[s:e])])
        if (s // CHUNK) % 20 == 0 or e == len(vectors):
            print(f"  {label}: {e:,} upserted, {e / (time.perf_counter() - t0):,.0f}/s", flush=True)


def time_queries(search, queries: np.ndarray, truth: dict, modes=("all", "class", "own")) -> dict:
    """p50/p95 ms and recall@10 of `search(query, where, mode) -> row indices` per mode: "all" unfiltered;
    "class" one fixed class for every query (most queries are near other classes: the hard case), "own" each
    query's own class (as a description names the region it asks for), both as kger asks; "where" the fixed
    class as Chroma's own filter."""
    out = {}
    for name in modes:
        wheres = [None if name == "all" else {"cls": CLASSES[c if name == "own" else 2]} for c in truth["q_cls"]]
        search(queries[0], wheres[0], name)  # warm-up
        times, hits = [], 0
        for q, t, where in zip(queries, truth["class" if name == "where" else name], wheres):
            t1 = time.perf_counter()
            got = search(q, where, name)
            times.append((time.perf_counter() - t1) * 1000)
            hits += len(set(got) & set(t.tolist()))
        out[f"p50_ms_{name}"] = float(np.percentile(times, 50))
        out[f"p95_ms_{name}"] = float(np.percentile(times, 95))
        out[f"recall10_{name}"] = hits / (10 * len(queries))
    return out


def count_ms(gallery) -> float:
    """What the store's count costs (SQLite counts by scanning, so it grows with the store)."""
    times = []
    for _ in range(20):
        t = time.perf_counter()
        gallery.count()
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def row_of(hits) -> list[int]:
    return [int(h.id[1:]) for h in hits]


def bench_plain(label: str, gallery, data, cls, queries, truth, disk: Path, pid: int) -> list[dict]:
    rss0 = rss_mb(pid)
    t0 = time.perf_counter()
    fill(label, gallery, data, cls)
    row = {"upsert_per_s": len(data) / (time.perf_counter() - t0), "dims": sd.DIM, "disk_mb": du_mb(disk)}

    def search(q, where, mode):  # the class filter as kger's tools ask (classes=) and as a Chroma `where`
        if mode in ("class", "own"):
            return row_of(gallery.query(q, k=10, classes=[where["cls"]]))
        return row_of(gallery.query(q, k=10, where=where))

    row.update(time_queries(search, queries, truth, ("all", "class", "own", "where")))
    return [{**row, "rss_mb": rss_mb(pid) - (rss0 if pid == os.getpid() else 0)}]


def bench_similar(label: str, gallery, data, cls, queries, disk: Path, pid: int, dim: int) -> list[dict]:
    sims, qs = sd.normalise(data[:, :dim]), sd.normalise(queries[:, :dim])
    truth = {"all": sd.exact_topk(sims, qs), "q_cls": np.zeros(len(qs), dtype=int)}
    rss0 = rss_mb(pid)
    t0 = time.perf_counter()
    fill(label, gallery, data, cls)
    for s in range(0, len(sims), CHUNK):
        e = min(len(sims), s + CHUNK)
        gallery.similar().upsert([f"v{i:07d}" for i in range(s, e)], sims[s:e], [CLASSES[c] for c in cls[s:e]], "sim")
    row = {"upsert_per_s": len(data) / (time.perf_counter() - t0), "dims": dim, "disk_mb": du_mb(disk)}

    def search(q, where, mode):  # as Searcher._similar_by: the top 10 by similarity, then their records
        found = gallery.similar().query(q, 10)
        gallery.get([i for i, _ in found], include_embeddings=True)
        return [int(i[1:]) for i, _ in found]

    row.update(time_queries(search, qs, truth, ("all",)))
    return [{**row, "rss_mb": rss_mb(pid) - (rss0 if pid == os.getpid() else 0)}]


def choose_projection(basis, data, rows, queries, truth_all, n_cand: int) -> tuple[str, object, dict]:
    """Of the two 64-d projections, the one with more recall when the first stage is exact (no ANN)."""
    found = {}
    for name, project in (("pca", sd.pca_projection(basis)), ("foldmean", sd.fold_mean)):
        found[name] = (project, sd.projected_recall(project, data, rows, queries, truth_all, n_cand))
        print(f"  projection {name}: recall@10 {found[name][1]:.4f} with an exact first stage, N={n_cand}", flush=True)
    best = max(found, key=lambda k: found[k][1])
    return best, found[best][0], {f"exact_first_stage_{k}": v[1] for k, v in found.items()}


def bench_twostage(label: str, gallery, data, cls, queries, truth, disk: Path, pid: int,
                   cands: list[int]) -> list[dict]:
    rss0 = rss_mb(pid)
    rows_path = disk / "rows.f16"
    t0 = time.perf_counter()
    sd.write_rows(rows_path, data)
    t1 = time.perf_counter()
    basis = sd.fit_pca(data[:: max(1, len(data) // PCA_SAMPLE)][:PCA_SAMPLE])
    t2 = time.perf_counter()
    rows = sd.open_rows(rows_path)
    name, project, checks = choose_projection(basis, data, rows, queries, truth["all"], min(cands))
    t3 = time.perf_counter()
    proj = np.concatenate([project(data[s: s + CHUNK * 20]) for s in range(0, len(data), CHUNK * 20)])
    sd.ClassScan.write(disk, proj, cls)
    fill(label, gallery, proj, cls)
    del proj
    build_s = time.perf_counter() - t3 + t2 - t0
    print(f"  {label} build {build_s:.0f} s: row file {t1 - t0:.1f} s, PCA fit {t2 - t1:.1f} s", flush=True)
    build = {"upsert_per_s": len(data) / build_s, "dims": sd.FOLD_DIM, "projection": name,
             "disk_mb": du_mb(disk), **checks}
    col, n, scan = gallery._col, gallery.count(), sd.ClassScan(disk)  # first stage: ids only (no Gallery method)

    def search(q, where, n_cand):
        pq = project(q[None])[0]
        if where:  # the bench's only filter is one class
            cand = scan.top(pq, CLASSES.index(where["cls"]), n_cand)
        else:
            cand = np.array([int(i[1:]) for i in col.query(query_embeddings=[pq], n_results=min(n_cand, n),
                                                            include=[])["ids"][0]])
        top = sd.rescore(rows, cand, q, 10)
        return row_of(gallery.get([f"v{i:07d}" for i in top], include_embeddings=False))

    out = []
    for n_cand in cands:
        got = time_queries(lambda q, where, _: search(q, where, n_cand), queries, truth)
        out.append({**build, **got, "candidates": n_cand})
        print(f"  {label} N={n_cand}: {got}", flush=True)
    rss = rss_mb(pid) - (rss0 if pid == os.getpid() else 0)
    return [{**r, "rss_mb": rss} for r in out]


def stores(args, n: int, work: Path) -> list[dict]:
    from store.gallery import Gallery

    print(f"making {n:,} {args.data} vectors of {sd.DIM} dims (simulated) ...", flush=True)
    t = time.perf_counter()
    if args.data == "random":
        data, cls, queries, q_cls = sd.random_data(n, args.queries)
    else:
        data, cls, queries, q_cls = sd.folds_data(n, args.queries, spec=sd.FoldsSpec(fold_noise=args.fold_noise))
    target = cls == CLASSES.index(CLASSES[2])
    truth = {"all": sd.exact_topk(data, queries), "class": sd.exact_topk(data, queries, mask=target), "q_cls": q_cls,
             "own": sd.exact_topk_own_class(data, cls, queries, q_cls)}
    print(f"  data and exact search: {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    for kind in args.stores.split(","):
        two = kind.startswith("twostage")
        disk = work / kind
        proc = None
        if kind.endswith("server"):
            proc, url = start_server(disk / "db")
            g, pid = Gallery.open("scale", url=url, create=True), proc.pid
        else:
            g, pid = Gallery.open("scale", home=disk, create=True), os.getpid()
        try:
            g.bind_bundle(f"simulated-{args.data}", "simulated", sd.FOLD_DIM if two else sd.DIM)
            if kind == "similar":
                got = bench_similar(kind, g, data, cls, queries, disk, pid, args.sim_dim)
            else:
                bench = bench_twostage if two else bench_plain
                extra = (args.candidates,) if two else ()
                got = bench(kind, g, data, cls, queries, truth, disk, pid, *extra)
            count = count_ms(g)
            g.close()
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait()
        for r in got:
            r.update(store=kind, data=args.data, n=n, queries=args.queries, count_ms=count, variant=3,
                     fold_noise=args.fold_noise if args.data == "folds" else None)
            print(r, flush=True)
            save(args.results, r)
        rows += got
        if not args.keep:
            shutil.rmtree(disk, ignore_errors=True)
    return rows


def save(results: Path | None, row: dict) -> None:
    if results is not None:
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")


def ray_throughput(work: Path, folds: int, workers_list: list[int]) -> list[dict]:
    from PIL import Image, ImageOps

    from retrieval.bundle import load_bundle, load_for_indexing
    from retrieval.ray_index import index_with_ray
    from store.gallery import Gallery

    src = ROOT.parent / "shared/data/entrep/train/imgs"
    imgs = work / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.png")):
        im = Image.open(p).convert("RGB")
        for k, v in enumerate((im, ImageOps.mirror(im), ImageOps.flip(im), im.rotate(180))):
            v.save(imgs / f"{p.stem}-{k}.png")
    bundle = work / "bundle10"
    subprocess.run([sys.executable, "-c", "from agent.cli import main; main()", "bundle", "init", "--out", str(bundle),
                    "--folds", str(folds), "--seed", "0"], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.environ["PYTHONPATH"] = str(ROOT)  # the Ray workers import kger from here
    loaded = load_bundle(bundle)
    rows = []
    proc, url = start_server(work / "ray-db")
    try:
        from functools import partial

        for w in workers_list:
            store = f"ray{w}"
            g = Gallery.open(store, url=url, create=True)
            g.bind_bundle(loaded.fingerprint, str(bundle), loaded.dim)
            stamps = []
            t0 = time.perf_counter()
            rep = index_with_ray(imgs, load_model=partial(load_for_indexing, bundle),
                                 open_store=partial(Gallery.open, store, url=url, write=True), batch_size=16,
                                 workers=w, on_progress=lambda d, t: stamps.append((time.perf_counter(), d)))
            total = time.perf_counter() - t0
            first = next((t, d) for t, d in stamps if d > 0)
            rate = (stamps[-1][1] - first[1]) / (stamps[-1][0] - first[0])
            rows.append({"workers": w, "images": rep.indexed, "wall_s": total, "startup_s": first[0] - t0,
                         "images_per_s": rate})
            print(rows[-1], flush=True)
            g.close()
    finally:
        proc.terminate()
        proc.wait()
    return rows


def on_paper(rows: list[dict], ray_rows: list[dict]) -> str:
    """N machines, on paper: Ray workers share nothing but the Chroma server, so embedding scales with
    machines until the server's upsert rate caps it."""
    by_w = {r["workers"]: r["images_per_s"] for r in ray_rows}
    servers = [r for r in rows if r["store"] == "server"]
    if 1 not in by_w or 2 not in by_w or not servers:
        return "(on paper: needs the Ray rows at 1 and 2 workers and a `server` row)"
    per_machine, server = by_w[2], max(servers, key=lambda r: r["n"])
    cap = server["upsert_per_s"]

    def hours(m: int) -> str:
        return f"{m} machine{'s' * (m > 1)} {1e6 / min(m * per_machine, cap) / 3600:.1f} h"

    return (f"On paper: a 2-core machine embeds {per_machine:.1f} images/s with 2 Ray workers ({by_w[2] / by_w[1]:.2f}x "
            f"one worker's {by_w[1]:.1f}/s). Workers share nothing but the Chroma server, so N such machines give about "
            f"N x {per_machine:.1f} images/s until the server's measured upsert rate ({cap:,.0f}/s for 640-d vectors "
            f"into {server['n']:,}, one client; it falls as the index grows) caps it, at about {cap / per_machine:.0f} "
            f"machines. 1M frames: {', '.join(hours(m) for m in (1, 8, 32, 128))}. Beyond the cap: more servers "
            f"(one collection each) or the 64-d two-stage index, whose build rate is higher.")


def table(rows: list[dict], ray_rows: list[dict], folds: int) -> None:
    nq = sorted({r.get("queries", 200) for r in rows})
    print(f"\nstores (SIMULATED 640-d vectors: see bench/scale_data.py), top-10, {nq} queries, class filter = 1 of 7"
          " (cls: one fixed class, own: each query's class, both as kger asks (classes=); where: the fixed class"
          " as Chroma's own filter)")
    head = ("store", "data", "n", "dims", "N", "upsert/s", "disk MB", "RSS MB", "p50 ms", "p95 ms", "recall@10",
            "p50 ms cls", "p95 ms cls", "recall@10 cls", "p50 ms own", "p95 ms own", "recall@10 own", "p50 ms where",
            "recall@10 where", "count() ms")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        r = dict(r)
        if r.get("variant", 1) < 3 and not r["store"].startswith("twostage"):  # then "class" was Chroma's filter
            for m in ("p50_ms", "p95_ms", "recall10"):
                r[f"{m}_where"] = r.pop(f"{m}_class")
        data = r["data"] + (f" (fold noise {r['fold_noise']})" if r.get("fold_noise") not in (None, 0.3) else "")
        store = r["store"] + (f" ({r['projection']})" if r.get("projection") else "")
        store += "" if r.get("variant") else " [v1: count + Chroma filter per query]"

        def f(key: str, spec: str = ".1f") -> str:
            return format(r[key], spec) if r.get(key) is not None else "-"

        cells = [store, data, f"{r['n']:,}", str(r["dims"]), str(r.get("candidates", "-")), f("upsert_per_s", ",.0f"),
                 f("disk_mb", ",.0f"), f("rss_mb", ",.0f"), f("p50_ms_all"), f("p95_ms_all"), f("recall10_all", ".4f"),
                 f("p50_ms_class"), f("p95_ms_class"), f("recall10_class", ".4f"), f("p50_ms_own"), f("p95_ms_own"),
                 f("recall10_own", ".4f"), f("p50_ms_where"),
                 f("recall10_where", ".4f"), f("count_ms")]
        print("| " + " | ".join(cells) + " |")
    if ray_rows:
        print(f"\nRay, local runtime, {folds}-fold bundle, {ray_rows[0]['images']} real images:")
        print("| workers | images/s | start-up s | wall s |\n|---|---|---|---|")
        for r in ray_rows:
            print(f"| {r['workers']} | {r['images_per_s']:.1f} | {r['startup_s']:.1f} | {r['wall_s']:.1f} |")
        print("\n" + on_paper(rows, ray_rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--million", action="store_true", help="1,000,000 vectors")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--stores", default="embedded,server,twostage",
                    help="comma-separated: embedded, server, twostage, twostage-server")
    ap.add_argument("--data", choices=("folds", "random"), default="folds")
    ap.add_argument("--fold-noise", type=float, default=sd.FoldsSpec.fold_noise, help="folds data: fold disagreement")
    ap.add_argument("--candidates", default="100,200,400", help="two-stage: first-stage sizes N to measure")
    ap.add_argument("--sim-dim", type=int, default=263, help="similar: image-to-image vector dims")
    ap.add_argument("--ray-only", action="store_true")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--work", type=Path, default=None, help="folder for the stores (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep each store after measuring it")
    ap.add_argument("--results", type=Path, default=None, help="append every row here (JSON lines)")
    ap.add_argument("--table", type=Path, default=None, help="only print the table of the rows in this file")
    args = ap.parse_args()
    args.candidates = [int(c) for c in args.candidates.split(",")]
    if args.table:
        saved = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
        table([r for r in saved if r["store"] != "ray"], [r for r in saved if r["store"] == "ray"], args.folds)
        return
    n = 1_000_000 if args.million else args.n
    work = Path(args.work or tempfile.mkdtemp(prefix="kger-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}; {os.cpu_count()} CPUs", flush=True)
    rows = [] if args.ray_only else stores(args, n, work)
    ray_rows = [] if args.no_ray else ray_throughput(work, args.folds, [1, 2])
    for r in ray_rows:
        save(args.results, {**r, "store": "ray"})
    table(rows, ray_rows, args.folds)


if __name__ == "__main__":
    main()
