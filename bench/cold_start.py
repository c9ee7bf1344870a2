"""Whole-process start-up of `kger search TEXT` and `kger ask TEXT`: the torch path vs the ONNX export path.

    python bench/cold_start.py [--folds 10] [--store-size 10000] [--runs 5]

One 10-fold bundle (with its export) and one store; each command runs `--runs` times per path after one
warm-up (page cache), forced with KGER_ENCODER=torch|onnx. Prints the median wall time, the median peak
memory (max RSS of the process) and the ratio torch/onnx. Goals (2 cores): search <= 1.5 s, ask <= 3 s,
peak memory <= 500 MB on the export path.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.bigstore import parser  # noqa: E402

KGER = [sys.executable, "-c", "from agent.cli import main; main()"]
COMMANDS = {"search": ["search", "left ear, tympanic membrane", "--k", "10"],
            "ask": ["ask", "left ear, tympanic membrane", "--k", "10"]}


def run_once(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one whole process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(KGER + argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp())
    # Built in a child: Linux keeps a process's peak RSS across fork+exec, so this process must stay small
    # or every measured child would report at least its size.
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from bench.bigstore import build; "
                    "build(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))", str(home), str(args.folds),
                    str(args.store_size)], cwd=ROOT, check=True)
    base = dict(os.environ, KGER_HOME=str(home), PYTHONPATH=os.pathsep.join(
        filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    rows = []
    for name, argv in COMMANDS.items():
        res = {}
        for backend in ("torch", "onnx"):
            env = dict(base, KGER_ENCODER=backend)
            run_once(argv, env)  # warm-up
            walls, rss = zip(*(run_once(argv, env) for _ in range(args.runs)))
            res[backend] = (statistics.median(walls), statistics.median(rss))
        rows.append((name, res))
    print(f"cold start, {args.folds}-fold bundle, {args.store_size} images, median of {args.runs} runs, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"| command | torch wall | export wall | ratio | torch peak MB | export peak MB |")
    print(f"|---|---|---|---|---|---|")
    for name, res in rows:
        (tw, tm), (ow, om) = res["torch"], res["onnx"]
        print(f"| kger {name} TEXT | {tw:.2f} s | {ow:.2f} s | {tw / ow:.1f}x | {tm:.0f} | {om:.0f} |")


if __name__ == "__main__":
    main()
