"""`kger demo`, the README's first command, end to end on a tiny synthetic gallery (offline, no shared data)."""
from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from agent.cli import app
from training.synthetic import CLASSES, make_gallery


def test_synthetic_gallery_is_labelled_and_marked(tmp_path):
    labels = make_gallery(tmp_path, per_class=2, seed=1)
    assert sorted(set(labels.values())) == sorted(CLASSES) and len(labels) == 14
    assert all(name.startswith("synthetic-") for name in labels)
    assert json.loads((tmp_path / "cls.json").read_text()) == labels
    from PIL import Image, ImageOps

    img = Image.open(tmp_path / "imgs" / "synthetic-ear-left-000.png").convert("RGB")
    mirrored = Image.open(tmp_path / "imgs" / "synthetic-ear-right-000.png").convert("RGB")
    assert img.size == mirrored.size == (320, 240)
    assert img.getpixel((2, 2)) == (0, 0, 0)  # the endoscopic field is a bright disc on black
    assert ImageOps.mirror(img).tobytes() != img.tobytes()


def test_demo_runs_end_to_end(tmp_path):
    r = CliRunner().invoke(app, ["demo", "--home", str(tmp_path), "--per-class", "4", "--folds", "2",
                                 "--epochs", "2"])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "SYNTHETIC" in out
    assert len(re.findall(r"run [0-9a-f]{32}", out)) == 3
    report = tmp_path / "demo" / "report.html"
    assert report.is_file() and "data:image/jpeg;base64," in report.read_text()
    assert "kger ask" in out and "kger trace show" in out  # the next commands for real data
