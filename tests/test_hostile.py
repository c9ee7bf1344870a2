"""Hostile input is data (issue 14): every row of the issue's table, as a user would hit it.

Each test names its row. The acceptance: a one-line message and exit 1 (exit 2 for usage), or the right
behaviour; never a traceback; nothing lost (a damaged database is kept beside the fresh one).
Retrieval runs on the 70 real images (`real_store`) where the row is about the store or the CLI; the in-memory
`word_searcher` stands in where only the agent and the trace database are under test. The property-based
tests are in test_hostile_props.py.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from agent.assistant import Assistant
from agent.cli import app
from agent.judges.offline import OfflineJudge
from agent.plan import OfflinePlanner
from store.paths import traces_db_path
from store.traces import TraceDB

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
MARKUP = "[/bold] left ear"
LINK = "[bold red]x[/bold red] [link=http://evil.example]y[/link]"


@pytest.fixture
def wide(monkeypatch):
    from agent.cli.common import out_console

    monkeypatch.setattr(out_console, "_width", 220)  # rich tables fold cells to the console width


def kger(*args, home=None):
    argv = [str(a) for a in args] + (["--home", str(home)] if home is not None else [])
    return runner.invoke(app, argv)


def one_line_error(result, *words: str) -> str:
    """Exit 1, no traceback, one 'Error: ...' line on stderr that holds every word."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output, result.output
    # an exception the CLI let escape (CliRunner catches it: exit 1, nothing printed) is not a clean exit 1
    assert result.exception is None or (isinstance(result.exception, SystemExit) and result.exception.code == 1), \
        repr(result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _fake_cli(body):
    """A one-command Typer app running `body`, invoked as the tests invoke kger."""
    import typer

    fake = typer.Typer()
    fake.command()(body)
    return runner.invoke(fake, [])


def _clean_exit():
    print("Error: no run matches 'x'", file=sys.stderr)
    raise SystemExit(1)


def _traceback_then_exit():
    print('Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nValueError: x', file=sys.stderr)
    _clean_exit()


def _escaped_exception():
    print("Error: no run matches 'x'", file=sys.stderr)
    raise ValueError("no run matches 'x'")


def test_one_line_error_passes_a_clean_exit_and_fails_a_traceback_or_an_escaped_exception():
    """The helper above is the check of about 13 tests: it must be able to fail."""
    assert one_line_error(_fake_cli(_clean_exit), "no run") == "Error: no run matches 'x'"
    traced = _fake_cli(_traceback_then_exit)
    # all else as a clean exit 1: only the traceback can fail it
    assert traced.exit_code == 1 and sum(ln.startswith("Error:") for ln in traced.stderr.splitlines()) == 1
    with pytest.raises(AssertionError, match="Traceback"):
        one_line_error(traced, "no run")
    escaped = _fake_cli(_escaped_exception)
    assert escaped.exit_code == 1 and "Traceback" not in escaped.output
    with pytest.raises(AssertionError, match="ValueError"):
        one_line_error(escaped, "no run")


def traced_runs(searcher, *questions: str) -> list:
    with TraceDB(traces_db_path()) as db:
        a = Assistant(searcher=searcher, traces=db, k=3, pool=6, planner=OfflinePlanner(), judge=OfflineJudge())
        return [a.ask(q, kind="ask") for q in questions]


# -- rows 1, 2, 5, 15, 16: user text is shown as written, never run as markup --------------------------------


def test_row1_markup_in_a_search_is_text(real_store):
    home, _ = real_store
    r = kger("search", MARKUP, "--k", "2", home=home)
    assert r.exit_code == 0, r.output
    assert MARKUP in r.stdout


def test_row2_markup_in_a_stored_description_does_not_break_the_audit_log(word_searcher, wide):
    run = traced_runs(word_searcher, MARKUP)[0]
    for args in (["trace", "list"], ["trace", "show", run.run_id[:12]], ["trace", "list", "-n", "0"]):
        r = kger(*args)
        assert r.exit_code == 0, r.output
        assert MARKUP in r.stdout


def test_row5_markup_and_links_are_shown_not_applied(real_store):
    home, _ = real_store
    term = Console(force_terminal=True, width=250, record=True)
    from agent.cli.gallery import results_table
    from agent.core.render import literal

    term.print(results_table([], literal(f"Top 0 for {LINK!r}")))
    styled = term.export_text(styles=True, clear=False)
    assert "".join(LINK.split()) in "".join(term.export_text().split())  # (the empty table wraps its title)
    assert "\x1b]8;" not in styled and "\x1b[1;31m" not in styled  # no hyperlink, no bold red
    r = kger("search", LINK, "--k", "1", home=home)
    assert r.exit_code == 0 and "".join(LINK.split()) in "".join(r.stdout.split()), r.output


def test_row15_a_long_description_is_shortened_on_screen_and_kept_whole_in_json(real_store):
    home, _ = real_store
    text = "left ear, tympanic membrane " * 3700  # about 100 KB
    r = kger("search", text, "--k", "2", home=home)
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) < 40 and "more characters" in r.stdout
    doc = json.loads(kger("search", text, "--k", "2", "--json", home=home).stdout)
    assert doc["query"] == text


def test_row16_chat_shows_the_description_once_unescaped(word_searcher):
    from agent.cli.chat import ChatSession

    out, err = Console(record=True, width=200), Console(record=True, width=200)
    a = Assistant(searcher=word_searcher, traces=None, k=2, pool=4, planner=OfflinePlanner(), judge=OfflineJudge())
    session = ChatSession(a, console=out, err=err)
    assert session.handle(MARKUP) and not session.handle("/quit")
    shown = out.export_text()
    assert MARKUP in shown and "\\[" not in shown


def test_control_characters_never_reach_the_terminal():
    from agent.core.render import clean, literal

    assert clean("a\x1b[31mred\x07") == "a\\x1b[31mred\\x07"
    assert "\x1b" not in literal("\x1b]8;;http://x\x1b\\y").plain
    assert clean("x" * 400).endswith("(100 more characters)")


# -- row 3: only regular files are opened ------------------------------------------------------------------


def test_row3_a_named_pipe_in_an_indexed_folder_is_skipped_not_opened(real_store, entrep_train, tmp_path):
    _, bundle = real_store
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    os.mkfifo(imgs / "pipe.png")
    (imgs / "loop.png").symlink_to("loop.png")
    shutil.copy(next((entrep_train / "imgs").glob("*.png")), imgs / "real.png")
    r = kger("index", imgs, "--bundle", bundle, "--json", home=tmp_path / "home")
    assert r.exit_code == 0, r.output
    skipped = {Path(s["path"]).name: s["reason"] for s in json.loads(r.stdout)["skipped"]}
    assert "named pipe" in skipped["pipe.png"] and "symbolic link loop" in skipped["loop.png"]
    assert json.loads(r.stdout)["indexed"] == 1


# -- rows 4, 6: damaged or unwritable state is survivable ---------------------------------------------------


def _damage(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(100)


def test_row4_a_damaged_trace_database_is_kept_and_replaced(word_searcher, kger_home):
    run = traced_runs(word_searcher, "left ear")[0]
    db = traces_db_path()
    _damage(db)
    r = kger("trace", "list")
    assert r.exit_code == 0, r.output
    notice = [ln for ln in r.stderr.splitlines() if "damaged" in ln]
    assert len(notice) == 1 and "kept it as traces.db.damaged-" in notice[0]
    kept = list(kger_home.glob("traces.db.damaged-*"))
    assert len(kept) == 1 and kept[0].stat().st_size == 100  # the damaged bytes are kept, not overwritten
    assert "No runs" in r.stderr
    one_line_error(kger("trace", "show", run.run_id[:12]), "No run")
    # answering and tracing work again: the new run reads back from the recreated database
    again = traced_runs(word_searcher, "right ear")[0]
    with TraceDB(db) as fresh:
        assert fresh.get_run(again.run_id)["input"] == "right ear"
        assert [r["id"] for r in fresh.list_runs(limit=5)] == [again.run_id]


def test_row4_ask_survives_damaged_traces_and_checkpoints(real_store, tmp_path):
    home, _ = real_store
    mine = tmp_path / "home"
    shutil.copytree(home / "stores", mine / "stores")
    for name in ("traces.db", "checkpoints.db"):
        (mine / name).write_bytes(b"SQLite format 3\x00" + b"\x00" * 84)
    r = kger("ask", "left ear", "--k", "2", home=mine)
    assert r.exit_code == 0, r.output
    assert sum("damaged" in ln for ln in r.stderr.splitlines()) == 2
    assert len(list(mine.glob("*.damaged-*"))) == 2
    assert kger("trace", "list", "--json", home=mine).exit_code == 0


def test_row4_a_store_with_damaged_chroma_files_is_one_line_and_kept(real_store, tmp_path):
    """The store's own database damaged: one line naming the store and what to do; nothing is overwritten."""
    home, _ = real_store
    mine = tmp_path / "home"
    shutil.copytree(home / "stores", mine / "stores")
    [sqlite] = list((mine / "stores").rglob("chroma.sqlite3"))
    _damage(sqlite)
    for args in (("search", "left ear"), ("ask", "left ear")):
        line = one_line_error(kger(*args, home=mine), "Store 'default'")
        assert "damaged" in line or "cannot be opened" in line, line
    assert sqlite.stat().st_size == 100  # the damaged file is still there, as it was


def test_row4_a_damaged_judge_cache_is_kept_and_replaced(kger_home, caplog):
    from store.cache import JudgeCache

    kger_home.mkdir(parents=True)
    (kger_home / "cache.db").write_bytes(b"not a database at all" * 10)
    with JudgeCache(kger_home / "cache.db") as cache:
        cache.put("k", {"score": 1})
        assert cache.get("k") == {"score": 1}
    assert list(kger_home.glob("cache.db.damaged-*"))
    assert "damaged" in caplog.text


def _read_only_home_works() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(not _read_only_home_works(), reason="needs unshare -m (root in a mount namespace) for a read-only mount")
def test_row6_search_and_ask_work_from_a_read_only_home_and_writes_say_read_only(real_store, tmp_path):
    home, bundle = real_store
    ro = tmp_path / "ro"
    shutil.copytree(home / "stores", ro / "stores")
    kger_cmd = f"{sys.executable} -c 'from agent.cli import main; main()'"
    script = (f"mount --bind -o ro {ro} {ro} && "
              f"{kger_cmd} search 'left ear' --k 2 --home {ro} --json > {tmp_path}/search.json && "
              f"{kger_cmd} ask 'left ear' --k 2 --home {ro} --json > {tmp_path}/ask.json 2> {tmp_path}/ask.err; "
              f"{kger_cmd} index {ROOT}/tests --bundle {bundle} --home {ro} 2> {tmp_path}/index.err; echo $? > {tmp_path}/rc")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads((tmp_path / "search.json").read_text())["results"]) == 2
    assert len(json.loads((tmp_path / "ask.json").read_text())["rows"]) == 2
    assert "read-only" in (tmp_path / "ask.err").read_text()
    assert (tmp_path / "rc").read_text().strip() == "1"
    err = (tmp_path / "index.err").read_text()
    assert "read-only" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not (ro / "traces.db").exists()


def test_row6_a_reader_needs_no_lock_file_where_none_can_be_made(tmp_path, monkeypatch):
    import errno

    from store import locks

    real_open = os.open

    def read_only_fs(path, flags, *a):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, *a)

    monkeypatch.setattr(locks.os, "open", read_only_fs)
    with locks.StoreLock(tmp_path / "store.lock", exclusive=False, timeout=0):
        pass
    with pytest.raises(OSError) as raised:  # a writer gets the read-only error itself, not some other OSError
        locks.StoreLock(tmp_path / "store.lock", exclusive=True, timeout=0).acquire()
    assert raised.value.errno == errno.EROFS and "Read-only file system" in str(raised.value)


# -- rows 7-14: inputs validated at the edge ----------------------------------------------------------------


def test_row7_batch_out_a_folder(tmp_path):
    q = tmp_path / "q.txt"
    q.write_text("left ear\n")
    one_line_error(kger("batch", q, "--out", tmp_path), "--out", "is a folder")


def _bundle_with(bundle: Path, tmp_path: Path, **fields) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(fields)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_row8_a_manifest_field_of_the_wrong_type_is_named(real_store, tmp_path):
    _, bundle = real_store
    r = kger("index", tmp_path, "--bundle", _bundle_with(bundle, tmp_path, folds="two"), home=tmp_path / "h")
    one_line_error(r, "manifest.json", "'folds'", "integer")


def test_row9_fold_count_must_match_the_fold_files(real_store, tmp_path):
    _, bundle = real_store
    r = kger("index", tmp_path, "--bundle", _bundle_with(bundle, tmp_path, folds=1), home=tmp_path / "h")
    one_line_error(r, "'folds' is 1", "lists 2 fold files")


def test_row10_utf16_query_files_are_read_and_a_file_without_queries_is_an_error(tmp_path):
    from agent.core.queries import read_queries

    for enc in ("utf-16", "utf-16-be", "utf-32", "utf-8-sig"):
        f = tmp_path / f"q-{enc}.txt"
        bom = {"utf-16-be": b"\xfe\xff"}.get(enc, b"")
        f.write_bytes(bom + "left ear\nright ear, drum\nthroat\n".encode(enc))
        assert [q.text for q in read_queries(f).items] == ["left ear", "right ear, drum", "throat"], enc
    for body in ("", "\n  \n\t\n"):
        f = tmp_path / "blank.txt"
        f.write_text(body)
        one_line_error(kger("batch", f, "--out", tmp_path / "out.jsonl"), "no query")
    f.write_bytes("left ear\n".encode("utf-16-le"))  # no byte-order mark
    one_line_error(kger("batch", f, "--out", tmp_path / "out.jsonl"), "UTF-16")


def test_row11_eval_csv_header_is_checked_and_the_delimiter_sniffed(tmp_path):
    from agent.core.queries import read_ground_truth

    gt = tmp_path / "gt.csv"
    gt.write_text("foo,bar\nleft ear,a.png\n")
    one_line_error(kger("eval", gt), "first row", "query")
    gt.write_text("query;image\nleft ear, drum;a.png\nthroat;b.png\n")
    assert [(t.query, t.images) for t in read_ground_truth(gt).items] == [("left ear, drum", ("a.png",)),
                                                                          ("throat", ("b.png",))]
    gt.write_text("left ear;a.png\nthroat;throat\n")
    parsed = read_ground_truth(gt)
    assert [(t.query, t.images, t.classes) for t in parsed.items] == [("left ear", ("a.png",), ()),
                                                                      ("throat", (), ("throat",))]


def test_row12_home_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    one_line_error(kger("search", "left ear", home=f), "--home", "is a file, not a folder")


def test_row13_image_is_a_folder_or_a_symlink_loop(real_store, tmp_path):
    home, _ = real_store
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    one_line_error(kger("search", "--image", tmp_path, home=home), "is a folder")
    one_line_error(kger("search", "--image", loop, home=home), "symbolic link loop")
    one_line_error(kger("search", "--image", tmp_path / "absent.png", home=home), "no such image")


def _png_header(path: Path, w: int, h: int) -> Path:
    """A PNG that declares w x h pixels (its pixels are never decoded: both limits act on the header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_row14_one_image_size_limit_and_message(tmp_path):
    from retrieval.preprocess import ImageLoadError, load_image, pixel_cap

    messages = []
    for side in (9000, 20000):
        with pytest.raises(ImageLoadError) as e:
            load_image(_png_header(tmp_path / f"{side}.png", side, side))
        messages.append(str(e.value))
    for m, side in zip(messages, (9000, 20000)):
        assert m == (f"image too large: {side}x{side} = {side * side:,} pixels is over the {pixel_cap():,}-pixel "
                     "limit (refused as a possible decompression bomb)") or (
            side == 20000 and m.startswith(f"image too large: {side * side:,} pixels is over the {pixel_cap():,}"))


def test_row17_counts_are_in_english(real_store, tmp_path):
    from agent.core.render import plural

    assert [plural(n, "bad entry") for n in (0, 1, 2)] == ["0 bad entries", "1 bad entry", "2 bad entries"]
    assert plural(3, "bad line") == "3 bad lines" and plural(2, "day") == "2 days"
    home = tmp_path / "home"
    shutil.copytree(real_store[0] / "stores", home / "stores")
    q = tmp_path / "q.json"
    q.write_text(json.dumps(["left ear", ""]))
    r = kger("batch", q, "--out", tmp_path / "out.jsonl", "--k", "1", home=home)
    assert r.exit_code == 0, r.output
    assert "1 bad entry skipped" in r.stdout and "entrys" not in r.output
