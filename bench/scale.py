"""Stores at archive scale, and indexing on Ray at 1 vs 2 workers. On demand, never a test.

    python bench/scale.py                   # 100,000 vectors: embedded store and a `chroma run` server
    python bench/scale.py --million         # 1,000,000 vectors (about an hour of inserts on 2 cores)
    python bench/scale.py --ray-only        # only the Ray throughput part

Vectors are random unit vectors of 640 dims (10 folds x 64, the shape a 10-fold bundle stores), each with a
class drawn uniformly from 7 (the ENTRep classes): the worst case for an approximate index, since random
points in 640 dims have no neighbourhood structure to exploit (real embeddings cluster). Queries are 200 more
random unit vectors. Both stores go through kger's own `Gallery` (its HNSW settings: M 32, ef_construction
200, ef_search 400; upserts in batches of up to 5,000; each query also asks the store for its count and bundle
binding, as kger's queries do). Recall@10 is against exact search by numpy over the same vectors (with the
class filter: over that class's vectors).

Measured per store: upsert rate, size on disk, the server's resident memory (or this process's growth for the
embedded store), query latency p50/p95 for top-10 with and without a class filter, and recall@10.

Ray part: the 70 real ENTRep images in 4 orientations (280 distinct files) indexed with `index_with_ray` on a
local runtime into the server, with a 10-fold bundle, at 1 and at 2 workers. Throughput counts from the first
stored batch to the last (actor start-up, a fixed cost per run, is printed apart).
"""
from __future__ import annotations

import argparse
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
import retrieval  # noqa: E402,F401  (first: sets the OpenMP wait policy before torch loads)

import numpy as np  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
CLASSES = ["ear-left", "ear-right", "nose-left", "nose-right", "vc-open", "vc-closed", "throat"]
DIM, CHUNK = 640, 5000


def unit(rng, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


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
    log = open(path.parent / "server.log", "wb")
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


def exact_top10(data: np.ndarray, queries: np.ndarray, mask: np.ndarray | None = None) -> list[set[int]]:
    idx = np.arange(len(data)) if mask is None else np.flatnonzero(mask)
    sub = data if mask is None else data[idx]
    scores = sub @ queries.T  # (n, queries)
    return [set(idx[np.argpartition(-scores[:, j], 10)[:10]].tolist()) for j in range(len(queries))]


def bench_store(label: str, gallery, data: np.ndarray, cls: np.ndarray, queries: np.ndarray, disk: Path,
                pid: int) -> dict:
    rss0 = rss_mb(pid)
    t0 = time.perf_counter()
    for s in range(0, len(data), CHUNK):
        e = min(len(data), s + CHUNK)
        gallery.upsert([f"v{i:07d}" for i in range(s, e)], data[s:e],
                       [{"cls": CLASSES[c], "name": f"v{i}"} for i, c in zip(range(s, e), cls[s:e])])
        if (s // CHUNK) % 20 == 0:
            print(f"  {label}: {e:,} upserted, {e / (time.perf_counter() - t0):,.0f}/s", flush=True)
    upsert_s = time.perf_counter() - t0
    row = {"store": label, "n": len(data), "upsert_per_s": len(data) / upsert_s, "disk_mb": du_mb(disk),
           "rss_mb": rss_mb(pid), "rss_growth_mb": rss_mb(pid) - rss0}
    target = CLASSES[2]
    exact = exact_top10(data, queries)
    exact_f = exact_top10(data, queries, cls == CLASSES.index(target))
    for name, where, truth in (("all", None, exact), ("class", {"cls": target}, exact_f)):
        gallery.query(queries[0], k=10, where=where)  # warm-up
        times, hits = [], 0
        for q, t in zip(queries, truth):
            t1 = time.perf_counter()
            got = gallery.query(q, k=10, where=where)
            times.append((time.perf_counter() - t1) * 1000)
            hits += len({int(h.id[1:]) for h in got} & t)
        row[f"p50_ms_{name}"] = float(np.percentile(times, 50))
        row[f"p95_ms_{name}"] = float(np.percentile(times, 95))
        row[f"recall10_{name}"] = hits / (10 * len(queries))
    row["rss_mb"] = rss_mb(pid)
    row["rss_peak_mb"] = rss_mb(pid, "VmHWM")
    return row


def stores(n: int, nq: int, work: Path, which: set[str]) -> list[dict]:
    from store.gallery import Gallery

    rng = np.random.default_rng(0)
    print(f"making {n:,} random unit vectors of {DIM} dims ...", flush=True)
    data = np.concatenate([unit(rng, min(CHUNK * 20, n - s)) for s in range(0, n, CHUNK * 20)])
    cls = rng.integers(0, len(CLASSES), n)
    queries = unit(rng, nq)
    rows = []
    if "embedded" in which:
        home = work / "home"
        g = Gallery.open("scale", home=home, create=True)
        rows.append(bench_store("embedded", g, data, cls, queries, home, os.getpid()))
        g.close()
        print(rows[-1], flush=True)
    if "server" in which:
        proc, url = start_server(work / "server-db")
        try:
            g = Gallery.open("scale", url=url, create=True)
            rows.append(bench_store("server", g, data, cls, queries, work / "server-db", proc.pid))
            g.close()
        finally:
            proc.terminate()
            proc.wait()
        print(rows[-1], flush=True)
    return rows


def ray_throughput(work: Path, folds: int, workers_list: list[int]) -> list[dict]:
    from PIL import Image, ImageOps

    from retrieval.bundle import load_bundle, load_ensemble
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
            rep = index_with_ray(imgs, load_model=partial(load_ensemble, bundle),
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--million", action="store_true", help="1,000,000 vectors")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--stores", default="embedded,server")
    ap.add_argument("--ray-only", action="store_true")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--work", type=Path, default=None, help="folder for the stores (default: a temporary one)")
    args = ap.parse_args()
    n = 1_000_000 if args.million else args.n
    work = Path(args.work or tempfile.mkdtemp(prefix="kger-scale-"))
    print(f"work folder {work}; {os.cpu_count()} CPUs", flush=True)
    rows = [] if args.ray_only else stores(n, args.queries, work, set(args.stores.split(",")))
    ray_rows = [] if args.no_ray else ray_throughput(work, args.folds, [1, 2])
    print(f"\nstores: {DIM}-d random unit vectors, top-10, {args.queries} random queries, class filter = 1 of 7")
    head = ("store", "n", "upsert/s", "disk MB", "RSS MB", "p50 ms", "p95 ms", "recall@10",
            "p50 ms cls", "p95 ms cls", "recall@10 cls")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        rss = r["rss_mb"] if r["store"] == "server" else r["rss_growth_mb"]
        print(f"| {r['store']} | {r['n']:,} | {r['upsert_per_s']:,.0f} | {r['disk_mb']:,.0f} | {rss:,.0f} | "
              f"{r['p50_ms_all']:.1f} | {r['p95_ms_all']:.1f} | {r['recall10_all']:.3f} | {r['p50_ms_class']:.1f} | "
              f"{r['p95_ms_class']:.1f} | {r['recall10_class']:.3f} |")
    if ray_rows:
        print(f"\nRay, local runtime, {args.folds}-fold bundle, {ray_rows[0]['images']} images:")
        print("| workers | images/s | start-up s | wall s |\n|---|---|---|---|")
        for r in ray_rows:
            print(f"| {r['workers']} | {r['images_per_s']:.1f} | {r['startup_s']:.1f} | {r['wall_s']:.1f} |")
        if len(ray_rows) == 2:
            print(f"2 vs 1 workers: {ray_rows[1]['images_per_s'] / ray_rows[0]['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
