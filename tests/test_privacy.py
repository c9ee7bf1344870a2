"""Nothing leaves the machine unless the user chose it (DESIGN.md §9), whatever the environment says.

A local HTTP sink plays the LangSmith endpoint with the usual tracing variables set: `kger ask`, `kger batch`
and `kger chat` must send it nothing; with the explicit opt-in `KGER_LANGSMITH=1` the run reaches it and the
CLI says so. The network guard (tests/netguard/sitecustomize.py) is checked to be able to fail.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent import privacy

KGER = [sys.executable, "-c", "from agent.cli import main; main()"]


class Sink:
    """An HTTP server on 127.0.0.1 that answers 200 '{}' to anything and records each request."""

    def __init__(self):
        self.requests: list[tuple[str, str, int]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                sink.requests.append((self.command, self.path, len(body)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PATCH = do_PUT = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_enforce_turns_every_tracing_spelling_off():
    env = {"LANGSMITH_TRACING": "true", "LANGCHAIN_TRACING_V2": "true", "LANGSMITH_API_KEY": "k"}
    assert privacy.enforce(env) is None
    assert all(env[v] == "false" for v in privacy.TRACING_VARS)


def test_opt_in_keeps_tracing_and_names_the_endpoint():
    env = {"LANGSMITH_TRACING": "true", "KGER_LANGSMITH": "1", "LANGSMITH_ENDPOINT": "http://127.0.0.1:9"}
    notice = privacy.enforce(env)
    assert notice and "http://127.0.0.1:9" in notice and env["LANGSMITH_TRACING"] == "true"


def test_the_network_guard_refuses_and_records(tmp_path):
    """The guard itself can fail a test: a child process's connection to a non-loopback address is refused
    and recorded (the packet is never sent: the guard raises before the system call)."""
    log = tmp_path / "guard.log"
    env = dict(os.environ, KGER_NETGUARD_LOG=str(log))
    code = "import socket\ntry:\n socket.create_connection(('192.0.2.1', 80), timeout=1)\nexcept ConnectionRefusedError as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "test network guard" in out.stdout, out.stderr
    assert "192.0.2.1" in log.read_text()
    with Sink() as sink:  # loopback stays allowed
        code = f"import urllib.request; print(urllib.request.urlopen('{sink.url}/ok', timeout=5).read())"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and sink.requests == [("GET", "/ok", 0)], out.stderr
    assert log.read_text().count("\n") == 1


@pytest.fixture
def traced_env(real_store, tmp_path):
    """A private copy of the real 70-image store and an environment with LangSmith tracing switched on."""
    home, _ = real_store
    mine = tmp_path / "home"
    shutil.copytree(home, mine, ignore=shutil.ignore_patterns("traces.db*", "checkpoints.db*"))

    def make(sink_url: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_", "KGER_LANGSMITH"))}
        env.update(KGER_HOME=str(mine), LANGSMITH_TRACING="true", LANGCHAIN_TRACING_V2="true",
                   LANGSMITH_API_KEY="lsv2-fake-key", LANGSMITH_ENDPOINT=sink_url, LANGCHAIN_ENDPOINT=sink_url,
                   LANGSMITH_PROJECT="kger-test", NO_COLOR="1", **extra)
        return env

    return make


def _run(args, env, stdin: str | None = None, cwd: Path | None = None):
    return subprocess.run([*KGER, *args], env=env, input=stdin, capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
def test_tracing_variables_send_nothing_from_ask_batch_or_chat(traced_env, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("left ear\nright nasal cavity\n")
    with Sink() as sink:
        env = traced_env(sink.url)
        done = [_run(["ask", "white discharge in the left external auditory canal", "--k", "3"], env),
                _run(["batch", str(queries), "--out", str(tmp_path / "runs.jsonl")], env),
                _run(["chat"], env, stdin="left ear\n/quit\n")]
        for r in done:
            assert r.returncode == 0, r.stderr
        assert sum(1 for line in (tmp_path / "runs.jsonl").read_text().splitlines() if line.strip()) == 2
    assert sink.requests == []
    for command, r in zip(("ask", "batch", "chat"), done):  # no command announces LangSmith tracing
        assert "LangSmith" not in r.stderr, (command, r.stderr)


@pytest.mark.slow
def test_opt_in_sends_the_run_and_says_so(traced_env):
    with Sink() as sink:
        r = _run(["ask", "left ear", "--k", "3", "--json"], traced_env(sink.url, KGER_LANGSMITH="1"))
    assert r.returncode == 0, r.stderr
    assert "LangSmith tracing is on" in r.stderr and sink.url in r.stderr
    assert json.loads(r.stdout)["rows"]
    posted = [req for req in sink.requests if req[0] in ("POST", "PATCH")]
    assert posted and sum(size for _, _, size in posted) > 1000, sink.requests
