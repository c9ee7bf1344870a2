"""`kger chat` driven as a person would: the real program in a pseudo-terminal, typed at, its screen read.

One session-scoped gallery (an untrained 2-fold bundle over the 70 real ENTRep images, built by conftest's
`store_factory` with `kger bundle init` and `kger index` in a subprocess) and one module-scoped conversation; the tests then check each turn's screen
and the traces the turns left behind.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import sys
import termios
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "kger> "
KGER = [sys.executable, "-c", "from agent.cli import main; main()"]
COLS, ROWS = 160, 50
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>()][0-9A-Za-z]?")

pytestmark = pytest.mark.slow


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "GOOGLE_API_KEY",
                                                               "GEMINI_API_KEY", "KGER_STRICT")}
    env.update(KGER_HOME=str(home), TERM="xterm-256color", COLORTERM="truecolor", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", ANONYMIZED_TELEMETRY="False", PYTHONUNBUFFERED="1")
    return env


def plain(text: str) -> str:
    """What a person sees, give or take cursor movement: escape sequences and carriage returns removed."""
    return _ANSI.sub("", text).replace("\r", "")


class Terminal:
    """A child process on a pseudo-terminal (its controlling tty, so Ctrl-C is a real SIGINT)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: size the terminal, then become kger
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.raw = ""
        self.status = None

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError as e:  # EIO: the child closed the terminal
            if e.errno != errno.EIO:
                raise
            return False
        if not data:
            return False
        self.raw += data.decode("utf-8", "replace")
        return True

    def expect(self, pattern: str, start: int, timeout: float = 60.0) -> str:
        """Read until `pattern` (a regex) shows in the screen text after raw offset `start`; return that text."""
        deadline = time.monotonic() + timeout
        while True:
            screen = plain(self.raw[start:])
            if re.search(pattern, screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {pattern!r}; screen so far:\n{screen[-3000:]}")
            if not self._read(min(0.5, max(0.0, deadline - time.monotonic()))):
                raise AssertionError(f"kger exited while waiting for {pattern!r}; screen:\n{screen[-3000:]}")

    def send(self, text: str) -> int:
        mark = len(self.raw)
        os.write(self.fd, text.encode())
        return mark

    def turn(self, line: str, timeout: float = 60.0) -> str:
        """Type a line and Enter; return the screen up to the next prompt (the echo of the line included)."""
        mark = self.send(line + "\r")
        deadline = time.monotonic() + timeout
        while True:
            screen = plain(self.raw[mark:])
            echo = screen.find(line) if line else 0
            if echo >= 0 and PROMPT in screen[echo + len(line):]:
                return screen[: screen.rindex(PROMPT)]
            if time.monotonic() > deadline:
                raise AssertionError(f"no prompt after {line!r}; screen:\n{screen[-3000:]}")
            if not self._read(0.5):
                raise AssertionError(f"kger exited after {line!r}; screen:\n{screen[-3000:]}")

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._read(0.05):  # drain
                    if not select.select([self.fd], [], [], 0)[0]:
                        break
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        raise AssertionError("kger did not exit")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        os.close(self.fd)


def table_rows(screen: str) -> list[dict]:
    """The answer table's rows as a person reads them: rank, image name, class, match (0-100)."""
    rows = []
    for line in screen.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) >= 5 and cells[0].isdigit():
            rows.append({"rank": int(cells[0]), "name": cells[1], "class": cells[2], "match": cells[3]})
    return rows


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def conversation(chat_gallery, tmp_path_factory) -> dict:
    """One chat session, typed turn by turn; returns each turn's screen and the exit status. Its own copy of
    the home: the store is shared, the traces are this session's only (serve tests write runs too)."""
    home = _own_home(chat_gallery, tmp_path_factory.mktemp("chat-home"))
    term = Terminal(KGER + ["chat", "--k", "5"], _env(home), ROOT)
    screens: dict[str, str] = {}
    try:
        screens["start"] = term.expect(re.escape(PROMPT), 0, timeout=120)
        screens["empty"] = term.turn("")
        screens["unknown"] = term.turn("/frobnicate")
        screens["why_before"] = term.turn("why is 1 first?")
        screens["left"] = term.turn("left ear, tympanic membrane")
        screens["right"] = term.turn("only the right side")
        screens["why"] = term.turn("why is 1 first?")
        screens["like"] = term.turn("more like number 2")
        screens["show"] = term.turn("show 7")
        screens["k"] = term.turn("/k 3")
        screens["nose"] = term.turn("nose, left nasal cavity")
        screens["open"] = term.turn("/open 2")
        screens["trace"] = term.turn("/trace")
        screens["help"] = term.turn("/help")
        screens["llm"] = "".join(term.turn(line) for line in ("/llm gemini", "/llm offline", "/llm gemini"))
        screens["gemini_turn"] = term.turn("left ear")  # no GOOGLE_API_KEY: planned and judged offline, and said so
        screens["llm_back"] = term.turn("/llm offline")
        screens["llm_bad"] = term.turn("/llm gpt")
        screens["vc_open"] = term.turn("vocal cords open")
        screens["no_such"] = term.turn("more like number 9")
        screens["brackets"] = term.turn("[/x] left ear [red]")
        screens["vague"] = term.turn("redness and swelling")  # no region: the chat asks back (agent/reflect.py)
        screens["resolved"] = term.turn("the nose")
        mark = term.send("\x04")  # Ctrl-D at an empty prompt quits
        status = term.wait()
        screens["end"] = plain(term.raw[mark:])
    finally:
        term.close()
    return {"screens": screens, "status": status, "home": home}


def _own_home(gallery: Path, home: Path) -> Path:
    """A copy of the gallery's home without its records (traces, checkpoints, cache, history)."""
    shutil.copytree(gallery, home, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("traces.db*", "checkpoints.db*", "cache.db*", "chat_history"))
    return home


def _runs(home: Path) -> list[dict]:
    from store.traces import TraceDB

    with TraceDB(home / "traces.db") as db:
        return [db.get_run(r["id"]) for r in reversed(db.list_runs(limit=0))]  # oldest first


# ------------------------------------------------------------------------------------------- the screens


def test_start_and_quit(conversation):
    s = conversation["screens"]
    assert "kger chat" in s["start"] and "/help" in s["start"]
    assert conversation["status"] == 0
    history = (conversation["home"] / "chat_history").read_text()
    assert "left ear, tympanic membrane" in history and "only the right side" in history


def test_bad_input_gets_a_one_line_hint(conversation):
    s = conversation["screens"]
    assert "Type a clinical description" in s["empty"]
    assert "Unknown command /frobnicate; type /help" in s["unknown"]
    assert "Ask something first" in s["why_before"]
    for key in ("empty", "unknown", "why_before"):
        assert "Traceback" not in s[key]


def test_question_shows_table_thumbnails_and_run_id(conversation):
    screen = conversation["screens"]["left"]
    rows = table_rows(screen)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["class"] == "ear-left" for r in rows), rows  # the side is a hard constraint
    assert re.search(r"run [0-9a-f]{32}", screen)
    for col in ("match", "retrieval", "why", "Pos-Fuse"):  # the fused arithmetic is under "why"
        assert col in screen
    assert all(r["match"].isdigit() and 0 <= int(r["match"]) <= 100 for r in rows), rows  # the judge's 0-100
    # half-block thumbnails in truecolor, with the ranks under them
    raw_colour = "▀" in screen and "#1" in screen and "#5" in screen
    assert raw_colour, screen[-2000:]


def test_only_the_right_side_keeps_the_conversation(conversation):
    screen = conversation["screens"]["right"]
    rows = table_rows(screen)
    assert len(rows) == 5
    assert all(r["class"] == "ear-right" for r in rows), rows
    assert "right ear, tympanic membrane" in screen  # the follow-up was resolved against the left-ear question


def test_why_is_1_first_comes_from_the_trace(conversation):
    s = conversation["screens"]
    runs = _runs(conversation["home"])
    right = next(r for r in runs if r["input"] == "only the right side")
    top = right["answer"]["rows"][0]
    screen = s["why"]
    assert f"Why #1 {top['name']}" in screen
    assert top["formula"] in screen  # the Pos-Fuse arithmetic, as recorded
    posfuse = r"fused = \(0\.4\*0\.\d{4} \+ 0\.6\*\(0\.6\*0\.\d{4}\+0\.4\*[01]\.\d{3}\)\) / 1 = 0\.\d{4}"
    assert re.search(posfuse, screen)
    assert f"Labelled {top['label']}" in screen and top["justification"].split(";")[0] in screen  # "2/2 folds ..."
    assert "Per-fold cosine: fold 1" in screen and "fold 2" in screen
    assert re.search(r"Fold agreement: [0-2]/2 folds", screen)
    assert "no model was called" in screen
    # answering it wrote no run of its own
    assert not any("why" in (r["input"] or "") for r in runs)


def test_more_like_number_2_and_show_7(conversation):
    s = conversation["screens"]
    assert len(table_rows(s["like"])) == 5
    assert [r["rank"] for r in table_rows(s["show"])] == list(range(1, 8))
    assert "k = 3" in s["k"]
    nose = table_rows(s["nose"])
    assert len(nose) == 3 and all(r["class"] == "nose-left" for r in nose), nose


def test_open_trace_and_help(conversation):
    s = conversation["screens"]
    nose_rows = table_rows(s["nose"])
    path = next(line.strip() for line in s["open"].splitlines() if line.strip().endswith(".png"))
    assert Path(path).is_file() and Path(path).name == nose_rows[1]["name"]
    assert "# Run " in s["trace"] and "## Plan" in s["trace"] and "## Pos-Fuse" in s["trace"]
    assert "retrieve(" in s["trace"] and '"nose, left nasal cavity"' in s["trace"]
    assert "/llm offline|gemini" in s["help"] and "why is 1 first?" in s["help"]


def test_remote_llm_is_announced_once_and_falls_back_without_a_key(conversation):
    s = conversation["screens"]
    assert s["llm"].count("Gemini selected") == 1 and "sent to Google's API" in s["llm"]
    assert s["llm"].count("llm = gemini") == 2 and "llm = offline" in s["llm"]
    rows = table_rows(s["gemini_turn"])
    assert len(rows) == 3 and all(r["class"] == "ear-left" for r in rows)
    assert "offline judge: no GOOGLE_API_KEY" in s["gemini_turn"]
    assert "llm = offline" in s["llm_back"]
    assert "Usage: /llm offline|gemini; now offline." in s["llm_bad"]


def test_a_description_naming_no_region_is_asked_back_and_the_next_message_resolves_it(conversation):
    vague, resolved = conversation["screens"]["vague"], conversation["screens"]["resolved"]
    assert "names no region" in vague and "which do you mean?" in vague
    assert len(table_rows(vague)) == 3  # the best guesses below the question (k is 3 since "/k 3")
    rows = table_rows(resolved)
    assert "redness and swelling (the nose)" in resolved and "which do you mean" not in resolved
    assert rows and all(r["class"].startswith("nose") for r in rows), rows


def test_bad_follow_up_and_markup_in_a_description(conversation):
    s = conversation["screens"]
    assert "No image found" in s["no_such"] and "there is no image #9 in the previous answer" in s["no_such"]
    rows = table_rows(s["brackets"])
    typed = "[/x] left ear [red]"
    echo = s["brackets"].index(typed)  # the terminal's echo of the line typed; what kger printed comes after
    printed = s["brackets"][echo + len(typed):]
    assert typed in printed and len(rows) == 3  # kger printed it as typed, not read as markup
    assert all(r["class"] == "ear-left" for r in rows), rows
    for key in ("no_such", "brackets"):
        assert "Traceback" not in s[key] and "error:" not in s[key]


def test_one_thread_per_session_every_turn_traced(conversation):
    runs = _runs(conversation["home"])
    asked = [r["input"] for r in runs]
    assert asked == ["left ear, tympanic membrane", "only the right side", "more like number 2",
                     "right ear, tympanic membrane", "nose, left nasal cavity", "left ear", "vocal cords open",
                     "more like number 9", "[/x] left ear [red]", "redness and swelling", "the nose"]
    assert [r["llm"] for r in runs if r["input"] == "left ear"] == ["gemini"]
    assert {r["kind"] for r in runs} == {"chat"}
    assert len({r["thread_id"] for r in runs}) == 1


def test_trace_show_and_export_of_a_chat_run(conversation, tmp_path, monkeypatch):
    """The audit commands read the chat's runs back, in-process, without building any model."""
    from agent.cli import app
    from agent.cli.common import out_console

    monkeypatch.setenv("KGER_HOME", str(conversation["home"]))
    monkeypatch.setattr(out_console, "_width", 200)
    right = next(r for r in _runs(conversation["home"]) if r["input"] == "only the right side")
    runner = CliRunner()
    shown = runner.invoke(app, ["trace", "show", right["id"][:10]])
    assert shown.exit_code == 0, shown.output
    for row in right["answer"]["rows"]:
        assert row["formula"] in shown.output
    out = tmp_path / "run.html"
    exported = runner.invoke(app, ["trace", "export", right["id"][:10], "--format", "html", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    page = out.read_text()
    assert page.count('src="data:image/jpeg;base64,') == len(right["answer"]["rows"])
    as_json = runner.invoke(app, ["trace", "export", right["id"], "--format", "json"])
    assert json.loads(as_json.stdout)["id"] == right["id"]


# ------------------------------------------------------------------------------------------- NO_COLOR


@pytest.mark.parametrize("no_color", [False, True])
def test_no_color_shows_no_thumbnails(word_searcher, monkeypatch, no_color):
    """NO_COLOR keeps rich's colour system but strips the colours: half blocks would print as blank grids."""
    from io import StringIO

    from rich.console import Console

    from agent.assistant import Assistant
    from agent.cli.chat import ChatSession

    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    out, err = StringIO(), StringIO()
    session = ChatSession(Assistant(searcher=word_searcher, k=3),
                          console=Console(file=out, force_terminal=True, color_system="truecolor", width=160),
                          err=Console(file=err, force_terminal=True, width=160))
    session.handle("left ear")
    session.handle("right ear")
    assert len(table_rows(out.getvalue())) == 6
    if no_color:
        assert "▀" not in out.getvalue() and "\x1b[38;2" not in out.getvalue()
        assert err.getvalue().count("thumbnails are off") == 1  # said once, not every turn
    else:
        assert out.getvalue().count("▀") == 2 * 3 * 16 * 8 and "thumbnails are off" not in err.getvalue()
