"""Latency of `ask` over HTTP against a warm `kger serve` (client-side wall time, one request at a time).

    python bench/serve_latency.py [--folds 10] [--store-size 10000] [--requests 40]

Builds a 10-fold bundle (with its ONNX export) and a store of `--store-size` vectors, starts `kger serve
--port 0` in its own process, and times POST /ask with the offline planner and judge. Goal: p50 <= 100 ms.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.bigstore import QUESTIONS, build, parser, start_serve  # noqa: E402


def main() -> None:
    import httpx

    ap = parser(__doc__)
    ap.add_argument("--requests", type=int, default=40)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp())
    build(home, args.folds, args.store_size, export=True)
    env = dict(os.environ, KGER_HOME=str(home), PYTHONPATH=os.pathsep.join(
        filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    proc, base = start_serve(home, env, timeout=120)
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            health = c.get("/health").json()
            for q in QUESTIONS[:3]:
                c.post("/ask", json={"text": q, "k": 5}).raise_for_status()  # warm-up
            walls, server = [], []
            for i in range(args.requests):
                t0 = time.perf_counter()
                r = c.post("/ask", json={"text": QUESTIONS[i % len(QUESTIONS)], "k": 5})
                walls.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                server.append(r.json()["timings"]["total"])
        p = lambda v: (statistics.median(v), statistics.quantiles(v, n=20)[18])  # noqa: E731
        print(f"kger serve, {health['images']} images, {health['folds']} folds, encoder {health['encoder']}, "
              f"{args.requests} requests")
        print(f"  POST /ask over HTTP: p50 {p(walls)[0]:.1f} ms, p95 {p(walls)[1]:.1f} ms (goal: p50 <= 100 ms)")
        print(f"  of which the turn:   p50 {p(server)[0]:.1f} ms, p95 {p(server)[1]:.1f} ms")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
