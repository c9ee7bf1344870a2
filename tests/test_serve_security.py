"""`kger serve` against a hostile web page, client and network (issue 22 rows 1, 2, 9, 10; issue 20 §2), over
real sockets: Host and Origin allow-list on every route (/mcp too), /similar never opening server paths, 413
for chunked bodies, a deadline on request headers, the token by default, and an outside MCP client
(langchain-mcp-adapters) reaching the server by this machine's non-loopback address."""
from __future__ import annotations

import ctypes
import json
import os
import re
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import ROOT, TOKEN, running_serve, serve_env

pytestmark = pytest.mark.slow
MARKER = "zebra canary wax"  # a run's text: it must never come back to a foreign Host or Origin
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAMED = ("kger.lan", "other.lan", "10.9.8.7")  # --allow-host kger.lan, $KGER_SERVE_ALLOWED_HOSTS the others
MCP_INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def own_address() -> str | None:
    """This machine's first non-loopback IPv4 address (`hostname -I`), or None."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return next((a for a in out if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", a) and not a.startswith("127.")), None)


class OpenWatch:
    """inotify on a folder: did anything open or read a file in it? (Linux; a stat does not count.)"""

    def __init__(self, folder: Path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, str(folder).encode(), 0x20 | 0x01) < 0:
            pytest.skip("inotify is not available here")

    def opened(self) -> bool:
        try:
            return bool(os.read(self.fd, 65536))
        except BlockingIOError:
            return False


@pytest.fixture(scope="module")
def secured(chat_gallery, tmp_path_factory, entrep_train):
    """`kger serve --host 0.0.0.0` with a token and named hosts; one run holding MARKER; a folder of files a
    caller might name (a real PNG and a text file) under an inotify watch."""
    tmp = tmp_path_factory.mktemp("serve-sec")
    secrets_dir = tmp / "server-files"
    secrets_dir.mkdir()
    shutil.copy(sorted((entrep_train / "imgs").iterdir())[5], secrets_dir / "canary.png")
    (secrets_dir / "secret.txt").write_text("not for you\n")
    env = serve_env(chat_gallery, KGER_SERVE_TOKEN=TOKEN, KGER_SERVE_ALLOWED_HOSTS="other.lan, 10.9.8.7")
    args = ["--host", "0.0.0.0", "--port", "0", "--allow-host", "kger.lan"]
    with running_serve(args, env, tmp / "serve.log") as (url, banner):
        port = int(url.rsplit(":", 1)[1])
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as c:
            answer = c.post("/ask", json={"text": MARKER, "k": 3, "thread_id": "sec-thread"}).json()
        yield {"url": url, "port": port, "run": answer["run_id"], "banner": banner, "files": secrets_dir,
               "watch": OpenWatch(secrets_dir), "answer": answer}


def routes(run_id: str, files: Path) -> list[tuple[str, str, dict | None]]:
    return [("GET", "/health", None), ("GET", "/runs", None), ("GET", f"/runs/{run_id}", None),
            ("GET", f"/runs/{run_id}/report", None), ("GET", "/docs", None), ("GET", "/openapi.json", None),
            ("POST", "/search", {"text": "left ear", "k": 2}), ("POST", "/similar", {"image": str(files / "canary.png")}),
            ("POST", "/ask", {"text": "right nose", "k": 2}), ("POST", "/mcp/", MCP_INIT)]


def send(port: int, method: str, path: str, body, host: str, origin: str | None = None, token: bool = True):
    headers = {"Host": host, **(AUTH if token else {}), **MCP_HEADERS}
    if origin is not None:
        headers["Origin"] = origin
    return httpx.request(method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers, timeout=120)


def assert_nothing_told(r: httpx.Response, run_id: str) -> None:
    assert r.status_code == 403, (r.status_code, r.text[:300])
    assert MARKER not in r.text and run_id not in r.text and "access-control-allow-origin" not in r.headers
    assert set(r.json()) == {"error"}


def test_a_foreign_host_or_origin_gets_403_and_no_run_text_on_every_route(secured):
    port, run_id = secured["port"], secured["run"]
    for method, path, body in routes(run_id, secured["files"]):
        assert_nothing_told(send(port, method, path, body, "evil.example"), run_id)
        assert_nothing_told(send(port, method, path, body, f"evil.example:{port}"), run_id)
        assert_nothing_told(send(port, method, path, body, f"127.0.0.1:{port}", origin="http://evil.example"), run_id)
        assert_nothing_told(send(port, method, path, body, f"127.0.0.1:{port}", origin="null"), run_id)
    r = send(port, "GET", "/runs", None, f"127.0.0.1:{port}", origin=f"http://127.0.0.1:{port}")  # our own page
    assert r.status_code == 200 and MARKER in r.text


def test_named_and_own_hosts_are_answered_on_every_door_including_mcp(secured):
    port, run_id = secured["port"], secured["run"]
    hosts = ["localhost", f"127.0.0.1:{port}", f"[::1]:{port}", f"KGER.lan:{port}", "other.lan", f"10.9.8.7:{port}",
             socket.gethostname()] + ([f"{own_address()}:{port}"] if own_address() else [])
    for host in hosts:
        r = send(port, "GET", f"/runs/{run_id}", None, host)
        assert r.status_code == 200 and r.json()["input"] == MARKER, (host, r.text[:200])
        r = send(port, "POST", "/mcp/", MCP_INIT, host)  # the SDK's own Host check follows the same list (no 421)
        assert r.status_code == 200 and r.json()["result"]["serverInfo"]["name"] == "kger", (host, r.text[:200])
    assert send(port, "GET", "/health", None, "0.0.0.0").status_code == 403  # browsers send 0.0.0.0 to localhost


def test_401_says_bearer_and_the_docs_load_without_a_token(secured):
    port = secured["port"]
    for method, path, body in (("GET", "/runs", None), ("POST", "/search", {"text": "ear"}), ("POST", "/mcp/", MCP_INIT)):
        r = send(port, method, path, body, f"127.0.0.1:{port}", token=False)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer") and MARKER not in r.text
    assert send(port, "GET", "/openapi.json", None, f"localhost:{port}", token=False).status_code == 200
    banner = secured["banner"]
    assert "token from $KGER_SERVE_TOKEN" in banner and TOKEN not in banner  # a token from the env is not echoed
    assert '"Authorization": "Bearer $KGER_SERVE_TOKEN"' in banner and "mcpServers" in banner


def test_similar_takes_ids_prefixes_and_thread_ranks_never_server_paths(secured):
    port, files, answer = secured["port"], secured["files"], secured["answer"]
    host = f"127.0.0.1:{port}"
    refusals = {send(port, "POST", "/similar", {"image": p}, host).text
                for p in (str(files / "canary.png"), str(files / "secret.txt"), str(files / "nope.png"), "/etc/passwd",
                          "/etc/nope", "../../etc/passwd", "canary.png", "C:\\x.png", "~/x.png")}
    assert len(refusals) == 1 and "upload it to POST /search/image" in refusals.pop()  # one answer, exists or not
    first = answer["rows"][0]["id"]
    for image in (first, first[:10].upper()):
        r = send(port, "POST", "/similar", {"image": image, "k": 3}, host)
        assert r.status_code == 200 and r.json()["id"] == first and first not in [x["id"] for x in r.json()["results"]]
    r = send(port, "POST", "/similar", {"image": "#1", "k": 3, "thread_id": "sec-thread"}, host)
    assert r.status_code == 200 and r.json()["id"] == first, r.text
    assert send(port, "POST", "/similar", {"image": "#99", "thread_id": "sec-thread"}, host).status_code == 404
    assert send(port, "POST", "/similar", {"image": "#1"}, host).status_code == 404  # no thread: no such #1
    assert send(port, "POST", "/similar", {"image": "0" * 6}, host).status_code in (404, 422)
    assert not secured["watch"].opened()


def test_similar_over_mcp_refuses_paths_too(secured):
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def session():
        http = httpx2.AsyncClient(headers=AUTH, timeout=httpx2.Timeout(30, read=300))
        async with http, Client(streamable_http_client(secured["url"] + "/mcp/", http_client=http)) as c:
            return [await c.call_tool("similar", {"image": p}) for p in (str(secured["files"] / "canary.png"), "/etc/nope")]

    results = anyio.run(session)
    texts = {r.content[0].text for r in results}
    assert all(r.is_error for r in results) and len(texts) == 1  # one answer, whether or not the file exists
    assert not secured["watch"].opened()


def test_strict_k_and_ambiguous_run_prefixes(secured):
    port, host = secured["port"], f"127.0.0.1:{secured['port']}"
    r = send(port, "POST", "/search", {"text": "ear", "k": True}, host)
    assert r.status_code == 422 and "k" in r.json()["error"]
    with httpx.Client(base_url=secured["url"], headers=AUTH, timeout=120) as c:
        ids = {secured["run"]} | {c.post("/ask", json={"text": "ear", "k": 1}).json()["run_id"] for _ in range(16)}
        firsts = [i[0] for i in ids]
        shared = next(ch for ch in firsts if firsts.count(ch) > 1)  # 17 hex ids: two share a first character
        r = c.get(f"/runs/{shared}")
    assert r.status_code == 409 and "ambiguous" in r.json()["error"], r.text


def _readable(s: socket.socket) -> bool:
    """poll, not select: a full suite holds more than 1,024 descriptors, beyond what select() takes."""
    p = select.poll()
    p.register(s, select.POLLIN)
    return bool(p.poll(0))


def _post_chunked(port: int, path: str, content_type: str, total: int) -> tuple[int, bytes]:
    """POST a chunked body of `total` bytes, reading as we send (the server answers before the end)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"Content-Type: {content_type}\r\nAccept: application/json, text/event-stream\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode())
    frame, sent, got = b"4000\r\n" + b"a" * 0x4000 + b"\r\n", 0, b""
    try:
        while sent < total and not _readable(s):
            s.sendall(frame)
            sent += 0x4000
        if sent >= total:
            s.sendall(b"0\r\n\r\n")
        while (data := s.recv(65536)):
            got += data
            if b"\r\n\r\n" in got and b'"}' in got:
                break
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    finally:
        s.close()
    return int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else 0, got


def test_chunked_bodies_over_the_limit_are_413_everywhere(secured):
    from agent.core.limits import MAX_UPLOAD

    for path, ctype in (("/search", "application/json"), ("/search/image", "multipart/form-data; boundary=x"),
                        ("/mcp/", "application/json")):
        status, raw = _post_chunked(secured["port"], path, ctype, MAX_UPLOAD + 1024 * 1024)
        assert status == 413 and b"Traceback" not in raw and b'"error"' in raw, (path, raw[:300])
    status, raw = _post_chunked(secured["port"], "/search", "application/json", 0)  # an empty chunked body
    assert status in (400, 422), raw[:300]


def test_half_sent_requests_are_closed_within_the_header_deadline(secured):
    """Slowloris: 16 connections that never finish their headers (half of them trickling a header line every
    second) are all closed by the server within ~10 s, while a complete request is still answered."""
    from agent.serve.protocol import HEADER_TIMEOUT_S

    port = secured["port"]
    socks = []
    for _ in range(16):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        socks.append(s)
    t0, closed = time.monotonic(), {}
    try:
        while len(closed) < len(socks) and time.monotonic() - t0 < HEADER_TIMEOUT_S + 10:
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                try:
                    if i % 2:
                        s.sendall(b"X-Slow: 1\r\n")
                    if _readable(s) and not s.recv(4096):
                        closed[i] = time.monotonic() - t0
                except OSError:
                    closed[i] = time.monotonic() - t0
            if len(closed) == 0 and time.monotonic() - t0 > 2:
                assert send(port, "GET", "/health", None, f"127.0.0.1:{port}").status_code == 200
            time.sleep(1)
    finally:
        for s in socks:
            s.close()
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} half-sent requests still open"
    assert max(closed.values()) <= HEADER_TIMEOUT_S + 3, closed


def test_an_outside_mcp_client_reaches_the_server_by_this_machines_address(secured, monkeypatch):
    """issue 20 §2: langchain-mcp-adapters (its own venv: 0.3.2 needs mcp<2, kger mcp>=2.3) over streamable HTTP
    to http://<eth0 address>:PORT/mcp/ with the token: no 421, the tools answer."""
    ip = own_address()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address (hostname -I)")
    python = Path(os.environ.get("KGER_MCP_CLIENT_PYTHON", ROOT / ".venv-mcpclient" / "bin" / "python"))
    if not python.exists():
        pytest.skip(f"no langchain-mcp-adapters venv at {python} (make mcp-client)")
    monkeypatch.setenv("KGER_NETGUARD_ALLOW", ip)  # our own interface: no packet leaves the machine
    script = (
        "import asyncio, json, sys\n"
        "from langchain_mcp_adapters.client import MultiServerMCPClient\n"
        "async def main():\n"
        "    c = MultiServerMCPClient({'kger': {'transport': 'streamable_http', 'url': sys.argv[1],\n"
        "                                       'headers': {'Authorization': 'Bearer ' + sys.argv[2]}}})\n"
        "    tools = {t.name: t for t in await c.get_tools()}\n"
        "    out = await tools['retrieve'].ainvoke({'query': 'right nose', 'k': 3, 'region': 'nose', 'side': 'right'})\n"
        "    print(json.dumps({'tools': sorted(tools), 'out': str(out)}))\n"
        "asyncio.run(main())\n")
    url = f"http://{ip}:{secured['port']}/mcp/"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "netguard")}
    r = subprocess.run([str(python), "-c", script, url, TOKEN], capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["tools"] == ["ask", "retrieve", "similar", "trace"] and doc["out"].count("nose-right") >= 3
    bad = subprocess.run([str(python), "-c", script, url, "wrong-token-wrong-token"], capture_output=True, text=True,
                         timeout=180, env=env)
    assert bad.returncode != 0 and "401" in bad.stderr


HOST_NAMES = st.one_of(st.sampled_from(["localhost", "127.0.0.1", "[::1]", "kger.lan", "Other.LAN", "10.9.8.7",
                                        "evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "0.0.0.0",
                                        "[::ffff:127.0.0.1]", "10.9.8.8", "kger.lan.", "[fe80::1]"]),
                       st.from_regex(r"[a-z0-9][a-z0-9.-]{0,24}", fullmatch=True))
ALLOWED = {"localhost", "127.0.0.1", "[::1]", "kger.lan", "other.lan", "10.9.8.7"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(name=HOST_NAMES, port=st.one_of(st.none(), st.integers(0, 65535)), route=st.integers(0, 9),
       origin=st.one_of(st.none(), st.sampled_from(["same", "http://evil.example", "null", "http://localhost:1",
                                                    "https://kger.lan"])),
       suffix=st.from_regex(r"[a-z0-9/._%-]{0,12}", fullmatch=True))
def test_random_hosts_origins_and_paths_never_get_run_text_or_open_files(secured, name, port, route, origin, suffix):
    allowed = ALLOWED | {socket.gethostname().lower()} | ({own_address()} if own_address() else set())
    host = name if port is None else f"{name}:{port}"
    method, path, body = routes(secured["run"], secured["files"])[route]
    if route in (0, 1, 4) and suffix:
        path = path.rstrip("/") + "/" + suffix
    if route == 7:
        body = {"image": str(secured["files"] / (suffix or "secret.txt"))}
    origin = f"http://{host}" if origin == "same" else origin
    r = send(secured["port"], method, path, body, host, origin=origin)
    own_origins = {f"http://{host}".lower(), f"https://{host}".lower()}  # the server's own, plain or behind TLS
    if name.lower() not in allowed or (origin is not None and origin.lower() not in own_origins):
        assert_nothing_told(r, secured["run"])
    else:
        assert r.status_code != 403, (host, origin, path, r.text[:200])
    assert not secured["watch"].opened()


def _can_bind_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_a_token_is_generated_and_printed_and_no_token_says_so_in_brackets_for_ipv6(chat_gallery, tmp_path):
    """Like Jupyter: no $KGER_SERVE_TOKEN means a generated token, printed with the URL and an MCP snippet, and
    required; --no-token on loopback serves without one and says so; an IPv6 bind prints http://[::1]:PORT."""
    with running_serve(["--port", "0"], serve_env(chat_gallery), tmp_path / "a.log") as (url, banner):
        token = re.search(r"token: (\S+)", banner).group(1)
        assert len(token) >= 40 and f'"Authorization": "Bearer {token}"' in banner and f"{url}/mcp/" in banner
        assert httpx.get(url + "/health", timeout=60).status_code == 401
        assert httpx.get(url + "/health", headers={"Authorization": f"Bearer {token}"}, timeout=60).status_code == 200
    if not _can_bind_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    with running_serve(["--host", "::1", "--port", "0", "--no-token"], serve_env(chat_gallery),
                       tmp_path / "b.log") as (url, banner):
        assert re.fullmatch(r"http://\[::1\]:\d+", url) and "NO TOKEN (--no-token)" in banner
        r = httpx.get(url + "/health", timeout=60)
        assert r.status_code == 200 and r.json()["status"] == "ok"
