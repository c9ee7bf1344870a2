"""Gemini cost of the corrective loop, per question, through the local REST stub (tests/gemini_stub.py).

    PYTHONPATH=$PWD python bench/agent_loop_gemini.py --work /tmp/loop-work --seed 0 --pool 5

The real google-genai client talks to the stub; the stub plans one `retrieve` of the description and judges
every image with a score taken from the image bytes' hash (so some rounds are weak and the loop runs). It
counts, per question, the requests and input tokens the stub received (tokens: text characters / 4 and 258
per image, from the request bodies) for --rounds 0 and the loop, with the per-image judge and the listwise
one (--judge list). The judge cache is off, so every judged image costs what it would the first time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.agent_loop_items import HARD  # noqa: E402
from tests.gemini_stub import GeminiStub, Reply, text_reply  # noqa: E402


def _score(blob: dict) -> float:
    return int(hashlib.sha256(str(blob["data"]).encode()).hexdigest()[:4], 16) / 65535


def script(request):
    if request.body.get("tools"):
        text = request.texts()[0]
        desc = text.split("<description>")[-1].split("</description>")[0].strip() if "<description>" in text else text
        return Reply(200, {"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "retrieve", "args": {"query": desc[:200]}}}]}, "finishReason": "STOP",
            "index": 0}], "modelVersion": "stub"})
    blobs = request.inline_data()
    if len(blobs) == 1:
        return text_reply(json.dumps({"score": _score(blobs[0]), "justification": "stub", "region_seen": "unclear"}))
    return text_reply(json.dumps({"verdicts": [{"image": i, "score": _score(b), "justification": "stub",
                                                "region_seen": "unclear"} for i, b in enumerate(blobs, start=1)]}))


def tokens(request) -> int:
    chars = sum(len(t) for t in request.texts())
    return chars // 4 + 258 * len(request.inline_data())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=5)
    ap.add_argument("--n", type=int, default=len(HARD))
    args = ap.parse_args()
    root = args.work / f"split{args.seed}"
    os.environ["KGER_HOME"] = str(root / "home")
    from agent.assistant import Assistant, make_planner_and_judge
    from agent.llm import GeminiSettings

    base = Assistant.open(f"blind{args.seed}", persist=False)
    print("| judge | rounds | requests / q | input tokens / q | Gemini-counted requests / q | triggered |")
    print("|---|---|---|---|---|---|")
    for mode in ("image", "list"):
        for rounds in (0, 2):
            with GeminiStub(script) as stub:
                settings = GeminiSettings(api_key="fake-key-123456", base_url=stub.base_url, backoff_base=0.01,
                                          requests_per_minute=None)
                planner, judge = make_planner_and_judge("gemini", settings, judge_mode=mode)
                judge._cache_arg = False
                a = Assistant(searcher=base.searcher, llm="gemini", planner=planner, judge=judge, k=args.pool,
                              pool=args.pool)
                counted, trig = 0, 0
                for q, _ in HARD[: args.n]:
                    ans = a.ask(q, a.turn(rounds=rounds))
                    counted += ans.cost.get("gemini_requests", 0)
                    trig += ans.cost.get("rounds", 0) > 0
                n = args.n
                print(f"| {mode} | {rounds} | {len(stub.requests) / n:.1f} | "
                      f"{sum(tokens(r) for r in stub.requests) / n:.0f} | {counted / n:.1f} | {trig}/{n} |",
                      flush=True)


if __name__ == "__main__":
    main()
