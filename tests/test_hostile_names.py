"""Hostile names and values outside the server (issue 22 row 10): a huge --every is refused, a newline in a file
name is shown and stored escaped, and no raw NUL or control character reaches an HTML report."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.core.report import render_batch, render_run
from retrieval.printable import visible
from retrieval.video import frame_name, parse_every
from store.traces import TraceDB

ROOT = Path(__file__).resolve().parents[1]
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _kger(*args: str) -> subprocess.CompletedProcess:
    """A real kger process; a wide terminal, so rich does not wrap a skip line (only a raw newline splits one)."""
    return subprocess.run([sys.executable, "-c", "from agent.cli import main; main()", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "1000"})


def test_every_has_an_upper_bound():
    assert parse_every("3600s") == 3600
    for bad in ("99999999999999999999s", "3601", "1e400"):
        with pytest.raises(ValueError):
            parse_every(bad)


def test_index_refuses_a_huge_every_before_loading_anything(tmp_path):
    (tmp_path / "imgs").mkdir()
    done = _kger("index", str(tmp_path / "imgs"), "--bundle", str(tmp_path / "no-bundle"),
                 "--every", "99999999999999999999s")
    assert done.returncode == 2 and "at most" in done.stderr and "(one hour)" in done.stderr, done.stderr


def test_names_are_escaped_for_display_and_storage():
    assert frame_name("/v/exam\nforged.mp4", 1) == "exam\\nforged.mp4 @ 00:00:01"
    assert visible("a\x00b\x1b[31mc\u202ed") == "a\\x00b\\x1b[31mc\\u202ed"
    assert visible("two\nlines") == "two\nlines" and visible("two\nlines", newlines=False) == "two\\nlines"


HOSTILE = "left ear\x00 <b>\x1b[31m\x07 \u202eevil\r"


def test_html_reports_hold_no_raw_control_characters():
    run = {"id": "ab" * 16, "input": HOSTILE, "status": "error", "error": HOSTILE,
           "answer": {"rows": [{"id": "cd" * 32, "name": "x\x00.png", "path": "/nowhere/x\x01.png", "rank": 1}],
                      "question": HOSTILE, "timings": {"t\x01": 1}}}
    for page in (render_run(run), render_batch([run], title=f"kger batch: q\x00.txt")):
        assert not RAW_CONTROL.search(page) and "\u202e" not in page
        assert "\\x00" in page and "&lt;b&gt;" in page


def test_trace_export_html_of_a_hostile_run_in_a_real_process(kger_home, tmp_path):
    with TraceDB() as db:
        run = db.start_run(input=HOSTILE, kind="ask", llm="offline", store="s", bundle=None, models=None)
        db.finish_run(run, answer={"rows": [], "question": HOSTILE}, timings={}, status="error", error=HOSTILE)
    out = tmp_path / "r.html"
    done = _kger("trace", "export", run[:10], "--format", "html", "--out", str(out))
    assert done.returncode == 0, done.stderr
    page = out.read_text(encoding="utf-8")
    assert not RAW_CONTROL.search(page) and "left ear\\x00" in page


@pytest.mark.slow
def test_a_newline_in_a_file_name_is_escaped_in_skip_lines_and_frame_names(real_store, tmp_path, real_images):
    from tests.test_video import write_video

    _, bundle = real_store
    home, folder = tmp_path / "home", tmp_path / "in"
    folder.mkdir()
    (folder / "notes\nskipped forged: line.bin").write_bytes(b"x")
    write_video(folder / "exam\n2.mp4", real_images[:2], seconds_each=1, fps=2)
    done = _kger("index", str(folder), "--bundle", str(bundle), "--home", str(home), "--store", "v", "--json")
    assert done.returncode == 0, done.stderr
    skips = [s for s in done.stderr.splitlines() if s.startswith("skipped")]
    assert len(skips) == 1 and "notes\\nskipped forged" in skips[0], done.stderr
    assert not any(s.startswith("skipped forged") for s in done.stderr.splitlines())
    assert json.loads(done.stdout)["indexed"] == 2

    from store.gallery import Gallery

    with Gallery.open("v", home=home) as g:
        names = sorted(m["name"] for _, m in g.all_metadata())
    assert names == ["exam\\n2.mp4 @ 00:00:00", "exam\\n2.mp4 @ 00:00:01"]


@pytest.fixture(scope="module")
def real_images(entrep_train) -> list[Path]:
    return sorted((entrep_train / "imgs").glob("*.png"))
