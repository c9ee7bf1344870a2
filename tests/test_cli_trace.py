"""`kger trace list | show | export`: real runs of the real graph (offline planner and judge, and the real
Gemini judge against the local REST stub), read back by the CLI without building any model.

Retrieval is not under test here, so the word-overlap searcher of conftest.py over synthetic endoscope-like
images stands in for the NanoCLIP ensemble + Chroma (see test_cli_chat.py for the whole stack).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from agent.assistant import Assistant, make_planner_and_judge
from agent.cli import app
from agent.cli.common import out_console
from agent.judges.gemini import GeminiJudge
from agent.judges.offline import OfflineJudge
from agent.llm import GeminiSettings
from agent.plan import OfflinePlanner
from gemini_stub import GeminiStub, text_reply
from store.paths import traces_db_path
from store.traces import TraceDB

GOOD = json.dumps({"score": 0.9, "justification": "Right drum <b>intact</b>.", "region_seen": "ear"})
BAD = "Looks like an ear </pre><script>alert('raw')</script>"
HOSTILE = "throat <script>alert(1)</script> & tonsils"


@pytest.fixture
def traced(word_searcher):
    """Four real runs in KGER_HOME's traces.db: an ask, a chat follow-up in its thread, a batch run with
    markup in its input, and a Gemini run (planner without key -> offline fallback; judge via the stub)."""
    searcher = word_searcher
    db = TraceDB(traces_db_path())
    offline = Assistant(searcher=searcher, traces=db, k=3, pool=6, planner=OfflinePlanner(), judge=OfflineJudge())
    left = offline.ask("left ear, tympanic membrane", thread_id="thread-1", kind="ask")
    right = offline.ask("only the right side", thread_id="thread-1", kind="chat")
    hostile = offline.ask(HOSTILE, kind="batch")
    planner, _ = make_planner_and_judge("gemini")  # no GOOGLE_API_KEY in tests: plans offline, and says why
    with GeminiStub([text_reply(GOOD), text_reply(BAD)]) as stub:
        settings = GeminiSettings(api_key=SecretStr("AIzaFAKE-trace-test-key-0123"), model="gemini-test",
                                  base_url=stub.base_url, max_retries=0, requests_per_minute=None)
        judge = GeminiJudge(settings, cache=False, max_concurrency=1)
        gem = Assistant(searcher=searcher, traces=db, k=3, pool=3, planner=planner, judge=judge, llm="gemini")
        gemini = gem.ask("right ear, tympanic membrane", kind="ask")
    db.close()
    return SimpleNamespace(left=left, right=right, hostile=hostile, gemini=gemini, items=searcher.items)


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setattr(out_console, "_width", 220)  # rich tables fold cells to the console width


@pytest.fixture
def no_models(monkeypatch):
    """Any attempt to build a model, a judge, a planner or a store fails the test."""

    def boom(*args, **kwargs):
        raise AssertionError("a model was built while auditing a trace")

    import agent.assistant
    import agent.llm
    import retrieval.bundle
    import retrieval.search
    import store.gallery

    monkeypatch.setattr(agent.assistant, "make_planner_and_judge", boom)
    monkeypatch.setattr(agent.assistant.Assistant, "__post_init__", boom)
    monkeypatch.setattr(agent.assistant.GeminiPlanner, "__init__", boom)
    monkeypatch.setattr(agent.llm, "make_gemini_chat", boom)
    monkeypatch.setattr(OfflinePlanner, "_generate", boom)
    monkeypatch.setattr(OfflineJudge, "__init__", boom)
    monkeypatch.setattr(GeminiJudge, "__init__", boom)
    monkeypatch.setattr(retrieval.bundle, "load_bundle", boom)
    monkeypatch.setattr(retrieval.search.Searcher, "__init__", boom)
    monkeypatch.setattr(store.gallery.Gallery, "open", boom)


def kger(*args: str):
    return CliRunner().invoke(app, list(args))


def _record(run_id: str) -> dict:
    with TraceDB(traces_db_path()) as db:
        return db.get_run(run_id)


# ------------------------------------------------------------------------------------------- list


def test_list_newest_first_with_filters(traced, no_models):
    listed = kger("trace", "list", "--json")
    assert listed.exit_code == 0, listed.output
    ids = [r["id"] for r in json.loads(listed.stdout)]
    assert ids == [traced.gemini.run_id, traced.hostile.run_id, traced.right.run_id]  # last 3 by default

    everything = json.loads(kger("trace", "list", "-n", "0", "--json").stdout)
    assert [r["id"] for r in everything][-1] == traced.left.run_id and len(everything) == 4
    assert [r["id"] for r in json.loads(kger("trace", "list", "-n", "1", "--json").stdout)] == [traced.gemini.run_id]

    found = json.loads(kger("trace", "list", "-n", "0", "--query", "TYMPANIC", "--json").stdout)
    assert {r["id"] for r in found} == {traced.left.run_id, traced.gemini.run_id}

    tomorrow = (datetime.now() + timedelta(days=1)).date().isoformat()
    yesterday = (datetime.now() - timedelta(days=1)).date().isoformat()
    assert json.loads(kger("trace", "list", "--since", tomorrow, "--json").stdout) == []
    assert json.loads(kger("trace", "list", "--until", yesterday, "--json").stdout) == []
    today = datetime.now().date().isoformat()
    assert len(json.loads(kger("trace", "list", "-n", "0", "--until", today, "--since", "1h", "--json").stdout)) == 4

    bad = kger("trace", "list", "--since", "last tuesday")
    assert bad.exit_code == 2 and "not a date" in bad.output


def test_list_human_table(traced, no_models, wide):
    shown = kger("trace", "list")
    assert shown.exit_code == 0
    for run in (traced.gemini, traced.hostile, traced.right):
        assert run.run_id[:8] in shown.stdout
    assert traced.left.run_id[:8] not in shown.stdout
    assert "only the right side" in shown.stdout and "ear-right" in shown.stdout  # the top image's class
    assert "3 of 4 stored runs" in shown.stdout  # how many there are beyond the ones shown


def test_list_at_80_columns_shows_whole_ids_that_show_accepts(traced, no_models, monkeypatch):
    monkeypatch.setattr(out_console, "_width", 80)
    shown = kger("trace", "list", "-n", "0")
    assert shown.exit_code == 0 and "4 of 4 stored runs" in shown.stdout
    ids = [line.split("│")[1].strip() for line in shown.stdout.splitlines()
           if line.count("│") > 2 and line.split("│")[1].strip()[:1].isalnum()]
    ids = [i for i in ids if re.fullmatch(r"[0-9a-f]{8,}", i)]
    assert len(ids) == 4, shown.stdout  # each id whole on one line, never folded
    for short in ids:
        res = kger("trace", "show", short, "--no-pager")
        assert res.exit_code == 0 and short in res.stdout


# ------------------------------------------------------------------------------------------- show


def test_show_walks_through_every_step(traced, no_models, wide):
    run = _record(traced.right.run_id[:8])
    shown = kger("trace", "show", traced.right.run_id[:8])
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert f"# Run {traced.right.run_id}" in out
    assert "## Input" in out and "only the right side" in out
    assert "thread: thread-1" in out and "kind: chat" in out
    # the planner's tool call (the follow-up resolved against the left-ear question)
    assert 'retrieve(query="right ear, tympanic membrane", region="ear", side="right", k=6)' in out
    assert "fallback: none" in out
    # every candidate with its per-fold scores
    events = {f"{e['node']}/{e['kind']}": e["payload"] for e in run["events"]}
    for c in events["retrieve/candidates"]["candidates"]:
        assert f"{c['fold_scores'][0]:.3f} {c['fold_scores'][1]:.3f}" in out
    # every judge answer, and the Pos-Fuse arithmetic of every row
    for v in events["judge/verdicts"]["verdicts"]:
        assert v["justification"] in out
    for row in events["fuse/table"]["table"]:
        assert row["formula"] in out
    assert "## Timings" in out and "total" in out


def test_show_gemini_run_has_raw_answers_and_fallback_reasons(traced, no_models, wide):
    out = kger("trace", "show", traced.gemini.run_id).stdout
    assert "planner: offline" in out and "fallback: no GOOGLE_API_KEY" in out
    assert "Right drum <b>intact</b>." in out  # parsed justification and the raw JSON it came from
    assert GOOD in out
    assert "fallback: malformed answer (no JSON object)" in out and BAD in out
    assert "fresh" in out and "gemini (gemini-test)" in out


def test_show_json_is_the_record(traced, no_models):
    shown = kger("trace", "show", traced.left.run_id, "--json")
    assert shown.exit_code == 0
    assert json.loads(shown.stdout) == _record(traced.left.run_id)


def test_unknown_run_is_one_line_exit_1(traced, no_models):
    for run_id in ("ffffffffffff", "not-hex"):
        res = kger("trace", "show", run_id)
        assert res.exit_code == 1
        assert res.output.strip().count("\n") == 0 and "No run" in res.output and "kger trace list" in res.output
    res = kger("trace", "export", "ffffffffffff")
    assert res.exit_code == 1 and "No run" in res.output


def test_no_trace_database_yet(kger_home, no_models):
    res = kger("trace", "list")
    assert res.exit_code == 1 and "No trace database" in res.output
    assert not traces_db_path().exists()  # reading does not create it


# ------------------------------------------------------------------------------------------- export


def test_export_json_to_stdout_and_file(traced, no_models, tmp_path):
    res = kger("trace", "export", traced.right.run_id[:10])
    assert res.exit_code == 0
    record = _record(traced.right.run_id)
    assert json.loads(res.stdout) == record
    out = tmp_path / "sub" / "run.json"
    res = kger("trace", "export", traced.right.run_id, "--format", "json", "--out", str(out))
    assert res.exit_code == 0 and json.loads(out.read_text()) == record
    assert kger("trace", "export", traced.right.run_id, "--format", "pdf").exit_code == 2


class Page(HTMLParser):
    """What a browser would build, reduced to what the tests look at."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    @property
    def content(self) -> str:
        return "".join(self.text)


def parse(html_text: str) -> Page:
    p = Page()
    p.feed(html_text)
    p.close()
    return p


def test_export_html_is_self_contained_and_escaped(traced, no_models, tmp_path):
    out = tmp_path / "gemini.html"
    res = kger("trace", "export", traced.gemini.run_id, "--format", "html", "--out", str(out))
    assert res.exit_code == 0, res.output
    text = out.read_text()
    page = parse(text)
    assert "right ear, tympanic membrane" in page.content
    rows = traced.gemini.rows
    imgs = [a["src"] for t, a in page.tags if t == "img"]
    assert len(imgs) == len(rows) and all(s.startswith("data:image/jpeg;base64,") for s in imgs)
    for row in rows:
        assert row.formula in page.content
    assert BAD in page.content and GOOD in page.content  # shown as text...
    assert not any(t == "script" for t, _ in page.tags)  # ...never run
    assert "<b>intact</b>" not in text and "&lt;b&gt;intact&lt;/b&gt;" in text
    assert not any(v.startswith(("http:", "https:", "//")) for _, a in page.tags for v in a.values() if v)

    hostile = tmp_path / "hostile.html"
    kger("trace", "export", traced.hostile.run_id, "--format", "html", "--out", str(hostile))
    page = parse(hostile.read_text())
    assert HOSTILE in page.content and not any(t == "script" for t, _ in page.tags)


def test_export_html_default_file_name(traced, no_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = kger("trace", "export", traced.left.run_id, "-f", "html")
    assert res.exit_code == 0
    written = tmp_path / f"kger-run-{traced.left.run_id[:12]}.html"
    assert written.is_file() and "left ear, tympanic membrane" in parse(written.read_text()).content


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_export_html_renders_in_chromium(traced, tmp_path):
    out = tmp_path / "run.html"
    kger("trace", "export", traced.right.run_id, "--format", "html", "--out", str(out))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = parse(dom.stdout)
    assert "only the right side" in page.content
    assert sum(1 for t, _ in page.tags if t == "img") == len(traced.right.rows)
    for row in traced.right.rows:
        assert row.formula in page.content
