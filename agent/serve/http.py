"""The HTTP JSON API of `kger serve` (FastAPI; its OpenAPI page is /docs), with the MCP tools at /mcp.

Every failure a client can cause is a 4xx with one line, {"error": "..."}: validation, malformed JSON, an
oversized body, a bad token, a foreign Host or Origin (those four in guard.py, before any route runs), a
non-image upload. Anything else is a 500 with one line too; tracebacks go to the server's log only.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from contextlib import asynccontextmanager
from typing import Any, Optional

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from agent.core.filters import Filters
from agent.core.limits import MAX_K, MAX_RUNS, MAX_TEXT, MAX_UPLOAD
from agent.core.version import kger_version
from agent.serve.guard import Guard, HostPolicy
from agent.serve.service import IMAGE_REF, RequestError, Service

log = logging.getLogger("kger.serve")
BODY_SLACK = 64 * 1024  # multipart framing around an upload of MAX_UPLOAD bytes


class SearchRequest(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="A clinical description.")
    k: int = Field(10, ge=1, le=MAX_K, strict=True, description="How many images to return.")
    filters: Optional[Filters] = Field(None, description="Region, side, state: matching images first, then "
                                                         "uncertain, then contradicting; strict: matching only.")


class AskRequest(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="A clinical description or a follow-up.")
    k: int = Field(5, ge=1, le=MAX_K, strict=True, description="How many images to return.")
    thread_id: Optional[str] = Field(None, max_length=200, description="Continue this conversation.")


class SimilarRequest(BaseModel):
    image: str = Field(min_length=1, max_length=4096, description=f"{IMAGE_REF[0].upper()}{IMAGE_REF[1:]}. Never a "
                                                                   "path on the server: upload a file to /search/image.")
    k: int = Field(10, ge=1, le=MAX_K, strict=True)
    thread_id: Optional[str] = Field(None, max_length=200, description="The thread whose last answer #N ranks.")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split()) or "error"}, status_code=status)


def _one_line(exc: RequestValidationError) -> str:
    errs = exc.errors()
    if not errs:
        return "invalid request"
    e = errs[0]
    if e.get("type") == "json_invalid":
        return f"malformed JSON: {e.get('ctx', {}).get('error', e.get('msg', ''))}"
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
    return f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid request"))


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str, ensure_ascii=False)}\n\n"


def create_app(service: Service, token: Optional[str] = None, mcp: bool = True, policy: Optional[HostPolicy] = None):
    """The ASGI app: FastAPI routes, the MCP streamable-HTTP endpoint at /mcp, all behind `Guard` (Host and
    Origin by `policy`, loopback names by default; the token when one is given)."""
    policy = policy or HostPolicy()
    mcp_server = None
    if mcp:
        from agent.serve.mcp_tools import build_mcp

        mcp_server = build_mcp(service)
        mcp_app = mcp_server.streamable_http_app(streamable_http_path="/", stateless_http=True,
                                                 json_response=True, max_request_body_size=MAX_UPLOAD,
                                                 transport_security=policy.sdk_settings())

    @asynccontextmanager
    async def lifespan(app):
        if mcp_server is None:
            yield
            return
        async with mcp_server.session_manager.run():
            yield

    app = FastAPI(title="kger", lifespan=lifespan, version=kger_version(),
                  description="Find ENT endoscopy images from a clinical description, and explain the choice. "
                              "MCP tools (retrieve, similar, ask, trace) are served at /mcp.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        bad_json = any(e.get("type") == "json_invalid" for e in exc.errors())
        return _error(400 if bad_json else 422, _one_line(exc))

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return _error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("request failed: %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/health", summary="Store, bundle and encoder of this server")
    def health() -> dict:
        return service.health()

    @app.post("/search", summary="Retrieval only: the ensemble's top-k images for a description")
    def search(req: SearchRequest) -> dict:
        return service.search_text(req.text, req.k, req.filters)

    @app.post("/search/image", summary="Retrieval only: images like an uploaded image (PNG, JPEG, ...)")
    async def search_image(file: UploadFile = File(...), k: int = Form(10, ge=1, le=MAX_K)) -> dict:
        data = await file.read(MAX_UPLOAD + 1)
        return await _in_thread(service.search_image_bytes, data, k, file.filename or "upload")

    @app.post("/similar", summary="Images like one already in the store (its id, a unique id prefix, or #N of a thread)")
    def similar(req: SimilarRequest) -> dict:
        return service.similar(req.image, req.k, req.thread_id)

    @app.post("/ask", summary="The whole agent: plan, retrieve, judge, fuse; the answer with its run id")
    def ask(req: AskRequest) -> dict:
        return service.ask(req.text, req.k, req.thread_id)

    @app.post("/ask/stream", summary="Like /ask, as server-sent events: node, progress, then answer (or error)")
    def ask_stream(req: AskRequest):
        events: "queue.Queue[Optional[str]]" = queue.Queue()

        def work():
            try:
                answer = service.ask(req.text, req.k, req.thread_id,
                                     on_event=lambda kind, payload: events.put(_sse(kind, payload)))
                events.put(_sse("answer", answer))
            except RequestError as e:
                events.put(_sse("error", {"error": str(e), "status": e.status}))
            except Exception as e:  # noqa: BLE001 - the stream has started: report, do not raise
                log.exception("ask stream failed")
                events.put(_sse("error", {"error": f"internal error ({type(e).__name__})", "status": 500}))
            finally:
                events.put(None)

        threading.Thread(target=work, name="kger-ask", daemon=True).start()

        def stream():
            while (item := events.get()) is not None:
                yield item

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/runs", summary="Recent runs, newest first")
    def runs(limit: int = Query(20, ge=1, le=MAX_RUNS), q: Optional[str] = Query(None, max_length=MAX_TEXT)) -> list:
        return service.runs(limit, q)

    @app.get("/runs/{run_id}", summary="One run's full record: every node's input and output")
    def run(run_id: str) -> dict:
        return service.run(run_id)

    @app.get("/runs/{run_id}/report", response_class=HTMLResponse, summary="One run as a self-contained HTML page")
    def report(run_id: str) -> HTMLResponse:
        return HTMLResponse(service.report_html(run_id))

    if mcp_server is not None:
        app.mount("/mcp", mcp_app)
    return Guard(app, policy, token, MAX_UPLOAD + BODY_SLACK)


async def _in_thread(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)

