"""Latency of one offline `ask` turn (plan -> retrieve -> judge -> fuse -> answer) on a large store.

    python bench/agent_latency.py [--folds 10] [--store-size 10000] [--turns 40] [--rounds 2]

Builds a 10-fold untrained bundle, a store of `--store-size` vectors (the real ENTRep images when present,
the rest random unit vectors with random labels), then times turns with the offline planner and judge,
traces on (SQLite) and an in-memory checkpointer. Prints p50 / p95 and each node's share; with `--rounds N`
also each question with the corrective loop on, right after it with the loop off: p50 when the loop did not
trigger and when it did, how often it did, and the mean extra tool calls per question (issue 19).
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
    ap.add_argument("--rounds", type=int, default=2, help="also time each question with the corrective loop on "
                                                         "(this many extra rounds; 0: off only)")
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
    on_quiet, on_triggered, extra_tools = [], [], []  # with --rounds: the loop-on turns, and what they added
    for i in range(args.turns):
        q = QUESTIONS[i % len(QUESTIONS)]
        ans = assistant.ask(q, assistant.turn(rounds=0))  # one pass (the default is the loop: DEFAULT_ROUNDS)
        totals.append(ans.timings["total"])
        for node, ms in ans.timings.items():
            if node != "total":
                nodes.setdefault(node, []).append(ms)
        if args.rounds:  # the same question with the corrective loop on, right after (the same load)
            on = assistant.ask(q, assistant.turn(rounds=args.rounds))
            (on_triggered if on.cost["rounds"] else on_quiet).append(on.timings["total"])
            extra_tools.append(on.cost["tool_calls"] - ans.cost["tool_calls"])
    p50, p95 = statistics.median(totals), statistics.quantiles(totals, n=20)[18]
    print(f"offline ask turn: p50 {p50:.1f} ms, p95 {p95:.1f} ms over {args.turns} turns (goal: p50 < 100 ms)")
    whole = sum(statistics.median(v) for v in nodes.values())
    for node, v in nodes.items():
        print(f"  {node:8s} p50 {statistics.median(v):7.1f} ms  ({100 * statistics.median(v) / whole:4.1f} %)")
    if args.rounds:
        med = lambda v: f"{statistics.median(v):.1f} ms" if v else "n/a"  # noqa: E731
        print(f"--rounds {args.rounds} beside --rounds 0, paired per question: loop off p50 {med(totals)}, "
              f"loop on p50 {med(on_quiet + on_triggered)}; on, not triggered p50 {med(on_quiet)} "
              f"({len(on_quiet)} turns), triggered p50 {med(on_triggered)} ({len(on_triggered)} of {args.turns}); "
              f"mean extra tool calls per question {statistics.mean(extra_tools):.2f}")
    g.close()


if __name__ == "__main__":
    main()
