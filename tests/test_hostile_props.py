"""Property-based hostile input (issue 14): arbitrary unicode, markup-like and control-character text through
every place kger shows or stores it. Nothing may raise, and the text must come back unchanged from the trace
database, `trace export` JSON, `trace show --json` and the batch results file.

The in-memory `word_searcher` stands in for the model (retrieval is not under test); the agent, the trace
database, the renderers and the CLI are the real ones. Examples are bounded so the file runs in seconds.
"""
from __future__ import annotations

import io
import json
import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from agent.assistant import Assistant
from agent.cli import app
from agent.judges.offline import OfflineJudge
from agent.plan import OfflinePlanner
from agent.prompts import is_blank
from retrieval.errors import InputError
from store.paths import traces_db_path
from store.traces import TraceDB

FIXTURES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_any = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120)
_controls = st.text(st.characters(min_codepoint=0, max_codepoint=0x9F), max_size=20)
_markup = st.builds(lambda a, tag, b: f"{a}[{tag}]{b}[/{tag}]", _any,
                    st.sampled_from(["bold", "/bold", "link=http://evil.example", "red on white", "", "/", "[", "]"]),
                    _any)
_fixed = st.sampled_from(["[/bold] left ear", "\x1b]8;;http://x\x1b\\left\x1b]8;;\x1b\\", "ear\u202eleft",
                          "left ear\r\nright ear", "\\[bold]", "[", "]", "left ear " * 400])
hostile = st.one_of(_any, _controls, _markup, _fixed, st.builds(str.__add__, _markup, _controls))
description = hostile.filter(lambda s: s.strip())
# What Assistant.ask takes; a description of white space and control characters only is refused (below).
searchable = hostile.filter(lambda s: not is_blank(s))


def render(*renderables) -> str:
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system="truecolor")
    for r in renderables:
        console.print(r)
    return console.file.getvalue()


@settings(max_examples=200, deadline=None)
@given(hostile)
def test_data_renders_anything_and_keeps_plain_text(text):
    from agent.core.render import SCREEN_CHARS, clean, line, literal

    out = render(literal(text), line("[bold]kger[/bold] ", literal(text)))
    assert "\x1b]8;" not in out  # no hyperlink escape from the data
    shown = clean(text)
    if shown == text and len(text) <= SCREEN_CHARS:
        assert literal(text).plain == text
    assert not any(ord(c) < 32 and c not in "\n\t" for c in shown)


@FIXTURES
@given(text=searchable)
def test_ask_trace_and_render_round_trip(word_searcher, text):
    from agent.cli.ask import answer_table
    from agent.core.audit import explain_rank, run_view

    with TraceDB(traces_db_path()) as db:
        assistant = Assistant(searcher=word_searcher, traces=db, k=2, pool=4, planner=OfflinePlanner(),
                              judge=OfflineJudge())
        answer = assistant.ask(text, kind="ask")
        run = db.get_run(answer.run_id)
        listed = db.list_runs(limit=1)
    assert run["input"] == text and answer.input == text
    assert json.loads(json.dumps(run, ensure_ascii=False, default=str))["input"] == text
    render(answer_table(answer), run_view(run), run_view(run, short=True), explain_rank(run, 1))
    assert listed[0]["input"] == text


def _visible(text: str) -> bool:
    """Some character that is neither whitespace nor a control character: a description with words in it."""
    return any(not (c.isspace() or unicodedata.category(c) == "Cc") for c in text)


@FIXTURES
@given(text=description)
def test_chat_turns_never_raise(word_searcher, text):
    """Each turn answers: a description with anything visible in it gets a table, its input kept as typed
    (less the surrounding spaces the prompt drops), and 'why is 1 first?' explains it from the trace; a slash
    command, or a description of control characters only, gets its one-line hint (or the command's output)."""
    from agent.cli.chat import ChatSession

    out, err = Console(file=io.StringIO(), width=100), Console(file=io.StringIO(), width=100_000)
    with TraceDB(traces_db_path()) as db:
        assistant = Assistant(searcher=word_searcher, traces=db, k=2, pool=4, planner=OfflinePlanner(),
                              judge=OfflineJudge())
        session = ChatSession(assistant, console=out, err=err)
        going_on = session.handle(text)
        shown, said = out.file.getvalue(), err.file.getvalue().splitlines()
        if text.strip().startswith("/"):  # a command: it leaves (/quit), prints its output or one hint line
            assert going_on or text.strip()[1:].split(" ")[0].lower() in ("quit", "exit", "q")
            assert not going_on or (shown.strip() and not said) or len(said) == 1, (shown, said)
            return
        assert going_on
        answer = session.last
        if answer is None:  # no answer: only for text with nothing to search, said in one hint line
            assert is_blank(text) and not _visible(text), (text, shown, said)
            assert not shown and len(said) == 1 and "Type a clinical description" in said[0], (shown, said)
            return
        assert answer.status == "ok" and len(answer.rows) == 2 and answer.input == text.strip()
        assert db.get_run(answer.run_id)["input"] == text.strip()
        assert f"run {answer.run_id}" in shown and "No image found" not in shown
        before = len(out.file.getvalue())
        assert session.handle("why is 1 first?")
        assert "Why #1 " in out.file.getvalue()[before:]


_blank = st.text(st.sampled_from(" \t\n\r\x00\x01\x08\x0b\x0c\x0e\x12\x1b\x1f\x7f\u3000"), min_size=1, max_size=20)


@FIXTURES
@given(text=_blank)
def test_a_description_of_controls_only_is_refused_and_stores_no_run(word_searcher, text):
    assert is_blank(text)
    with TraceDB(traces_db_path()) as db:
        before = len(db.list_runs(limit=1_000_000))
        assistant = Assistant(searcher=word_searcher, traces=db, k=2, pool=4, planner=OfflinePlanner(),
                              judge=OfflineJudge())
        try:
            assistant.ask(text, kind="batch")
        except InputError as e:
            assert "empty" in str(e)
        else:
            raise AssertionError(f"{text!r} was searched")
        assert len(db.list_runs(limit=1_000_000)) == before


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=searchable)
def test_trace_cli_show_list_export_round_trip(word_searcher, text, tmp_path_factory):
    with TraceDB(traces_db_path()) as db:
        run_id = Assistant(searcher=word_searcher, traces=db, k=2, pool=4, planner=OfflinePlanner(),
                           judge=OfflineJudge()).ask(text, kind="batch").run_id
    runner = CliRunner()
    shown = runner.invoke(app, ["trace", "show", run_id, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["input"] == text
    for args in (["trace", "show", run_id[:12]], ["trace", "list", "-n", "2"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0 and r.exception is None, r.output
    out = tmp_path_factory.mktemp("export") / "run.json"
    r = runner.invoke(app, ["trace", "export", run_id, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text(encoding="utf-8"))["input"] == text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(hostile, max_size=8))
def test_batch_lines_parse_and_results_round_trip(lines, tmp_path_factory):
    from agent.cli.batch import ResultsWriter, read_results
    from agent.core.queries import read_queries
    from retrieval.errors import InputError

    folder = tmp_path_factory.mktemp("batch")
    q = folder / "q.jsonl"
    q.write_text("".join(json.dumps({"query": s}) + "\n" for s in lines), encoding="utf-8")
    try:
        parsed = read_queries(q)
    except InputError as e:  # no usable query: one line
        assert "\n" not in str(e)
        return
    for item in parsed.items:
        assert item.text == lines[item.line - 1].strip()
    writer = ResultsWriter(folder / "out.jsonl")
    for item in parsed.items:
        writer.write({"query": item.text, "line": item.line, "rows": [], "error": None})
    writer.close()
    latest, bad = read_results(folder / "out.jsonl")
    assert not bad and set(latest) == {i.text for i in parsed.items}
