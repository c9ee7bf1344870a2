"""`kger bundle init`, `kger index` and `kger search` on the 70 real images, as a user runs them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli import app

runner = CliRunner()
KGER = [sys.executable, "-c", "from agent.cli import main; main()"]


def kger(*args: str, home: Path):
    result = runner.invoke(app, [*args, "--home", str(home)], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def bundle2(store_factory) -> Path:
    return store_factory(seed=1).bundle


@pytest.fixture(scope="module")
def indexed(store_factory):
    """(home, the `kger index --json` summary) of the 70 images indexed with bundle2 (tests/conftest.py)."""
    built = store_factory(seed=1)
    return built.home, built.summary


def _unique_contents(folder: Path) -> int:
    from retrieval.manifest import file_sha256

    return len({file_sha256(p) for p in folder.glob("*.png")})


def test_index_reports_every_file(indexed, entrep_train):
    home, summary = indexed
    n_files = len(list((entrep_train / "imgs").glob("*.png")))
    unique = _unique_contents(entrep_train / "imgs")
    assert summary["indexed"] == unique == summary["count"]
    # two files of the shared data have identical bytes: one id, the other reported as a duplicate
    assert summary["indexed"] + len(summary["duplicates"]) == n_files
    assert summary["skipped"] == []


def test_every_image_finds_itself_first_with_its_label(indexed, entrep_train, entrep_labels):
    home, _ = indexed
    from store.gallery import Gallery

    os.environ["KGER_HOME"] = str(home)
    g = Gallery.open("default")
    metas = dict(g.all_metadata())
    ids = list(metas)
    hits = g.get(ids, include_embeddings=True)
    for h in hits:
        top = g.query(np.asarray(h.embedding), k=1)[0]
        assert top.id == h.id
        assert h.metadata["label"] == entrep_labels[h.metadata["name"]]
    g.close()
    # and through the command line, image -> image, with per-fold scores in --json
    first = sorted((entrep_train / "imgs").glob("*.png"))[0]
    r = kger("search", "--image", str(first), "--k", "3", "--json", home=home)
    doc = json.loads(r.stdout)
    assert doc["results"][0]["name"] == first.name
    assert doc["results"][0]["label"] == entrep_labels[first.name]
    assert len(doc["results"][0]["fold_scores"]) == 2
    assert doc["results"][0]["score"] == pytest.approx(np.mean(doc["results"][0]["fold_scores"]), abs=1e-4)


def test_rerun_is_idempotent(indexed, entrep_train, bundle2):
    home, summary = indexed
    r = kger("index", str(entrep_train / "imgs"), "--bundle", str(bundle2), "--json", home=home)
    again = json.loads(r.stdout)
    assert again["indexed"] == 0 and again["already_present"] == summary["count"] and again["count"] == summary["count"]


def test_text_search_json_is_one_document(indexed):
    home, _ = indexed
    r = kger("search", "left ear", "--k", "5", "--json", home=home)
    doc = json.loads(r.stdout)  # stdout holds exactly one JSON document
    assert [x["rank"] for x in doc["results"]] == [1, 2, 3, 4, 5]
    scores = [x["score"] for x in doc["results"]]
    assert scores == sorted(scores, reverse=True)


def test_another_bundle_is_refused(indexed, entrep_train, tmp_path):
    home, _ = indexed
    other = tmp_path / "other"
    assert runner.invoke(app, ["bundle", "init", "--out", str(other), "--folds", "2", "--seed", "2"]).exit_code == 0
    r = runner.invoke(app, ["index", str(entrep_train / "imgs"), "--bundle", str(other), "--home", str(home)])
    assert r.exit_code == 1
    assert "bundle" in r.output.lower() and "Traceback" not in r.output


def test_user_errors_are_one_line(tmp_path):
    r = runner.invoke(app, ["search", "left ear", "--home", str(tmp_path)])
    assert r.exit_code == 1 and "kger index" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["index", str(tmp_path / "nope"), "--bundle", str(tmp_path), "--home", str(tmp_path)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    r = runner.invoke(app, ["search", "--home", str(tmp_path)])
    assert r.exit_code == 2  # usage error: neither TEXT nor --image


def _broken_files(folder: Path) -> dict[str, str]:
    """Eight kinds of broken or odd files; value = a word the skip reason must contain."""
    from PIL import Image

    folder.mkdir(parents=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image")
    good = folder / "_tmp_good.png"
    Image.new("RGB", (64, 48), (200, 100, 90)).save(good)
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (64, 48), (10, 200, 90)).save(folder / "_j.jpg", quality=90)
    jdata = (folder / "_j.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jdata[: len(jdata) // 3])
    (folder / "_j.jpg").unlink()
    good.unlink()
    (folder / "notes.bin").write_bytes(os.urandom(64))
    (folder / "random.jpg").write_bytes(os.urandom(2048))
    (folder / "html.webp").write_text("<html></html>")
    (folder / "zero.bmp").write_bytes(b"BM" + b"\x00" * 10)
    # and odd-but-valid ones that must be indexed
    Image.new("RGBA", (50, 40), (255, 0, 0, 128)).save(folder / "rgba.png")
    Image.new("I;16", (40, 30), 40000).save(folder / "gray16.png")
    Image.new("P", (30, 30), 3).save(folder / "palette.png")
    Image.new("L", (1, 1), 200).save(folder / "tiny.png")
    return {"empty.png": "", "text.png": "", "truncated.png": "", "truncated.jpg": "", "notes.bin": "",
            "random.jpg": "", "html.webp": "", "zero.bmp": ""}


def test_broken_files_are_reported_and_skipped(bundle2, tmp_path):
    folder = tmp_path / "odd"
    broken = _broken_files(folder)
    r = runner.invoke(app, ["index", str(folder), "--bundle", str(bundle2), "--home", str(tmp_path / "h"), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    skipped = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == set(broken)
    assert all(reason and "\n" not in reason for reason in skipped.values())
    assert summary["indexed"] == 4  # rgba, 16-bit grey, palette, 1x1


def test_kill_9_mid_index_then_rerun_gives_each_image_once(entrep_train, bundle2, tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, KGER_HOME=str(home))
    proc = subprocess.Popen(
        [*KGER, "index", str(entrep_train / "imgs"), "--bundle", str(bundle2), "--batch-size", "4", "-v"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True,
    )
    stored = 0
    deadline = time.time() + 240
    try:
        for line in proc.stderr:  # wait until a few batches are really stored, then pull the plug
            if "stored batch" in line:
                stored += 1
                if stored == 3:
                    break
            assert time.time() < deadline, "indexer made no progress"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert stored == 3
    r = runner.invoke(app, ["index", str(entrep_train / "imgs"), "--bundle", str(bundle2), "--home", str(home), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    unique = _unique_contents(entrep_train / "imgs")
    assert summary["already_present"] >= 12  # 3 batches of 4 survived the kill
    assert summary["already_present"] + summary["indexed"] == unique == summary["count"]
    os.environ["KGER_HOME"] = str(home)
    from store.gallery import Gallery

    g = Gallery.open("default")
    names = [m["name"] for _, m in g.all_metadata()]
    g.close()
    assert len(names) == len(set(names)) == unique


def test_index_search_and_ask_through_a_chroma_server(chroma_server, entrep_train, bundle2, tmp_path, monkeypatch):
    """--chroma-url / KGER_CHROMA_URL: the same commands against a real `chroma run` on loopback."""
    home = tmp_path / "home"
    r = runner.invoke(app, ["index", str(entrep_train / "imgs"), "--bundle", str(bundle2), "--home", str(home),
                            "--store", "cli-srv", "--chroma-url", chroma_server, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["count"] == _unique_contents(entrep_train / "imgs")
    assert not (home / "stores" / "cli-srv").exists()  # nothing embedded was made
    monkeypatch.setenv("KGER_CHROMA_URL", chroma_server)
    first = sorted((entrep_train / "imgs").glob("*.png"))[0]
    doc = json.loads(kger("search", "--image", str(first), "--store", "cli-srv", "--json", home=home).stdout)
    assert doc["results"][0]["name"] == first.name
    r = kger("ask", "left ear", "--store", "cli-srv", "--k", "3", "--json", home=home)
    assert r.exit_code == 0, r.output
    assert [row["label"] for row in json.loads(r.stdout)["rows"]] == ["ear-left"] * 3
