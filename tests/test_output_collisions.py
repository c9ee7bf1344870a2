"""`kger batch` refuses two flags naming one file (issue 22 row 3): exit 1, one line, nothing written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.outputs import first_collision, require_distinct
from retrieval.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_distinct_files_pass_and_absent_ones_compare_by_name(tmp_path):
    assert first_collision({"a": tmp_path / "a", "b": tmp_path / "b", "c": None, "d": Path("-")}) is None
    assert first_collision({"a": tmp_path / "x" / ".." / "b", "b": tmp_path / "b"}) == ("a", "b")


def test_symbolic_and_hard_links_are_the_same_file(tmp_path):
    q = tmp_path / "q.txt"
    q.write_text("left ear\n")
    (tmp_path / "sym.txt").symlink_to(q)
    os.link(q, tmp_path / "hard.txt")
    (tmp_path / "dir").symlink_to(tmp_path)
    assert first_collision({"Q": q, "--out": tmp_path / "sym.txt"}) == ("Q", "--out")
    assert first_collision({"Q": q, "--report": tmp_path / "hard.txt"}) == ("Q", "--report")
    assert first_collision({"--out": tmp_path / "dir" / "new.jsonl", "--submission": tmp_path / "new.jsonl"})
    with pytest.raises(InputError, match="same file"):
        require_distinct({"Q": q, "--out": tmp_path / "hard.txt"})


@pytest.mark.parametrize("flags", [
    lambda q, d: ["--out", str(q)],
    lambda q, d: ["--out", str(d / "r.jsonl"), "--submission", str(d / "r.jsonl")],
    lambda q, d: ["--out", str(d / "r.jsonl"), "--report", str(d / "link.txt")],
    lambda q, d: ["--out", str(d / "r.jsonl"), "--submission", str(d / "hard.txt")],
], ids=["out=queries", "submission=out", "report=symlink-to-queries", "submission=hardlink-to-queries"])
def test_batch_collision_is_exit_1_before_anything_is_written(tmp_path, flags):
    """A real `kger batch` process: the query file keeps its bytes, no results file appears."""
    d = tmp_path
    q = d / "q.txt"
    q.write_text("left ear\nthroat\n")
    (d / "link.txt").symlink_to(q)
    os.link(q, d / "hard.txt")
    before = sorted(p.name for p in d.iterdir())
    done = subprocess.run([sys.executable, "-c", "from agent.cli import main; main()", "batch", str(q),
                           *flags(q, d)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "same file" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert q.read_text() == "left ear\nthroat\n"
    assert sorted(p.name for p in d.iterdir()) == before
