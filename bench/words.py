"""A clinician's words, measured (issue 23): clinic notes with negatives and a request, typos, lay words.

On a labelled store of the 70 real ENTRep images (an untrained 2-fold bundle, `kger bundle init` then
`kger index` with cls.json, in a temp KGER_HOME: with labels a correctly read description always lands on its
class, so top-1 measures the reading), for each category of bench/words_items.py:
  - top-1 class: the share whose first image has a class the description allows (`kger ask`, offline);
  - region / side / state: the share whose filters (agent/constraints.filters_of) equal the truth;
  - negated -> query: items where a negated or normal region or finding became a query or a filter of the
    offline plan; bilateral -> side: items where "bilateral"/"both" became a side filter;
  - corrected: items where a word was read as another ("read 'rigth' as 'right'").
"before" runs the same on `git archive main` (main's lexicon and planner), "after" on this tree.

    python bench/words.py [--data ../shared/data/entrep/train] [--ref main] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("top1", "region", "side", "state", "negated_to_query", "bilateral_to_side", "corrected")


def kger(code: Path, *args) -> str:
    done = subprocess.run([sys.executable, "-c", "from agent.cli import main; main()", *map(str, args)], cwd=code,
                          env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"kger {' '.join(map(str, args))} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def build_store(data: Path, work: Path) -> Path:
    home, bundle = work / "home", work / "bundle"
    kger(ROOT, "bundle", "init", "--out", bundle, "--folds", "2", "--seed", "0")
    kger(ROOT, "index", data / "imgs", "--bundle", bundle, "--home", home)
    return home


def _sites(parsed) -> set[str]:
    return {p.site for p in (parsed.parts or (parsed,)) if p.site}


def evaluate(home: Path) -> dict:
    """Per category, the sums of METRICS and n, with this process's code (sys.path decides which)."""
    os.environ["KGER_HOME"] = str(home)
    sys.path.insert(0, str(ROOT / "bench"))
    from words_items import CATEGORIES

    from agent.assistant import Assistant
    from agent.constraints import filters_of
    from agent.plan import plan_description
    from retrieval import lexicon

    plain = getattr(lexicon, "parse_plain", None) or lexicon.parse  # (main has no lexicon.parse any more)
    try:  # the description parser: retrieval/reading.py now, lexicon.parse before it existed
        from retrieval.reading import parse as described
    except ImportError:
        described = lexicon.parse
    assistant = Assistant.open("default", k=5, pool=20, persist=False)
    out, misses = {}, []
    for cat, items in CATEGORIES.items():
        sums = dict.fromkeys(METRICS, 0) | {"n": 0, "ms": 0.0}
        for text, region, side, state, avoid in items:
            t = time.perf_counter()
            ans = assistant.ask(text)
            sums["ms"] += (time.perf_counter() - t) * 1000
            allowed = lexicon.classes_for(region, side, state)
            top = ans.rows[0].label if ans.rows else None
            f = filters_of(text)
            calls = plan_description(text)
            leak = False
            for c in calls:
                args, q = c["args"], plain(c["args"].get("query") or "")
                leak |= args.get("region") in avoid or bool(_sites(q) & set(avoid)) or bool(set(q.findings) & set(avoid))
            bilateral = any(w in text.lower() for w in ("bilateral", "both"))
            row = {"top1": top in allowed, "region": f.get("region") == region, "side": f.get("side") == side,
                   "state": f.get("state") == state, "negated_to_query": leak,
                   "bilateral_to_side": bilateral and any(c["args"].get("side") not in (None, side) for c in calls),
                   "corrected": bool(getattr(described(text), "corrections", ()))}
            for key, value in row.items():
                sums[key] += int(value)
            sums["n"] += 1
            if not row["top1"] or leak:
                misses.append({"category": cat, "text": text[-90:], "top1": top, "filters": f,
                               "queries": [c["args"].get("query") for c in calls]})
        out[cat] = sums
    return {"categories": out, "misses": misses}


def run_ref(ref: str, home: Path, work: Path) -> dict:
    """`evaluate` with the code of git ref `ref`, in a subprocess over the same store."""
    code = work / f"code-{ref}"
    code.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--eval-only", str(home), "--json"],
                          cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True,
                          timeout=1800)
    if done.returncode:
        raise SystemExit(f"the {ref} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def table(before: dict, after: dict) -> str:
    lines = [f"{'category':<14}{'n':>3}  " + "  ".join(f"{m:>19}" for m in METRICS[:-1]) + f"  {'corrected':>9}"
             + f"  {'ms/turn':>7}"]
    for cat, a in after["categories"].items():
        b = before["categories"][cat]
        cells = []
        for m in METRICS[:-1]:
            share = m in ("top1", "region", "side", "state")
            fmt = (lambda s, n: f"{s / n:.2f}") if share else (lambda s, n: f"{s}")
            cells.append(f"{fmt(b[m], b['n']) + ' -> ' + fmt(a[m], a['n']):>19}")
        lines.append(f"{cat:<14}{a['n']:>3}  " + "  ".join(cells) + f"  {a['corrected']:>9}"
                     + f"  {a['ms'] / a['n']:>7.0f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "entrep" / "train"))
    ap.add_argument("--ref", default="main", help="the git ref measured as 'before'")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--eval-only", default=None, help=argparse.SUPPRESS)  # a KGER_HOME: evaluate, print JSON
    args = ap.parse_args()
    if args.eval_only:
        # That tree's code only: an editable install's finder would supply, from this tree, the modules it lacks
        # (retrieval.reading before it existed), mixing two versions in one run.
        sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__name__", "") != "_EditableFinder"]
        sys.path.insert(0, os.getcwd())
        print(json.dumps(evaluate(Path(args.eval_only))))
        return
    data = Path(args.data)
    if not (data / "cls.json").is_file():
        print(f"skipped: no ENTRep training data at {data}")
        return
    with tempfile.TemporaryDirectory(prefix="kger-words-") as tmp:
        work = Path(tmp)
        t = time.time()
        home = build_store(data, work)
        print(f"store: 70 labelled real images, untrained 2-fold bundle ({time.time() - t:.0f} s)", file=sys.stderr)
        before = run_ref(args.ref, home, work)
        sys.path.insert(0, str(ROOT))
        after = evaluate(home)
    if args.json:
        print(json.dumps({"before": before, "after": after}, indent=2))
        return
    print(f"before ({args.ref}) -> after (this tree); shares of items, counts for the two failure columns\n")
    print(table(before, after))
    for label, result in (("before", before), ("after", after)):
        print(f"\n{label}: {len(result['misses'])} items with a wrong top-1 class or a negated part searched")
        for m in result["misses"][:40]:
            print(f"  [{m['category']}] ...{m['text']!r}: top-1 {m['top1']}, filters {m['filters']}")


if __name__ == "__main__":
    main()
