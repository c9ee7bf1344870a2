"""`kger serve` over real sockets on 127.0.0.1, on the 70 real images: round trips, 4xx for bad requests, the
token, and real MCP client sessions over stdio and over streamable HTTP."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess

import httpx
import pytest

from serving import KGER, ROOT, TOKEN, running_serve, serve_env

pytestmark = pytest.mark.slow
_env = serve_env


@pytest.fixture(scope="module")
def server(chat_gallery, tmp_path_factory):
    """`kger serve --port 0` with a token (so every request is checked); yields (base url, home)."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_serve(["--port", "0"], serve_env(chat_gallery, KGER_SERVE_TOKEN=TOKEN), log_path) as (url, _):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        yield url, chat_gallery


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
        yield c


def _one_line_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    doc = r.json()
    assert set(doc) == {"error"} and "\n" not in doc["error"] and "Traceback" not in doc["error"]
    return doc["error"]


def test_health_uses_the_onnx_encoder(client):
    doc = client.get("/health").json()
    assert doc["status"] == "ok" and doc["encoder"] == "onnx" and doc["images"] >= 60 and doc["folds"] == 2


def test_search_text_round_trip(client):
    r = client.post("/search", json={"text": "left ear, tympanic membrane", "k": 7})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["rank"] for x in res] == list(range(1, 8))
    assert all(a["score"] >= b["score"] for a, b in zip(res, res[1:]))
    assert all(abs(x["score"] - sum(x["fold_scores"]) / 2) < 1e-4 for x in res)


def test_search_by_uploaded_real_image_finds_itself(client, entrep_train):
    path = sorted((entrep_train / "imgs").iterdir())[3]
    data = path.read_bytes()
    r = client.post("/search/image", files={"file": (path.name, data, "image/png")}, data={"k": "5"})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["id"] == hashlib.sha256(data).hexdigest() and top["score"] > 0.999


def test_ask_runs_and_report_round_trip(client):
    r = client.post("/ask", json={"text": "left ear, tympanic membrane", "k": 5})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert len(answer["rows"]) == 5 and answer["rows"][0]["label"] == "ear-left"  # the side is a hard constraint
    run_id = answer["run_id"]
    assert run_id in [x["id"] for x in client.get("/runs", params={"limit": 5}).json()]
    run = client.get(f"/runs/{run_id[:12]}").json()
    assert run["id"] == run_id and run["input"] == "left ear, tympanic membrane" and run["events"]
    page = client.get(f"/runs/{run_id}/report")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "left ear, tympanic membrane" in page.text and "<html" in page.text.lower()


def test_ask_streams_node_events_then_the_answer(client):
    events = []
    with client.stream("POST", "/ask/stream", json={"text": "right nose", "k": 3}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    names = [n for n, _ in events]
    assert names[-1] == "answer" and len(events[-1][1]["rows"]) == 3
    nodes = [p["node"] for n, p in events if n == "node"]
    assert nodes[0] == "plan" and "judge" in nodes and nodes[-1] == "answer"
    progress = [p for n, p in events if n == "progress"]
    assert progress and progress[-1]["judged"] == progress[-1]["total"] > 0


def test_bad_requests_get_one_line_4xx(client, tmp_path):
    assert "less than or equal to 100" in _one_line_error(client.post("/search", json={"text": "ear", "k": 100000}), 422)
    assert "malformed JSON" in _one_line_error(
        client.post("/search", content=b'{"text": "ear",', headers={"content-type": "application/json"}), 400)
    assert "text" in _one_line_error(client.post("/ask", json={"k": 3}), 422)
    err = _one_line_error(client.post("/search/image", files={"file": ("notes.png", b"just some text\n" * 20,
                                                                       "image/png")}), 415)
    assert "not an image" in err
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (17 * 1024 * 1024)
    assert "over" in _one_line_error(client.post("/search/image", files={"file": ("big.png", big, "image/png")}), 413)
    assert "No run" in _one_line_error(client.get("/runs/0123456789abcdef"), 404)
    err = _one_line_error(client.get("/runs", params={"limit": 100000}), 422)
    assert "limit" in err and "less than or equal to 200" in err, err  # names the parameter and its bound


def test_token_is_checked_on_every_request(server):
    url, _ = server
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for method, path in (("GET", "/health"), ("POST", "/search"), ("POST", "/mcp/")):
            r = httpx.request(method, url + path, headers=headers, json={"text": "ear"}, timeout=30)
            assert "token" in _one_line_error(r, 401)


def test_no_token_is_for_loopback_only_and_short_tokens_are_refused_beyond_it(chat_gallery):
    for args, env, says in ((["--host", "0.0.0.0", "--no-token"], {}, "loopback only"),
                            (["--host", "0.0.0.0"], {"KGER_SERVE_TOKEN": "x"}, "at least 16"),
                            (["--host", "0.0.0.0"], {"KGER_SERVE_TOKEN": " "}, "blank"),
                            (["--no-token"], {"KGER_SERVE_TOKEN": TOKEN}, "choose one")):
        r = subprocess.run(KGER + ["serve", "--port", "0", *args], cwd=ROOT, env=_env(chat_gallery, **env),
                           capture_output=True, text=True, timeout=120)
        flat = " ".join(r.stderr.replace("│", " ").split())  # the usage error box wraps long lines
        assert r.returncode == 2 and says in flat and "Traceback" not in r.stderr, (args, r.stderr)


def test_mcp_stdio_session_lists_tools_and_answers(chat_gallery):
    import anyio
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=KGER[0], args=KGER[1:] + ["serve", "--mcp-stdio"], cwd=str(ROOT),
                                   env=_env(chat_gallery))

    async def session():
        async with Client(params, read_timeout_seconds=120) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            retrieved = await c.call_tool("retrieve", {"query": "left ear", "k": 4, "region": "ear", "side": "left"})
            asked = await c.call_tool("ask", {"description": "left ear, tympanic membrane", "k": 3})
            bad = await c.call_tool("retrieve", {"query": "ear", "k": 100000})
            traced = await c.call_tool("trace", {"run_id": asked.structured_content["run_id"]})
            return tools, retrieved, asked, bad, traced

    tools, retrieved, asked, bad, traced = anyio.run(session)
    assert set(tools) == {"retrieve", "similar", "ask", "trace"}
    assert all(len(t.description) > 80 for t in tools.values())
    assert not retrieved.is_error
    rows = retrieved.structured_content["results"]
    assert len(rows) == 4 and all(r["label"] == "ear-left" for r in rows)
    assert not asked.is_error and asked.structured_content["rows"][0]["label"] == "ear-left"
    assert bad.is_error
    assert not traced.is_error and traced.structured_content["input"] == "left ear, tympanic membrane"


def test_mcp_over_streamable_http_with_the_token(server):
    """The SDK's own client at /mcp of the running server, sending the token as every other client must."""
    import anyio
    import httpx2  # the MCP SDK's HTTP client library
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    url, _ = server

    async def session():
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(30, read=300))
        async with http, Client(streamable_http_client(url + "/mcp/", http_client=http)) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            retrieved = await c.call_tool("retrieve", {"query": "right nose", "k": 3, "region": "nose", "side": "right"})
            asked = await c.call_tool("ask", {"description": "left ear, tympanic membrane", "k": 3})
            return tools, retrieved, asked

    tools, retrieved, asked = anyio.run(session)
    assert tools == {"retrieve", "similar", "ask", "trace"}
    assert not retrieved.is_error
    assert [r["label"] for r in retrieved.structured_content["results"]] == ["nose-right"] * 3
    assert not asked.is_error and asked.structured_content["rows"][0]["label"] == "ear-left"


def test_cli_http_and_mcp_similar_give_one_ranking(server, client, entrep_train):
    """Issue 21: `kger search --image`, POST /similar and MCP `similar` all rank by `Searcher.similar` (the
    image-to-image vectors the store holds), so the same image gets the same neighbours at every door."""
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    url, home = server
    image = sorted((entrep_train / "imgs").glob("*.png"))[0]
    own = hashlib.sha256(image.read_bytes()).hexdigest()
    out = subprocess.run(KGER + ["search", "--image", str(image), "--k", "6", "--json"], cwd=ROOT, env=_env(home),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    cli = [r["id"] for r in json.loads(out.stdout)["results"] if r["id"] != own][:5]
    r = client.post("/similar", json={"image": own, "k": 5})
    assert r.status_code == 200, r.text
    http = [x["id"] for x in r.json()["results"]]

    async def session():
        h = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(30, read=300))
        async with h, Client(streamable_http_client(url + "/mcp/", http_client=h)) as c:
            return await c.call_tool("similar", {"image": own, "k": 5})

    mcp = anyio.run(session)
    assert not mcp.is_error
    assert len(cli) == 5 and cli == http == [x["id"] for x in mcp.structured_content["results"]]
    assert "image-to-image" not in out.stderr  # the store has the vectors: no fallback notice
