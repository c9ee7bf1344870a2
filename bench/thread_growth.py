"""A conversation thread's cost per turn, over a long thread (issue 20 §1).

    python bench/thread_growth.py [--turns 500] [--pool 20]

One `kger chat`-like thread on the records a session keeps (agent/persist.py: checkpoints.db through LangGraph's
SqliteSaver, traces.db), with the offline planner and judge over an in-memory store of 70 images (a word-
overlap searcher: offline, no model), so what is measured is the thread, not retrieval. The turns cycle
through descriptions and the follow-ups that need the previous turn ("only the left side", "more like
number 2"). Per turn it records the bytes the turn wrote into checkpoints (serialized checkpoints and
writes), the growth of checkpoints.db on disk and the turn's time, wall and CPU. A shared machine's load
drifts over a run of minutes, so the last 30 turns alternate with a fresh thread's first 30: its turns 10-30
are measured under the same load as the long thread's 480-500 ("paired"). The check (exit 1 if it fails):
bytes per turn at turns 490-500 within 10 % of turns 10-20, turn p50 at 480-500 <= 1.1 x turns 10-30 (of
this thread, or paired), and both follow-ups answered right at the last turns.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ("ear-left", "ear-right", "nose-left", "nose-right", "vc-open", "vc-closed", "throat")
# ten turns, so every window of 10 or 20 turns holds the same mix
TURNS = ("left ear, tympanic membrane with wax", "only the right side", "more like number 2",
         "nose, right nasal cavity with a polyp", "only the left side", "vocal cords open", "more like number 2",
         "throat, tonsils", "vocal cords closed", "left ear wax")


class OverlapSearcher:
    """In-memory stand-in for retrieval.search.Searcher: an image scores by the words its label shares with
    the query (70 images, 10 per class); `similar` is the real rule over it."""

    from retrieval.search import Searcher as _Real

    similar = _Real.similar

    class bundle:  # noqa: N801 (what Assistant reads of a bundle)
        fingerprint, folds, path = "overlap000000000", 2, None

    def __init__(self):
        self.items = [{"id": hashlib.sha256(f"{c}{j}".encode()).hexdigest(), "path": f"/img/{c}-{j}.png", "label": c}
                      for c in CLASSES for j in range(10)]

    def encode_text(self, query: str) -> set:
        return set(re.findall(r"[a-z]+", query.lower().replace("vocal cords", "vc")))

    def by_vector(self, words: set, k: int, classes=None):
        from retrieval.candidate import Candidate

        scored = sorted(((0.3 * len(words & set(it["label"].split("-"))) + 0.01 * (i % 7), i, it)
                         for i, it in enumerate(self.items) if not classes or it["label"] in classes),
                        key=lambda t: (-t[0], t[1]))[:k]
        return [Candidate(rank=r, id=it["id"], path=it["path"], score=round(s, 6), label=it["label"],
                          fold_scores=[round(s + 0.01, 6), round(s - 0.01, 6)])
                for r, (s, _, it) in enumerate(scored, 1)]

    def like(self, image_id: str, k: int = 10, classes=None):
        label = next(it["label"] for it in self.items if it["id"] == image_id)
        return self.by_vector(set(label.split("-")), k, classes)

    def image(self, path, k: int = 10, classes=None):
        return self.like(next(it["id"] for it in self.items if it["path"] == str(path)), k, classes)


def follow_ups_work(answers: list) -> dict[str, bool]:
    """Whether the last 'only the left side' kept the previous description on the left, and the last 'more
    like number 2' answered with the previous constraints (and without #2 itself)."""
    ok = {}
    for i, a in enumerate(answers):
        prev = answers[i - 1] if i else None
        if a.input == "only the left side" and prev is not None:
            ok["only the left side"] = (a.status == "ok" and bool(a.rows)
                                        and all(r.label == "nose-left" for r in a.rows)
                                        and a.question == prev.question.replace("right", "left"))
        if a.input == "more like number 2" and prev is not None:
            ok["more like #2"] = (a.status == "ok" and bool(a.rows) and a.constraints == prev.constraints
                                  and prev.rows[1].id not in {r.id for r in a.rows})
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=500)
    ap.add_argument("--pool", type=int, default=20)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kger-thread-"))
    os.environ["KGER_HOME"] = str(home)
    from agent.assistant import Assistant
    from agent.judges.offline import OfflineJudge
    from agent.persist import open_records

    traces, saver = open_records()
    written = [0]
    dumps = saver.serde.dumps_typed

    def counting(obj):  # every checkpoint and write goes through the saver's serializer once
        out = dumps(obj)
        written[0] += len(out[1])
        return out

    saver.serde.dumps_typed = counting
    assistant = Assistant(searcher=OverlapSearcher(), judge=OfflineJudge(), k=5, pool=args.pool, traces=traces,
                          checkpointer=saver)
    db = home / "checkpoints.db"
    per_turn, growth, ms, cpu, answers = [], [], [], [], []
    fresh_ms, fresh_cpu = [], []
    request = assistant.turn(thread="bench-thread", kind="chat")
    fresh = assistant.turn(thread="bench-fresh", kind="chat")

    def timed(text: str, req, wall: list, cpus: list):
        t0, c0 = time.perf_counter(), time.process_time()
        answer = assistant.ask(text, req)
        wall.append((time.perf_counter() - t0) * 1000)
        cpus.append((time.process_time() - c0) * 1000)
        return answer

    for n in range(args.turns):
        if n >= args.turns - 30:  # the same load for both: a fresh thread's turns 0-30 between the last 30
            timed(TURNS[len(fresh_ms) % len(TURNS)], fresh, fresh_ms, fresh_cpu)
        before_w, before_s = written[0], db.stat().st_size
        answers.append(timed(TURNS[n % len(TURNS)], request, ms, cpu))
        per_turn.append(written[0] - before_w)
        growth.append(db.stat().st_size - before_s)

    def mean(xs: list) -> float:
        return statistics.mean(xs) if xs else 0.0

    last = args.turns
    early_b, late_b = mean(per_turn[10:20]), mean(per_turn[last - 10:last])
    early_t, late_t = statistics.median(ms[10:30] or ms), statistics.median(ms[max(0, last - 20):last])
    early_c, late_c = statistics.median(cpu[10:30] or cpu), statistics.median(cpu[max(0, last - 20):last])
    paired_t = statistics.median(fresh_ms[10:30] or fresh_ms)
    paired_c = statistics.median(fresh_cpu[10:30] or fresh_cpu)
    works = follow_ups_work(answers[-len(TURNS) - 1:])
    print(f"turns {last}, pool {args.pool}, home {home}")
    print(f"checkpoint bytes written per turn: turns 10-20 {early_b:,.0f}, turns {last - 10}-{last} {late_b:,.0f} "
          f"(ratio {late_b / early_b:.3f})")
    print(f"checkpoints.db growth per turn: turns 10-20 {mean(growth[10:20]):,.0f}, turns {last - 10}-{last} "
          f"{mean(growth[last - 10:last]):,.0f}; file {db.stat().st_size:,} bytes, traces.db "
          f"{(home / 'traces.db').stat().st_size:,} bytes")
    print(f"turn p50: turns 10-30 {early_t:.1f} ms, turns {max(0, last - 20)}-{last} {late_t:.1f} ms "
          f"(ratio {late_t / early_t:.3f}); CPU p50 {early_c:.1f} ms, {late_c:.1f} ms (ratio {late_c / early_c:.3f})")
    print(f"paired (a fresh thread's turns 10-30 between the long thread's last turns, same load): p50 "
          f"{paired_t:.1f} ms vs {late_t:.1f} ms (ratio {late_t / paired_t:.3f}); CPU {paired_c:.1f} ms vs "
          f"{late_c:.1f} ms (ratio {late_c / paired_c:.3f})")
    print(f"follow-ups at the last turns: {works}")
    ok = (abs(late_b - early_b) <= 0.1 * early_b and min(late_t / early_t, late_t / paired_t) <= 1.1
          and len(works) == 2 and all(works.values()))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
