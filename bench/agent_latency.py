"""Latency of one offline `ask` turn (plan -> retrieve -> judge -> fuse -> answer) on a large store.

    python bench/agent_latency.py [--folds 10] [--store-size 10000] [--turns 40]

Builds a 10-fold untrained bundle, a store of `--store-size` vectors (the real ENTRep images when present,
the rest random unit vectors with random labels), then times turns with the offline planner and judge,
traces on (SQLite) and an in-memory checkpointer. Prints p50 / p95 and each node's share.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import retrieval  # noqa: E402,F401  (first: sets the OpenMP wait policy before torch loads)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.bigstore import QUESTIONS, build, parser  # noqa: E402


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--turns", type=int, default=40)
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp())
    from agent.assistant import Assistant
    from retrieval.search import Searcher
    from store.gallery import Gallery
    from store.traces import TraceDB

    ens = build(home, args.folds, args.store_size, export=False)
    g = Gallery.open("default")
    assistant = Assistant(searcher=Searcher(ens, g), llm="offline", k=5, pool=20, traces=TraceDB(home / "traces.db"))
    for q in QUESTIONS[:3]:
        assistant.ask(q)  # warm-up
    totals, nodes = [], {}
    for i in range(args.turns):
        ans = assistant.ask(QUESTIONS[i % len(QUESTIONS)])
        totals.append(ans.timings["total"])
        for node, ms in ans.timings.items():
            if node != "total":
                nodes.setdefault(node, []).append(ms)
    p50, p95 = statistics.median(totals), statistics.quantiles(totals, n=20)[18]
    print(f"offline ask turn: p50 {p50:.1f} ms, p95 {p95:.1f} ms over {args.turns} turns (goal: p50 < 100 ms)")
    whole = sum(statistics.median(v) for v in nodes.values())
    for node, v in nodes.items():
        print(f"  {node:8s} p50 {statistics.median(v):7.1f} ms  ({100 * statistics.median(v) / whole:4.1f} %)")
    g.close()


if __name__ == "__main__":
    main()
