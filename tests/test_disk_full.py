"""A full disk (issue 22 row 5): `index`, `batch` and `ask` say "no space left on <path>" in one line and exit 1,
mark nothing done that was not written, and a rerun after freeing space completes.

Each scenario runs real kger processes on a real small filesystem: a 20 MB tmpfs mounted in a private mount
namespace (`unshare -m`, root only), holding a copy of the store, filled to the last byte by a filler file.
Where that cannot be made (not root, no unshare), the tests skip and say why.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from store.diskfull import NoSpaceError, is_no_space, no_space_error

ROOT = Path(__file__).resolve().parents[1]
KGER = [sys.executable, "-c", "from agent.cli import main; main()"]
SCRIPT = """
mount -t tmpfs -o size=20m tmpfs "$MNT" || exit 99
cp -a "$SRC"/. "$MNT"/
dd if=/dev/zero of="$MNT/filler" bs=4k 2>/dev/null
"$@" > "$OUT/out1" 2> "$OUT/err1"; echo $? > "$OUT/rc1"
ls -A "$MNT" > "$OUT/ls1"
rm "$MNT/filler"
"$@" > "$OUT/out2" 2> "$OUT/err2"; echo $? > "$OUT/rc2"
"""


def _can_mount_tmpfs() -> str | None:
    """None when a private tmpfs can be mounted here, else the reason it cannot."""
    if not shutil.which("unshare"):
        return "no `unshare` on this machine"
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs (a full disk) in a private mount namespace"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs: {probe.stderr.decode(errors='replace')[:200]}"


WHY_NOT = _can_mount_tmpfs()
needs_small_fs = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))


def test_every_layers_wording_of_a_full_disk_is_recognised(tmp_path):
    import errno
    import sqlite3

    assert is_no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert no_space_error(OSError(errno.ENOSPC, "No space left on device", "/h/x.tmp"), "/h").where == "/h/x.tmp"
    assert no_space_error(sqlite3.OperationalError("database or disk is full"), tmp_path).where == str(tmp_path)
    try:
        raise RuntimeError("wrapped") from OSError(errno.EDQUOT, "Disk quota exceeded")
    except RuntimeError as e:
        assert is_no_space(e)
    assert "no space left on /h" in str(NoSpaceError("/h")) and "\n" not in str(NoSpaceError("/h"))
    assert not is_no_space(OSError(errno.EACCES, "Permission denied")) and not is_no_space(ValueError("x"))


def _on_a_full_disk(store_home: Path, tmp_path: Path, *args: str) -> dict:
    """Run `kger ARGS` with its home on a full 20 MB tmpfs (at tmp_path/mnt), then again after freeing it."""
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    src = tmp_path / "src"
    shutil.copytree(store_home / "stores", src / "stores")
    args = [a.replace("{MNT}", str(mnt)) for a in args]
    env = {**os.environ, "SRC": str(src), "MNT": str(mnt), "OUT": str(out), "COLUMNS": "1000",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["unshare", "-m", "sh", "-c", SCRIPT, "sh", *KGER, *args, "--home", str(mnt)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and (out / "rc2").is_file(), done.stderr[-2000:]
    return {name: (out / name).read_text() for name in ("rc1", "err1", "ls1", "rc2", "err2", "out2")}


def _says_no_space(r: dict, where: Path) -> None:
    err = r["err1"].strip()
    assert r["rc1"].strip() == "1", err
    assert len(err.splitlines()) == 1 and f"no space left on {where}" in err, err
    assert "damaged" not in err and "Internal error" not in err and "move it aside" not in err
    assert r["rc2"].strip() == "0", r["err2"]


@needs_small_fs
@pytest.mark.slow
def test_index_on_a_full_disk_then_a_rerun(real_store, tmp_path, entrep_train):
    home, bundle = real_store
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in sorted((entrep_train / "imgs").glob("*.png"))[:6]:
        shutil.copy(p, imgs / p.name)
    r = _on_a_full_disk(home, tmp_path, "index", str(imgs), "--bundle", str(bundle), "--store", "fresh", "--json")
    _says_no_space(r, tmp_path / "mnt")
    doc = json.loads(r["out2"])
    assert (doc["indexed"], doc["already_present"], doc["count"]) == (6, 0, 6)


@needs_small_fs
@pytest.mark.slow
def test_batch_on_a_full_disk_marks_nothing_done_then_a_rerun_answers_all(real_store, tmp_path):
    home, _ = real_store
    queries = tmp_path / "q.txt"
    queries.write_text("left ear\nthroat\nright nasal cavity\n")
    r = _on_a_full_disk(home, tmp_path, "batch", str(queries), "--out", "{MNT}/results.jsonl", "--k", "2", "--json")
    _says_no_space(r, tmp_path / "mnt")
    doc = json.loads(r["out2"])
    assert (doc["queries"], doc["done"], doc["skipped"], doc["failed"]) == (3, 3, 0, 0)  # none was marked done


@needs_small_fs
@pytest.mark.slow
def test_ask_on_a_full_disk_then_a_rerun(real_store, tmp_path):
    home, _ = real_store
    r = _on_a_full_disk(home, tmp_path, "ask", "left ear", "--k", "2", "--json")
    _says_no_space(r, tmp_path / "mnt")
    assert len(json.loads(r["out2"])["rows"]) == 2
