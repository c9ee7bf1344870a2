"""A local stand-in for the Gemini REST API, so tests drive the real `ChatGoogleGenerativeAI` client.

It speaks just enough of `POST /v1beta/models/{model}:generateContent` for google-genai to parse the reply,
records every request (path, headers, JSON body) and answers from a script: a list of `Reply`s taken in
order (the last one repeats, so `[error_reply(500)]` means "500 forever"), or a callable of the request.

    with GeminiStub([error_reply(429), text_reply('{"score": 0.9, ...}')]) as stub:
        settings = GeminiSettings(api_key="fake", base_url=stub.base_url)
        ...
        assert len(stub.requests) == 2
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Sequence, Union

_GENERATE = re.compile(r"^/(?P<version>v1[a-z0-9]*)/models/(?P<model>[^/:]+):generateContent$")
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


@dataclass
class Reply:
    """One scripted answer: an HTTP status and a JSON (or raw text) body, sent after `delay` seconds."""

    status: int = 200
    body: Union[dict, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class RecordedRequest:
    path: str
    model: str
    headers: dict[str, str]
    body: dict[str, Any]

    def texts(self) -> list[str]:
        """Every text part the client sent, in order."""
        return [p["text"] for c in self.body.get("contents", []) for p in c.get("parts", []) if "text" in p]

    def inline_data(self) -> list[dict[str, Any]]:
        """Every inline media part ({'mimeType': ..., 'data': base64}) the client sent, in order."""
        out = []
        for content in self.body.get("contents", []):
            for part in content.get("parts", []):
                blob = part.get("inlineData") or part.get("inline_data")
                if blob is not None:
                    out.append(blob)
        return out


def text_reply(text: str, finish_reason: str = "STOP", delay: float = 0.0) -> Reply:
    """A successful generateContent answer whose only part is `text`."""
    return Reply(200, {
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": text}]},
            "finishReason": finish_reason,
            "index": 0,
        }],
        "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 40, "totalTokenCount": 340},
        "modelVersion": "stub-model",
        "responseId": "stub-response",
    }, delay)


def blocked_reply(finish_reason: str = "SAFETY") -> Reply:
    """A refusal: the candidate carries no content, only a blocking finish reason."""
    return Reply(200, {
        "candidates": [{"finishReason": finish_reason, "index": 0}],
        "usageMetadata": {"promptTokenCount": 300, "totalTokenCount": 300},
        "modelVersion": "stub-model",
    })


def error_reply(status: int, message: str = "scripted error", delay: float = 0.0,
                retry_delay: Optional[str] = None) -> Reply:
    """An error in the shape the Google APIs use ({'error': {code, message, status, details}});
    `retry_delay` (e.g. "0.05s") adds the google.rpc.RetryInfo a real 429 carries."""
    error: dict[str, Any] = {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN")}
    if retry_delay is not None:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
    return Reply(status, {"error": error}, delay)


Script = Union[Sequence[Reply], Callable[[RecordedRequest], Reply]]


class GeminiStub:
    """A threaded HTTP server on 127.0.0.1 (free port); use as a context manager."""

    def __init__(self, script: Script):
        self._script = script
        self._turn = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.requests: list[RecordedRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="gemini-stub", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "GeminiStub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()  # cut scripted delays short
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            if callable(self._script):
                return self._script(request)
            replies = list(self._script)
            reply = replies[min(self._turn, len(replies) - 1)]
            self._turn += 1
            return reply

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                match = _GENERATE.match(self.path.split("?", 1)[0])
                if match is None:
                    self._send(Reply(404, {"error": {"code": 404, "message": f"no route {self.path}",
                                                     "status": "NOT_FOUND"}}))
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                request = RecordedRequest(self.path, match["model"], dict(self.headers.items()), body)
                reply = stub._next_reply(request)
                if reply.delay and stub._stopping.wait(reply.delay):
                    return
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                data = payload.encode("utf-8")
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

        return Handler
