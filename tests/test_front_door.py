"""The first minutes of a new user (issue 20 §4): what the demo says to do next, and the training summary."""
from __future__ import annotations

import os
from pathlib import Path

from agent.cli.demo import next_steps
from training.calibrate import thresholds_text


def test_trust_thresholds_read_as_a_line_not_a_dict():
    text = thresholds_text({"ear-left": 0.9312, "nose-right": 1.01})
    assert text == "ear-left >= 0.93, nose-right never"
    assert "{" not in text and "'" not in text


def test_demo_next_steps_name_this_home_and_how_to_reach_kger(tmp_path, monkeypatch):
    home = tmp_path / "my home"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # kger not on PATH, as after `make demo` in a new shell
    monkeypatch.chdir(tmp_path)  # no ../shared beside it
    text = next_steps(home, "abcdef123456", kger_dir=Path("/opt/clone/.venv/bin"), near=[tmp_path])
    assert str(home / "bundles" / "entrep") in text and "~/.kger" not in text
    assert "source /opt/clone/.venv/bin/activate" in text
    assert "../shared" not in text and "ENTREP" in text  # a placeholder, said as one
    assert "kger trace show abcdef123456" in text
    assert f"export KGER_HOME='{home}'" in text  # `make demo`'s home is the clone's own: a new shell needs it
    assert "shared by every clone" not in text


def test_demo_next_steps_on_the_default_home_say_it_is_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    text = next_steps(tmp_path / ".kger", "r1", kger_dir=tmp_path, near=[tmp_path])
    assert "export KGER_HOME" not in text and "shared by every clone" in text


def test_demo_next_steps_use_the_shared_data_when_it_is_there(tmp_path, monkeypatch):
    data = tmp_path / "shared" / "data" / "entrep" / "train"
    (data / "imgs").mkdir(parents=True)
    (tmp_path / "clone").mkdir()
    monkeypatch.chdir(tmp_path / "clone")
    kger_dir = tmp_path / "bin"
    kger_dir.mkdir()
    (kger_dir / "kger").write_text("#!/bin/sh\n")
    (kger_dir / "kger").chmod(0o755)
    monkeypatch.setenv("PATH", f"{kger_dir}{os.pathsep}/usr/bin")
    text = next_steps(tmp_path / "h", "r1", kger_dir=kger_dir, near=[tmp_path])
    assert f"kger train {data} " in text and "activate" not in text  # on PATH: nothing to say about it
