"""`kger serve`'s two doors in process, over the fake searcher's 14 small real image files: MCP tool errors
reach the client as the one line HTTP gives, thumbnails are opt-in image content, and the OpenAPI description
says what the routes send (issue 20 §2, §3). The same server over real sockets: test_serve.py."""
from __future__ import annotations

import base64
import io
import json
import logging
from types import SimpleNamespace

import anyio
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from agent.assistant import Assistant
from agent.judges.offline import OfflineJudge


@pytest.fixture
def service(word_searcher, tmp_path):
    from agent.serve.service import Service
    from store.traces import TraceDB

    word_searcher.encoder = SimpleNamespace(fingerprint="wordstub", folds=2)
    word_searcher.gallery = SimpleNamespace(name="fake", count=lambda: len(word_searcher.items),
                                            all_metadata=lambda: [(it["id"], it) for it in word_searcher.items])
    traces = TraceDB(tmp_path / "traces.db")
    svc = Service(Assistant(searcher=word_searcher, judge=OfflineJudge(), traces=traces))
    yield svc
    traces.close()


@pytest.fixture
def http(service):
    from agent.serve.http import create_app

    with TestClient(create_app(service, mcp=False), base_url="http://127.0.0.1") as c:  # a loopback Host
        yield c


def _mcp(service, *calls):
    """Each (tool, arguments) called through the SDK's real client on one in-memory session."""
    from mcp import Client

    from agent.serve.mcp_tools import build_mcp

    async def session():
        async with Client(build_mcp(service)) as c:
            return [await c.call_tool(name, args) for name, args in calls]

    return anyio.run(session)


def _text(result) -> str:
    return " ".join(c.text for c in result.content if c.type == "text")


def _jpeg(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "JPEG" and max(img.size) <= 256
    return img


def test_mcp_tool_errors_carry_the_http_reason_and_log_one_line(service, http, caplog):
    cases = [("similar", {"image": "zzzzzzzz"}, "/similar", {"image": "zzzzzzzz"}),
             ("trace", {"run_id": "0123456789abcdef"}, "/runs/0123456789abcdef", None),
             ("ask", {"description": "   "}, None, None),
             ("retrieve", {"query": "ear " * 1250}, "/search", {"text": "ear " * 1250})]
    with caplog.at_level(logging.INFO):
        results = _mcp(service, *[(tool, args) for tool, args, _, _ in cases])
    for (tool, args, path, body), res in zip(cases, results):
        text = _text(res)
        assert res.is_error and "\n" not in text and "Traceback" not in text, (tool, text)
        assert text != f"Error executing tool {tool}", text  # the reason, not only the tool's name
        if path is not None:
            http_error = (http.post(path, json=body) if body else http.get(path)).json()["error"]
            if tool != "retrieve":  # (HTTP refuses the 5,000 characters in its schema, with its own words)
                assert http_error in text, (http_error, text)
    assert "upload it to POST /search/image" in _text(results[0]) and "No run" in _text(results[1])
    assert "non-empty" in _text(results[2]) and "at most 2000" in _text(results[3])
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == len(cases) and not any(r.exc_info for r in caplog.records)
    assert all("\n" not in r.getMessage() for r in refused)


def test_mcp_argument_validation_errors_are_one_line_without_the_value(service):
    over, = _mcp(service, ("retrieve", {"query": "ear", "k": 100000, "side": "up"}))
    text = _text(over)
    assert over.is_error and "\n" not in text and "less than or equal to 1000" in text and "100000" not in text


def test_mcp_thumbnails_are_opt_in_image_content(service):
    plain, thumbs, similar, asked = _mcp(
        service, ("retrieve", {"query": "left ear", "k": 3}), ("retrieve", {"query": "left ear", "k": 3,
                                                                            "thumbnails": True}),
        ("similar", {"image": service.searcher.items[0]["id"], "k": 2, "thumbnails": True}),
        ("ask", {"description": "left ear", "k": 2, "thumbnails": True}))
    assert not any(c.type == "image" for c in plain.content)
    for res, n in ((thumbs, 3), (similar, 2), (asked, 2)):
        assert not res.is_error, _text(res)
        images = [c for c in res.content if c.type == "image"]
        assert len(images) == n and all(c.mime_type == "image/jpeg" for c in images)
        assert all(min(_jpeg(c.data).size) > 32 for c in images)  # decoded, within the 256 px bound
    rows = thumbs.structured_content["results"]
    assert rows == plain.structured_content["results"] and "thumbnail" not in rows[0]
    assert f"#1 {rows[0]['name']}" in _text(thumbs)


def test_http_thumbnails_are_a_base64_field_when_asked(http, service):
    plain = http.post("/search", json={"text": "left ear", "k": 2}).json()["results"]
    assert all(r.get("thumbnail") is None for r in plain)
    rows = http.post("/search", json={"text": "left ear", "k": 2, "thumbnails": True}).json()["results"]
    assert all(_jpeg(r["thumbnail"]) for r in rows)
    asked = http.post("/ask", json={"text": "left ear", "k": 2, "thumbnails": True}).json()["rows"]
    assert len(asked) == 2 and all(_jpeg(r["thumbnail"]) for r in asked)
    ref = service.searcher.items[0]["id"]
    similar = http.post("/similar", json={"image": ref, "k": 2, "thumbnails": True}).json()["results"]
    assert len(similar) == 2 and all(_jpeg(r["thumbnail"]) for r in similar)


def test_openapi_documents_every_status_and_the_error_body(http):
    doc = http.get("/openapi.json").json()
    paths = doc["paths"]
    statuses = {p: set(ops[next(iter(ops))]["responses"]) for p, ops in paths.items()}
    assert {"200", "400", "401", "403", "413", "415", "422"} <= statuses["/search/image"]
    assert {"200", "400", "401", "403", "404", "413", "422"} <= statuses["/similar"]
    assert {"200", "401", "403", "404", "422"} <= statuses["/runs/{run_id}/report"]
    assert {"503"} <= statuses["/ask"]
    err = paths["/search"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert err == {"$ref": "#/components/schemas/ErrorBody"}
    assert doc["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    assert set(paths["/ask/stream"]["post"]["responses"]["200"]["content"]) == {"text/event-stream"}
    assert set(paths["/runs/{run_id}/report"]["get"]["responses"]["200"]["content"]) == {"text/html"}
    # what the schema accepts the server accepts: blank texts and ids are schema-invalid
    ask = doc["components"]["schemas"]["AskRequest"]["properties"]
    assert ask["text"]["pattern"] and ask["thread_id"]["anyOf"][0]["minLength"] == 1
    assert http.post("/ask", json={"text": "ear", "thread_id": ""}).status_code == 422
    assert http.post("/search", json={"text": "ear", "k": "5"}).status_code == 422  # strict: "5" is not 5
    assert http.get("/runs/%20%20").status_code == 422
    assert http.post("/search", json={"text": "\x1c\ufeff "}).status_code == 422


def test_docs_page_loads_its_assets_from_this_server(http):
    page = http.get("/docs").text
    assert "cdn" not in page.lower() and "https://" not in page
    assert http.get("/docs/static/swagger-ui-bundle.js").status_code == 200
    assert http.get("/docs/static/swagger-ui.css").status_code == 200
    assert "https://" not in http.get("/redoc").text


def test_search_is_served_while_a_judged_turn_runs(service, http):
    """A turn that does not finish (its graph blocked) holds the turn thread; /search and /health still answer
    (before the split they queued behind it on one lock)."""
    import threading

    from agent.state import Answer

    entered, release = threading.Event(), threading.Event()

    def slow_ask(text, turn, on_event=None):
        entered.set()
        release.wait(60)
        return Answer(question=text, run_id="r", thread_id="t")

    service.assistant.ask = slow_ask
    asked = {}
    worker = threading.Thread(target=lambda: asked.update(r=http.post("/ask", json={"text": "left ear"})))
    worker.start()
    try:
        assert entered.wait(30)
        for _ in range(3):
            r = http.post("/search", json={"text": "left ear", "k": 3})
            assert r.status_code == 200 and len(r.json()["results"]) == 3
        assert http.get("/health").status_code == 200 and worker.is_alive() and not release.is_set()
    finally:
        release.set()
        worker.join(30)
    assert asked["r"].status_code == 200 and asked["r"].json()["run_id"] == "r"


class _LowJudge:
    """Scores every image 0.1: the evidence is weak, so the corrective loop searches again while it may."""

    name = "low"

    def judge(self, query, candidates, on_progress=None):
        from agent.judges.base import Verdict

        return [Verdict(id=c.id, score=0.1, justification="low", judge="offline", model="low") for c in candidates]


def _sse(response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_rounds_over_http_and_mcp_and_each_round_streams_as_a_reflect_event(service, http):
    """Issue 19: `rounds` on /ask, /ask/stream and MCP ask (default: DEFAULT_ROUNDS; 0: one pass); the stream
    shows each decision of the loop as it is made, the same decisions the answer and the trace keep."""
    from agent.core.events import read_events
    from agent.core.limits import DEFAULT_ROUNDS, MAX_ROUNDS

    service.assistant.judge = _LowJudge()
    once = http.post("/ask", json={"text": "wax in the ear", "k": 2, "rounds": 0})
    assert once.status_code == 200 and once.json()["cost"]["rounds"] == 0
    assert [r["decision"] for r in once.json()["rounds"]] == ["answer"]
    default = http.post("/ask", json={"text": "wax in the ear", "k": 2})  # everything judged low: every round made
    assert default.status_code == 200 and default.json()["cost"]["rounds"] == DEFAULT_ROUNDS == 2
    with http.stream("POST", "/ask/stream", json={"text": "wax in the ear", "k": 2, "rounds": 2}) as r:
        assert r.status_code == 200
        events = _sse(r)
    reflects = [p for n, p in events if n == "reflect"]
    assert [(p["round"], p["decision"]) for p in reflects] == [(0, "search_again"), (1, "search_again"), (2, "answer")]
    assert all(p["triggers"] and p["reason"] for p in reflects) and "signals" not in reflects[0]  # the trace has those
    answer = events[-1][1]
    assert events[-1][0] == "answer" and answer["cost"]["rounds"] == 2
    assert [r["decision"] for r in answer["rounds"]] == [p["decision"] for p in reflects]
    assert len(read_events(service.run(answer["run_id"])).rounds) == 3
    over = http.post("/ask", json={"text": "wax in the ear", "rounds": MAX_ROUNDS + 1})
    assert over.status_code == 422 and f"less than or equal to {MAX_ROUNDS}" in over.json()["error"]
    [mcp] = _mcp(service, ("ask", {"description": "wax in the ear", "k": 2, "rounds": 1}))
    assert not mcp.is_error, _text(mcp)
    run = service.run(json.loads(_text(mcp))["run_id"])
    assert [e.decision for e in read_events(run).rounds] == ["search_again", "answer"]
