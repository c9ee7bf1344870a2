"""`kger batch` and the query-file readers, on the real ENTRep files and the 70 real images.

The store fixture (a 2-fold untrained bundle, the 70 images indexed twice: with their cls.json labels as
`default`, and without labels as `blind`) comes from conftest's `store_factory`, shared with tests/test_eval.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.core.queries import read_ground_truth, read_queries
from conftest import ANNOTATIONS, T2I_JSON, need_entrep as need  # the one way tests find the real data

runner = CliRunner()
T2I_CSV = ANNOTATIONS / "Track3_Public" / "t2i.csv"
TRAIN_CSV = ANNOTATIONS / "train.csv"

# One plain description per ENTRep class: relevant = every image of that class in the store.
CLASS_QUERIES = {
    "left ear": "ear-left", "right ear": "ear-right", "left nasal cavity": "nose-left",
    "right nasal cavity": "nose-right", "throat": "throat", "vocal cords open": "vc-open",
    "vocal cords closed": "vc-closed",
}

def kger(*args: str, home: Path):
    return runner.invoke(app, [*args, "--home", str(home)])


@pytest.fixture(scope="session")
def store_home(store_factory) -> Path:
    """A home with stores `default` (labelled) and `blind` (no labels) over the 70 images (tests/conftest.py)."""
    return store_factory(seed=0, blind=True).home


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- readers -------------------------------------------------------------------------------------------------

def test_txt_reader_reports_bad_lines_and_duplicates(tmp_path):
    f = tmp_path / "q.txt"
    f.write_bytes(b"left ear\n\n  right ear  \nbad \x01 control\nleft ear\n\xff\xfe not utf-8\n" + b"x" * 2001 + b"\nthroat")
    parsed = read_queries(f)
    assert [(q.line, q.text) for q in parsed.items] == [(1, "left ear"), (3, "right ear"), (8, "throat")]
    assert [(s.line, s.reason) for s in parsed.skipped] == [
        (4, "contains control characters"), (5, "duplicate of line 1"), (6, "not valid UTF-8"),
        (7, "longer than 2000 characters (2001)")]


def test_csv_reader_with_header_and_bad_rows(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text('id,Query\n1,"left ear, dull tympanic membrane"\n2,\n3,throat,extra\n4,right nasal cavity\n')
    parsed = read_queries(f)
    assert [(q.line, q.text) for q in parsed.items] == [(2, "left ear, dull tympanic membrane"), (5, "right nasal cavity")]
    assert [(s.line, s.reason) for s in parsed.skipped] == [(3, "empty query"), (4, "has 3 fields, the header has 2")]


def test_entrep_test_csv_text_column(tmp_path):
    """ENTRep's test.csv layout: `image,text` with the image column empty; its first query is repeated."""
    f = tmp_path / "test.csv"
    f.write_text("image,text\n,edema of the arytenoids\n,edema of the arytenoids\n,a spur on the septum\n")
    parsed = read_queries(f)
    assert [q.text for q in parsed.items] == ["edema of the arytenoids", "a spur on the septum"]
    assert [(s.line, s.reason) for s in parsed.skipped] == [(3, "duplicate of line 2")]


def test_headerless_track3_t2i_csv():
    parsed = read_queries(need(T2I_CSV))
    raw = [line for line in T2I_CSV.read_text().splitlines() if line.strip()]
    assert len(parsed.items) + len(parsed.skipped) == len(raw) == 71
    assert parsed.items[0].text == raw[0] and parsed.items[0].line == 1
    assert [q.text for q in parsed.items] == list(dict.fromkeys(raw))


def test_headerless_csv_with_an_unquoted_comma_is_reported(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text("left ear\nright ear, dull membrane\nthroat\n")
    parsed = read_queries(f)
    assert [q.text for q in parsed.items] == ["left ear", "throat"]
    assert parsed.skipped[0].line == 2 and "quote" in parsed.skipped[0].reason


def test_jsonl_reader(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"query": "left ear"}\n{"text": "throat"}\nnot json\n{"image": "x.png"}\n"right ear"\n[1]\n')
    parsed = read_queries(f)
    assert [(q.line, q.text) for q in parsed.items] == [(1, "left ear"), (2, "throat"), (5, "right ear")]
    assert [s.line for s in parsed.skipped] == [3, 4, 6]
    assert parsed.skipped[0].reason.startswith("not valid JSON")
    assert parsed.skipped[1].reason == "no 'query' field"


def test_t2i_json_keys_are_the_queries():
    parsed = read_queries(need(T2I_JSON))
    doc = json.loads(T2I_JSON.read_text())
    assert parsed.unit == "entry"
    assert [q.text for q in parsed.items] == list(doc) and len(doc) == 71
    assert parsed.skipped == []
    # the Track 3 public query list is the same 71 strings in the same order
    assert [q.text for q in read_queries(need(T2I_CSV)).items] == list(doc)


def test_unknown_suffix_and_bad_json_are_user_errors(tmp_path):
    (tmp_path / "q.xlsx").write_text("x")
    with pytest.raises(ValueError, match="use a .txt, .csv, .jsonl, .json file"):
        read_queries(tmp_path / "q.xlsx")
    (tmp_path / "q.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_queries(tmp_path / "q.json")
    r = runner.invoke(app, ["batch", str(tmp_path / "q.xlsx"), "--out", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 1 and "Error:" in r.output and "Traceback" not in r.output


def test_ground_truth_readers(tmp_path):
    t2i = read_ground_truth(need(T2I_JSON))
    doc = json.loads(T2I_JSON.read_text())
    assert len(t2i.items) == 71 and all(len(t.images) == 1 and not t.classes for t in t2i.items)
    assert {t.query: t.images[0] for t in t2i.items} == doc
    # ENTRep train.csv: image_path,text with Windows separators; the same pairs as t2i.json
    train = read_ground_truth(need(TRAIN_CSV))
    assert {t.query: t.images for t in train.items} == {q: (img,) for q, img in doc.items()}

    f = tmp_path / "gt.csv"
    f.write_text("query,class\nleft ear,ear-left\nright ear,Ear_Right\nboth,ear-left; x.png\nleft ear,a/b.png\nnothing,\n")
    gt = read_ground_truth(f)
    by_q = {t.query: t for t in gt.items}
    assert by_q["left ear"].classes == ("ear-left",) and by_q["left ear"].images == ("b.png",)  # rows merged
    assert by_q["right ear"].classes == ("ear-right",)
    assert by_q["both"].classes == ("ear-left",) and by_q["both"].images == ("x.png",)
    assert [(s.line, s.reason) for s in gt.skipped] == [(6, "no relevant image or class given")]

    j = tmp_path / "gt.json"
    j.write_text(json.dumps({"left ear": "ear-left", "two": ["a.png", "b.png"], "bad": 3}))
    gt = read_ground_truth(j)
    assert {t.query: (t.images, t.classes) for t in gt.items} == {
        "left ear": ((), ("ear-left",)), "two": (("a.png", "b.png"), ())}
    assert gt.skipped[0].line == 3


# -- batch ---------------------------------------------------------------------------------------------------

def test_batch_writes_one_line_per_query_with_run_ids_and_submission(store_home, tmp_path):
    q = tmp_path / "q.txt"
    q.write_text("left ear, dull tympanic membrane\n\nthroat\nbad \x01 line\nright nasal cavity\n")
    out, sub, rep = tmp_path / "out.jsonl", tmp_path / "sub.json", tmp_path / "report.html"
    r = kger("batch", str(q), "--out", str(out), "--submission", str(sub), "--report", str(rep), "--k", "5",
             "--json", home=store_home)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    counts = {key: summary[key] for key in ("queries", "done", "skipped", "failed", "cache_hits", "answered_in_file")}
    assert counts == {"queries": 3, "done": 3, "skipped": 0, "failed": 0, "cache_hits": 0, "answered_in_file": 3}
    assert summary["bad_lines"] == [{"line": 4, "reason": "contains control characters"}]
    assert "line 4" in r.stderr and "contains control characters" in r.stderr

    lines = lines_of(out)
    assert [(d["query"], d["line"]) for d in lines] == [
        ("left ear, dull tympanic membrane", 1), ("throat", 3), ("right nasal cavity", 5)]
    assert len({d["run_id"] for d in lines}) == 3
    for d in lines:
        assert d["error"] is None and len(d["rows"]) == 5
        assert [row["rank"] for row in d["rows"]] == [1, 2, 3, 4, 5]
        assert all(row["justification"] and row["judge"] is not None and row["formula"] for row in d["rows"])
    # the offline planner's constraints, and the labelled store, put the right class first
    assert [d["rows"][0]["label"] for d in lines] == ["ear-left", "throat", "nose-right"]
    # each run is traced under the same home
    from store.traces import TraceDB

    with TraceDB(store_home / "traces.db") as db:
        for d in lines:
            run = db.get_run(d["run_id"])
            assert run["kind"] == "batch" and run["input"] == d["query"] and run["status"] == "ok"
    assert json.loads(sub.read_text()) == {d["query"]: d["rows"][0]["name"] for d in lines}
    page = rep.read_text()
    assert page.startswith("<!doctype html>") and all(d["run_id"][:12] in page for d in lines)


def test_batch_resumes_after_an_interruption(store_home, tmp_path):
    queries = list(CLASS_QUERIES)[:5]
    q3, q5, out = tmp_path / "q3.txt", tmp_path / "q5.txt", tmp_path / "out.jsonl"
    q3.write_text("\n".join(queries[:3]) + "\n")
    q5.write_text("\n".join(queries) + "\n")
    r = kger("batch", str(q3), "--out", str(out), "--json", home=store_home)
    assert r.exit_code == 0, r.output
    first = lines_of(out)
    assert [d["query"] for d in first] == queries[:3]
    # a crash in the middle of writing the 4th line leaves half a line behind
    with open(out, "a") as f:
        f.write('{"query": "right nasal cavity", "rows": [{"rank"')
    r = kger("batch", str(q5), "--out", str(out), "--submission", str(tmp_path / "sub.json"), "--json", home=store_home)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (2, 3, 0)
    assert "incomplete last line" in r.stderr
    lines = lines_of(out)
    assert [d["query"] for d in lines] == queries  # 2 new lines, no duplicates
    assert lines[:3] == first  # earlier answers untouched
    assert set(json.loads((tmp_path / "sub.json").read_text())) == set(queries)
    # a third run has nothing to do and loads nothing
    r = kger("batch", str(q5), "--out", str(out), "--json", home=store_home)
    assert json.loads(r.stdout)["done"] == 0 and len(lines_of(out)) == 5


def test_ctrl_c_keeps_finished_lines_and_a_rerun_finishes(store_home, tmp_path, monkeypatch):
    from agent.assistant import Assistant

    real_ask = Assistant.ask

    def interrupted(self, question, *a, **kw):
        if question == "throat":
            raise KeyboardInterrupt
        return real_ask(self, question, *a, **kw)

    q, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    q.write_text("left ear\nthroat\nright ear\n")
    monkeypatch.setattr(Assistant, "ask", interrupted)
    r = kger("batch", str(q), "--out", str(out), "--json", home=store_home)
    assert r.exit_code == 130 and json.loads(r.stdout)["interrupted"] is True
    assert [d["query"] for d in lines_of(out)] == ["left ear"]
    monkeypatch.setattr(Assistant, "ask", real_ask)
    r = kger("batch", str(q), "--out", str(out), "--json", home=store_home)
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] == 1
    assert [d["query"] for d in lines_of(out)] == ["left ear", "throat", "right ear"]


def test_two_batch_runs_cannot_write_one_file(tmp_path):
    from agent.cli.batch import ResultsWriter

    q, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    q.write_text("left ear\n")
    holder = ResultsWriter(out)
    try:
        r = runner.invoke(app, ["batch", str(q), "--out", str(out)])
        assert r.exit_code == 1 and "another kger batch is writing" in r.output
    finally:
        holder.close()
    assert out.read_text() == ""


def test_failing_query_gets_an_error_line_and_is_retried_on_rerun(store_home, tmp_path, monkeypatch):
    from agent.assistant import Assistant

    real_ask = Assistant.ask

    def flaky(self, question, *a, **kw):
        if question == "throat":
            raise RuntimeError("judge service down")
        return real_ask(self, question, *a, **kw)

    q, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    q.write_text("left ear\nthroat\nright ear\n")
    monkeypatch.setattr(Assistant, "ask", flaky)
    r = kger("batch", str(q), "--out", str(out), "--json", home=store_home)
    assert r.exit_code == 1
    summary = json.loads(r.stdout)
    assert (summary["done"], summary["failed"]) == (2, 1)
    assert summary["failures"] == [{"query": "throat", "line": 2, "error": "RuntimeError: judge service down"}]
    lines = lines_of(out)
    assert [d["query"] for d in lines] == ["left ear", "throat", "right ear"]
    assert lines[1]["error"] == "RuntimeError: judge service down" and lines[1]["rows"] == []

    monkeypatch.setattr(Assistant, "ask", real_ask)
    r = kger("batch", str(q), "--out", str(out), "--submission", str(tmp_path / "s.json"), "--json", home=store_home)
    assert r.exit_code == 0, r.output
    assert (json.loads(r.stdout)["done"], json.loads(r.stdout)["skipped"]) == (1, 2)
    assert [d["query"] for d in lines_of(out)] == ["left ear", "throat", "right ear", "throat"]
    assert set(json.loads((tmp_path / "s.json").read_text())) == {"left ear", "throat", "right ear"}


def test_gemini_without_a_key_falls_back_and_the_summary_counts_it(store_home, tmp_path):
    q, out = tmp_path / "q.jsonl", tmp_path / "out.jsonl"
    q.write_text('{"query": "left ear"}\n{"query": "vocal cords open"}\n')
    r = kger("batch", str(q), "--out", str(out), "--llm", "gemini", "--k", "3", "--concurrency", "2", "--json",
             home=store_home)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["judge_fallbacks"] == {"rows": 6, "queries": 2}
    rows = [row for d in lines_of(out) for row in d["rows"]]
    assert all(row["fallback"] and row["judge_kind"] == "offline" for row in rows)
    assert "GOOGLE_API_KEY is not set" in r.stderr
