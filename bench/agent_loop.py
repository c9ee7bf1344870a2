"""The corrective loop, measured blind: --rounds 0 against the loop (agent/reflect.py), per split x set x pool.

Run on demand (not a test). It reuses the splits bench/blind_quality.py builds (same seeds, same held-out
images indexed without labels), so build them first:

    PYTHONPATH=$PWD python bench/blind_quality.py --folds 3 --epochs 20 --views 4 --work /tmp/loop-work
    PYTHONPATH=$PWD python bench/agent_loop.py --work /tmp/loop-work --json /tmp/loop-work/loop.json

Query sets: the 7 class names (class truth), the ENTRep descriptions whose image has a class (region truth, as
blind_quality scores them) and the 32 harder descriptions of bench/agent_loop_items.py (class or region truth).
Pools 5, 10 and 20, k = pool (every candidate ranked; nDCG@10 over the top 10). Offline planner and judge. Per
cell: R@1, MRR, nDCG@10 for rounds 0 and the loop, how often the loop triggered, tool and judge calls per
question, warm wall time per question. `--signals` also dumps, for rounds 0, each question's best judged score
and whether its top-1 was right (what LOW_BEST in agent/reflect.py was chosen on, split 0 only).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.agent_loop_items import HARD  # noqa: E402
from bench.blind_quality import region_truth  # noqa: E402
from retrieval import lexicon  # noqa: E402
from retrieval.metrics import mrr, ndcg_at_k, recall_at_k  # noqa: E402


def query_sets() -> dict[str, dict[str, str]]:
    return {"classes": {lexicon.class_description(c): c for c in lexicon.CLASSES},
            "entrep": region_truth(), "hard": dict(HARD)}


def relevant(truth: str, labels: dict[str, str]) -> set[str]:
    """Held-out image names that satisfy a class or region truth."""
    if truth in lexicon.CLASSES:
        return {n for n, c in labels.items() if c == truth}
    return {n for n, c in labels.items() if lexicon.class_site(c) == truth}


def run_cell(assistant, queries: dict[str, str], labels: dict[str, str], pool: int, rounds: int) -> dict:
    r1, mr, nd, trig, tools, judged, ms, sig = [], [], [], [], [], [], [], []
    for q, truth in queries.items():
        rel = relevant(truth, labels)
        t0 = time.perf_counter()
        ans = assistant.ask(q, assistant.turn(k=pool, pool=pool, rounds=rounds, kind="eval"))
        ms.append((time.perf_counter() - t0) * 1000)
        ids = [Path(r.path).name for r in ans.rows]
        r1.append(recall_at_k(ids, rel, 1) if rel else 0.0)
        mr.append(mrr(ids, rel))
        nd.append(ndcg_at_k(ids, rel, 10))
        trig.append(ans.cost.get("rounds", 0) > 0)
        tools.append(ans.cost.get("tool_calls", 0))
        judged.append(ans.cost.get("judge_calls", 0))
        first = ans.rounds[0]["signals"] if ans.rounds else {}
        sig.append({"q": q, "best_judge": first.get("best_judge"), "best_retrieval": first.get("best_retrieval"),
                    "weak_below": first.get("weak_below"), "right": bool(ids and ids[0] in rel),
                    "notice": ans.notice is not None})
    n = len(queries)
    return {"n": n, "R@1": sum(r1) / n, "MRR": sum(mr) / n, "nDCG@10": sum(nd) / n, "trigger": sum(trig) / n,
            "tool_calls": sum(tools) / n, "judge_calls": sum(judged) / n, "ms_p50": statistics.median(ms),
            "ms_mean": sum(ms) / n, "signals": sig}


def run_split(seed: int, work: Path, pools: list[int], loop_rounds: int) -> dict:
    from agent.assistant import Assistant

    root = work / f"split{seed}"
    os.environ["KGER_HOME"] = str(root / "home")
    labels = json.loads((root / "held" / "cls.json").read_text())
    assistant = Assistant.open(f"blind{seed}", persist=False)
    assistant.ask("left ear")  # warm: models loaded, the store's calibration measured (agent/evidence.py)
    out = {}
    for name, queries in query_sets().items():
        for pool in pools:
            for rounds in (0, loop_rounds):
                out[f"{name}/{pool}/{rounds}"] = run_cell(assistant, queries, labels, pool, rounds)
    return out


def table(results: dict[int, dict], pools: list[int], loop_rounds: int) -> str:
    lines = ["| split | set | pool | R@1 r0 -> loop | MRR r0 -> loop | nDCG@10 r0 -> loop | trigger | tool calls "
             "r0 -> loop | judge calls r0 -> loop | p50 ms r0 -> loop |", "|---|---|---|---|---|---|---|---|---|---|"]
    for seed, cells in results.items():
        for name in query_sets():
            for pool in pools:
                a, b = cells[f"{name}/{pool}/0"], cells[f"{name}/{pool}/{loop_rounds}"]
                flag = " !" if b["R@1"] < a["R@1"] - 1e-9 or b["MRR"] < a["MRR"] - 1e-9 else ""
                lines.append(f"| {seed} | {name} ({a['n']}) | {pool} | {a['R@1']:.3f} -> {b['R@1']:.3f}{flag} | "
                             f"{a['MRR']:.3f} -> {b['MRR']:.3f} | {a['nDCG@10']:.3f} -> {b['nDCG@10']:.3f} | "
                             f"{b['trigger']:.2f} | {a['tool_calls']:.2f} -> {b['tool_calls']:.2f} | "
                             f"{a['judge_calls']:.1f} -> {b['judge_calls']:.1f} | {a['ms_p50']:.0f} -> "
                             f"{b['ms_p50']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="bench/blind_quality.py's --work folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pools", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--rounds", type=int, default=2, help="the loop's extra rounds (compared with 0)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = {}
    for seed in args.seeds:
        if not (args.work / f"split{seed}" / "index.json").is_file():
            print(f"split {seed}: not built in {args.work}, skipped", file=sys.stderr)
            continue
        results[seed] = run_split(seed, args.work, args.pools, args.rounds)
        print(f"split {seed} done", file=sys.stderr, flush=True)
    print(table(results, args.pools, args.rounds))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
