"""retrieval.ray_index.without_known_noise on the real file descriptor 2, in a child process: Ray's known
false error line is dropped, every other line (and a progress bar's partial \\r line) passes, in order, and
file descriptor 2 is the terminal's again afterwards."""
from __future__ import annotations

import subprocess
import sys

CHILD = r'''
import os, sys
from retrieval.ray_index import without_known_noise
os.write(2, b"before\n")
with without_known_noise():
    os.write(2, b"[2026-12-04 10:00:00,000 E 1 1] core_worker.cc:2170: Actor with class name: 'MapWorker' has "
                b"constructor arguments in the object store and max_restarts > 0. If the arguments...\n")
    os.write(2, b"a real error line\n")
    sys.stderr.write("\rindexing 3/70")
    sys.stderr.flush()
    os.write(2, b"\rindexing 70/70\nlast line without newline")
os.write(2, b"\nafter\n")
'''


def test_the_known_ray_line_is_dropped_and_everything_else_passes():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert b"max_restarts" not in done.stderr and b"core_worker" not in done.stderr, done.stderr
    assert done.stderr == (b"before\na real error line\n\rindexing 3/70\rindexing 70/70\n"
                           b"last line without newline\nafter\n"), done.stderr
