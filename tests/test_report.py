"""agent/report.py: self-contained, escaped HTML for one run and for a batch of runs.

The records are built in the shape the graph writes (test_cli_trace.py renders records the graph really
wrote); here they carry what real inputs can carry: markup in descriptions and model answers, a missing
image, a run that failed before any event, a bare answer without events.
"""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from agent.core.report import render_batch, render_run

EVIL = '<img src=x onerror="alert(1)"> & "quotes"'
RAW = '{"score": 0.8, "justification": "</td></tr></table><script>alert(2)</script>"}'


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if attrs.get("id"):
            self.ids.add(attrs["id"])

    def handle_data(self, data):
        self.text.append(data)

    @property
    def content(self) -> str:
        return "".join(self.text)

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


def parse(html_text: str) -> Page:
    p = Page()
    p.feed(html_text)
    p.close()
    return p


def disc(path: Path, colour=(220, 140, 120)) -> str:
    img = Image.new("RGB", (640, 480))
    ImageDraw.Draw(img).ellipse((120, 40, 520, 440), fill=colour)
    img.save(path)
    return str(path)


def make_run(tmp_path: Path, run_id: str = "0123456789abcdef0123456789abcdef", question: str = "left ear, drum",
             missing: bool = True) -> dict:
    paths = [disc(tmp_path / f"{run_id[:4]}-a.png"), disc(tmp_path / f"{run_id[:4]}-b.png", (90, 60, 200)),
             str(tmp_path / "gone.png") if missing else disc(tmp_path / f"{run_id[:4]}-c.png")]
    names = [Path(p).name for p in paths]
    ids = [f"{run_id[:4]}id{i}" for i in range(3)]
    formulas = [f"(0.4*0.{4 - i}000 + 0.6*(0.6*0.{4 - i}000+0.4*1.000)) / 1 = 0.{5 - i}000" for i in range(3)]
    cands = [{"rank": i + 1, "id": ids[i], "path": paths[i], "name": names[i], "score": 0.5 - 0.1 * i,
              "fold_scores": [0.51 - 0.1 * i, 0.49 - 0.1 * i], "label": "ear-left", "predicted": None,
              "predicted_prob": None, "filter_match": True, "query": question} for i in range(3)]
    verdicts = [{"id": ids[0], "score": 0.8, "justification": EVIL, "judge": "gemini", "model": "gemini-x",
                 "raw": RAW, "cached": True, "fallback": None},
                {"id": ids[1], "score": 0.5, "justification": "offline says so", "judge": "offline",
                 "model": "offline-lexicon", "raw": "not json", "cached": False,
                 "fallback": "malformed answer (no JSON object)"},
                {"id": ids[2], "score": 0.2, "justification": "far", "judge": "offline", "model": "offline-lexicon",
                 "raw": None, "cached": False, "fallback": None}]
    table = [{"id": ids[i], "final": 0.5 - 0.1 * i, "retrieval_rank": i + 1, "judge_rank": i + 1,
              "retrieval_prob": 0.4, "judge_prob": 0.4, "judge_score": verdicts[i]["score"], "formula": formulas[i],
              "demoted": "labelled ear-right, the description asks for left ear" if i == 2 else None}
             for i in range(3)]
    rows = [{"rank": i + 1, "id": ids[i], "path": paths[i], "name": names[i], "label": "ear-left", "predicted": None,
             "predicted_prob": None, "retrieval": cands[i]["score"], "fold_scores": cands[i]["fold_scores"],
             "judge": verdicts[i]["score"], "judge_kind": verdicts[i]["judge"], "fallback": verdicts[i]["fallback"],
             "cached": verdicts[i]["cached"], "justification": verdicts[i]["justification"], "fused": table[i]["final"],
             "formula": formulas[i], "demoted": table[i]["demoted"]} for i in range(3)]
    events = [
        {"seq": 0, "node": "plan", "kind": "tool_calls", "payload": {
            "planner": "offline", "fallback": "no GOOGLE_API_KEY", "ms": 1.5,
            "tool_calls": [{"name": "retrieve", "args": {"query": question, "side": "left", "k": 20}, "id": "c1"}]}},
        {"seq": 1, "node": "retrieve", "kind": "candidates", "payload": {"candidates": cands,
                                                                        "errors": ["similar: no image #9"]}},
        {"seq": 2, "node": "judge", "kind": "verdicts", "payload": {"judge": "gemini", "question": question,
                                                                   "verdicts": verdicts, "ms": 20.0}},
        {"seq": 3, "node": "fuse", "kind": "table", "payload": {"config": {"strategy": "posfuse", "decay": 0.8},
                                                               "constraints": {"side": "left"}, "table": table}},
    ]
    return {"id": run_id, "created": "2026-01-02T03:04:05+00:00", "thread_id": "t", "kind": "ask",
            "input": question, "llm": "gemini", "store": "default", "bundle": "b" * 16, "status": "ok",
            "answer": {"question": question, "rows": rows, "run_id": run_id, "input": question},
            "timings": {"plan": 1.5, "total": 30.0}, "error": None, "events": events}


def test_render_run_shows_every_step(tmp_path):
    run = make_run(tmp_path)
    page = parse(render_run(run))
    text = page.content
    assert page.all("title") and "left ear, drum" in text
    assert page.all("meta")[0].get("charset") == "utf-8"
    for row in run["answer"]["rows"]:
        assert f"#{row['rank']}" in text and row["formula"] in text and row["name"] in text
    assert "0.510 0.490" in text  # per-fold scores of the candidates
    assert "retrieve(query=" in text and "no GOOGLE_API_KEY" in text  # tool calls and the planner's fallback
    assert "fallback: malformed answer (no JSON object)" in text and "cached" in text and "not json" in text
    assert "ranked last: labelled ear-right" in text
    assert "tool error: similar: no image #9" in text
    assert "image not found" in text  # the missing file gets a placeholder, not a broken page


def table_cells(html_text: str, cls: str) -> list[list[str]]:
    """The header and body rows of the page's first table of class `cls`, as cell texts."""
    table = re.search(rf'<table class="{cls}">(.*?)</table>', html_text, re.S).group(1)
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", tr, re.S)]
            for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S)]


def test_the_first_score_is_the_judges_0_to_100_match(tmp_path):
    """Issue 23: the first score column reads on its own (the judge's score, 0-100), not the fused score that
    only orders one answer; the Pos-Fuse arithmetic stays beside it. Stored rows without `match` get it."""
    run = make_run(tmp_path)
    head, *body = table_cells(render_run(run), "answer")
    assert head[:5] == ["#", "image", "class", "match", "retrieval"] and "Pos-Fuse formula" in head
    assert [r[3] for r in body] == ["80", "50", "20"]
    assert [r[head.index("Pos-Fuse formula")] for r in body] == [r["formula"] for r in run["answer"]["rows"]]
    head, *body = table_cells(render_batch([run], "b"), "summary")
    assert head == ["#", "description", "top image", "match", "status", "run"] and body[0][3] == "80"


def test_thumbnails_are_inlined_jpegs(tmp_path):
    page = parse(render_run(make_run(tmp_path)))
    srcs = [a["src"] for a in page.all("img")]
    assert len(srcs) == 2  # the third image is missing
    for src in srcs:
        assert src.startswith("data:image/jpeg;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "JPEG" and max(img.size) <= 160
    # the circle crop trimmed the black border: the thumbnail is about the disc's square, not 4:3
    w, h = Image.open(io.BytesIO(base64.b64decode(srcs[0].split(",", 1)[1]))).size
    assert abs(w - h) <= 8


def test_everything_is_escaped_and_nothing_external(tmp_path):
    run = make_run(tmp_path, question='<script>alert("q")</script> right ear')
    html_text = render_run(run)
    page = parse(html_text)
    assert not page.all("script")
    assert '<script>alert("q")</script> right ear' in page.content and EVIL in page.content and RAW in page.content
    assert not any("onerror" in a for _, a in page.tags)
    assert all(src.startswith("data:") for src in (a.get("src") for _, a in page.tags) if src)
    assert not page.all("link") and "http://" not in html_text and "https://" not in html_text


def test_failed_run_without_events(tmp_path):
    run = {"id": "f" * 32, "input": "nose", "status": "error", "error": "KeyboardInterrupt: ", "events": [],
           "answer": None, "timings": {}}
    page = parse(render_run(run))
    assert "Error: KeyboardInterrupt" in page.content and "No image in the answer." in page.content


def test_render_batch_links_each_run(tmp_path):
    runs = [make_run(tmp_path, "a" * 32, "left ear one", missing=False),
            make_run(tmp_path, "b" * 32, "right nose & <two>", missing=False)]
    bare = dict(runs[0]["answer"], run_id="c" * 32, input="throat three")  # an answer without its trace record
    page = parse(render_batch(runs + [{"answer": bare}], title="Batch <queries.txt>"))
    assert "Batch <queries.txt>" in page.content and "3 run(s)." in page.content
    hrefs = [a["href"] for a in page.all("a")]
    assert hrefs == [f"#run-{'a' * 32}", f"#run-{'b' * 32}", f"#run-{'c' * 32}"]
    assert all(h[1:] in page.ids for h in hrefs)  # every summary link lands on its section
    assert "right nose & <two>" in page.content and "throat three" in page.content
    assert len(page.all("img")) == 9
    assert len(page.all("details")) == 8 and not any("open" in a for a in page.all("details"))
    assert render_batch([], "empty").count("<section") == 0
    # lines that failed before a run was recorded have no id: each still gets its own anchor
    failed = [{"id": "", "input": f"q{i}", "status": "error", "error": "boom", "answer": None} for i in range(2)]
    page = parse(render_batch(failed, "failures"))
    hrefs = [a["href"] for a in page.all("a")]
    assert len(set(hrefs)) == 2 and all(h[1:] in page.ids for h in hrefs) and "Error: boom" in page.content


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_batch_page_renders_in_chromium(tmp_path):
    out = tmp_path / "batch.html"
    out.write_text(render_batch([make_run(tmp_path, "a" * 32, "left ear one"),
                                 make_run(tmp_path, "b" * 32, "right nose two")], "batch"))
    shot = tmp_path / "shot.png"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1200,900", f"--screenshot={shot}", out.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 900)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # text, tables and thumbnails drew something, not a blank page
    # the inlined thumbnails were decoded: the disc colour is on the screen
    assert any(abs(r - 220) < 12 and abs(g - 140) < 12 and abs(b - 120) < 12 for r, g, b in img.getdata())
