"""`/docs` renders offline (issue 20): headless Chromium opens the page of a real server on 127.0.0.1 with
every other host unreachable, and Swagger UI draws the API's operations from the locally served assets.
(FastAPI's default page loads swagger-ui from a CDN: under the same rules it stays blank.)"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# no name resolves but the loopback address, and anything not on loopback goes to a dead proxy
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9"]


@pytest.fixture
def docs_server():
    """The real app (routes, Guard, docs) under uvicorn on a free port; its service is never called."""
    import uvicorn

    from agent.serve.http import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(SimpleNamespace(), mcp=False), host="127.0.0.1", port=0,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_docs_render_in_headless_chromium_offline(docs_server, tmp_path):
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *OFFLINE,
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
                           "--dump-dom", f"{docs_server}/docs"], capture_output=True, text=True, timeout=120)
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<title>kger - Swagger UI</title>" in dom
    assert 'class="swagger-ui' in dom and "opblock" in dom, dom[-2000:]  # Swagger UI ran and drew operations
    for path in ("/search", "/ask/stream", "/runs/{run_id}/report"):
        assert f'data-path="{path}"' in dom, path
