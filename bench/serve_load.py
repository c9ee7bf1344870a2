"""`kger serve` under concurrent users (locust, headless): retrieval must not queue behind judged turns.

    python bench/serve_load.py [--folds 2] [--store-size 5000] [--seconds 30] [--users 10 50]

Builds a K-fold untrained bundle (ONNX export) and a store of N vectors (bench/bigstore.py), starts `kger serve
--port 0` with a token, and for each user count runs half the users on POST /search (retrieval only) and half on
POST /ask (the whole offline agent) against 127.0.0.1 only. Reports /search p50/p95, /ask p50/p95, failures and
the server's RSS before and after. Goal (issue 20): /search p95 <= 200 ms at 50 users while /ask is loaded,
0 failures. Before the split (one queue for both), /search went from p50 18 ms to 640 ms at 50 users.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from gevent import monkey

monkey.patch_all()  # locust's users are greenlets: patch before anything opens a socket

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.bigstore import QUESTIONS, build, parser, start_serve  # noqa: E402

TOKEN = "serve-load-bench-token-0123456789"
ASKING = True  # --search-only: False
SEARCH_WAIT = (0.2, 0.6)  # s between one user's searches (a person refining a query)
ASK_WAIT = (0.05, 0.2)  # s between one user's asks: keeps the turn queue full, the load /search must not feel


def _users(base: str):
    from locust import HttpUser, between, task

    auth = {"Authorization": f"Bearer {TOKEN}"}

    class Searcher(HttpUser):
        host, wait_time = base, between(*SEARCH_WAIT)

        @task
        def search(self):
            q = QUESTIONS[int(time.time() * 1000) % len(QUESTIONS)]
            self.client.post("/search", json={"text": q, "k": 10}, headers=auth, name="/search")

    class Asker(HttpUser):
        host, wait_time = base, between(*ASK_WAIT)

        @task
        def ask(self):
            q = QUESTIONS[int(time.time() * 1000) % len(QUESTIONS)]
            self.client.post("/ask", json={"text": q, "k": 5}, headers=auth, name="/ask", timeout=300)

    return [Searcher, Asker] if ASKING else [Searcher]


def run_load(base: str, users: int, seconds: float) -> dict:
    """`users` (half searching, half asking) for `seconds`; the stats of each endpoint."""
    import gevent
    from locust.env import Environment

    assert base.startswith("http://127.0.0.1:"), "this bench loads only this machine"
    env = Environment(user_classes=_users(base))
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=users)  # all at once: the point is the queueing, not the ramp
    gevent.spawn_later(seconds, runner.quit)
    runner.greenlet.join()
    out = {}
    for name in ("/search", "/ask"):
        s = env.stats.get(name, "POST")
        out[name] = {"requests": s.num_requests, "failures": s.num_failures, "p50": s.get_response_time_percentile(0.5) if s.num_requests else 0,
                     "p95": s.get_response_time_percentile(0.95) if s.num_requests else 0,
                     "rps": s.num_requests / seconds}
    return out


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> None:
    import httpx

    ap = parser(__doc__)
    ap.set_defaults(folds=2, store_size=5000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--users", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--home", type=Path, help="reuse the store built in this folder by an earlier run")
    ap.add_argument("--search-only", action="store_true", help="no /ask users: the baseline /search alone")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="kger-load-"))
    if not (home / "bundle").is_dir():
        home.mkdir(parents=True, exist_ok=True)
        build(home, args.folds, args.store_size, export=True)
    global ASKING
    ASKING = not args.search_only
    env = dict(os.environ, KGER_HOME=str(home), KGER_SERVE_TOKEN=TOKEN, PYTHONPATH=os.pathsep.join(
        filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    proc, base = start_serve(home, env)
    try:
        with httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            health = c.get("/health").json()
            for q in QUESTIONS[:3]:  # warm-up: the graph, the encoder, Chroma's index
                c.post("/ask", json={"text": q, "k": 5}).raise_for_status()
                c.post("/search", json={"text": q, "k": 10}).raise_for_status()
        before = rss_mb(proc.pid)
        print(f"kger serve: {health['images']} images, {health['folds']} folds, encoder {health['encoder']}; "
              f"RSS {before:.0f} MB after warm-up; {args.seconds:.0f} s per load, half /search, half /ask")
        for users in args.users:
            st = run_load(base, users, args.seconds)
            s, a = st["/search"], st["/ask"]
            print(f"  {users:3d} users: /search p50 {s['p50']:.0f} ms, p95 {s['p95']:.0f} ms ({s['rps']:.1f}/s) | "
                  f"/ask p50 {a['p50']:.0f} ms, p95 {a['p95']:.0f} ms ({a['rps']:.1f}/s) | failures "
                  f"{s['failures'] + a['failures']} of {s['requests'] + a['requests']} | RSS {rss_mb(proc.pid):.0f} MB")
        print(f"  RSS before {before:.0f} MB, after {rss_mb(proc.pid):.0f} MB (goal: /search p95 <= 200 ms at 50 "
              "users while /ask is loaded, 0 failures)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
