"""The HTTP JSON API of `kger serve` (FastAPI; its OpenAPI page is /docs), with the MCP tools at /mcp.

Every failure a client can cause is a 4xx with one line, {"error": "..."}: validation, malformed JSON, an
oversized body, a bad token, a foreign Host or Origin (those four in guard.py, before any route runs), a
non-image upload. Anything else is a 500 with one line too; tracebacks go to the server's log only.
"""
from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from typing import Any, Optional

from fastapi import FastAPI, File, Form, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from agent.core.limits import MAX_K, MAX_RUNS, MAX_TEXT, MAX_UPLOAD
from agent.core.version import kger_version
from agent.serve.docs import mount_docs
from agent.serve.schemas import (COMMON, MAX_ID, NONBLANK, SSE_EVENT, AskRequest, AskResponse, ErrorBody, Health,
                                 ImageSearchResponse, RunRecord, RunSummary, SearchRequest, SearchResponse,
                                 SimilarRequest, errors, first_error_line)
from agent.serve.guard import Guard, HostPolicy
from agent.serve.service import RequestError, Service
from agent.serve.thumbs import add_thumbnails

log = logging.getLogger("kger.serve")
BODY_SLACK = 64 * 1024  # multipart framing around an upload of MAX_UPLOAD bytes


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split()) or "error"}, status_code=status)


def _one_line(exc: RequestValidationError) -> str:
    return first_error_line(exc.errors())


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str, ensure_ascii=False)}\n\n"


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


STREAM_DOC = {200: {"description": "server-sent events: `node`, `progress` and `reflect` (a loop decision) while "
                                   "the turn runs, then one `answer` (the /ask body) or one `error` ({error, status})",
                    "content": {"text/event-stream": {"schema": SSE_EVENT}}}}
RunId = Path(min_length=1, max_length=MAX_ID, pattern=NONBLANK, description="A run id or a unique prefix of one.")


def _thumbed(doc: dict, key: str, want: bool) -> dict:
    if want:
        add_thumbnails(doc[key])
    return doc


def create_app(service: Service, token: Optional[str] = None, mcp: bool = True, policy: Optional[HostPolicy] = None):
    """The ASGI app: FastAPI routes, the MCP streamable-HTTP endpoint at /mcp, all behind `Guard` (Host and
    Origin by `policy`, loopback names by default; the token when one is given).

    Retrieval-only routes run on the service's retrieval threads, /ask on its turn thread (service.py)."""
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

    app = FastAPI(title="kger", lifespan=lifespan, version=kger_version(), docs_url=None, redoc_url=None,
                  responses=errors(*COMMON),
                  description="Find ENT endoscopy images from a clinical description, and explain the choice. "
                              "MCP tools (retrieve, similar, ask, trace) are served at /mcp. Every error is "
                              "one line: `{\"error\": \"...\"}`.")
    mount_docs(app)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        bad_json = any(e.get("type") == "json_invalid" for e in exc.errors())
        return _error(400 if bad_json else 422, _one_line(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):  # an unparsable body, an unknown path or method
        response = _error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return _error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("request failed: %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/health", summary="Store, bundle and encoder of this server", response_model=Health)
    async def health() -> dict:
        return await service.retrieval(service.health)

    @app.post("/search", summary="Retrieval only: the ensemble's top-k images for a description",
              response_model=SearchResponse, responses=errors(400, 413, 422))
    async def search(req: SearchRequest) -> dict:
        return await service.retrieval(lambda: _thumbed(service.search_text(req.text, req.k, req.filters),
                                                        "results", req.thumbnails))

    @app.post("/search/image", summary="Retrieval only: images like an uploaded image (PNG, JPEG, ...)",
              response_model=ImageSearchResponse, responses=errors(400, 413, 415, 422))
    async def search_image(file: UploadFile = File(..., description="The image file."),
                           k: int = Form(10, ge=1, le=MAX_K), thumbnails: bool = Form(False)) -> dict:
        data = await file.read(MAX_UPLOAD + 1)
        name = file.filename or "upload"
        return await service.retrieval(lambda: _thumbed(service.search_image_bytes(data, k, name),
                                                        "results", thumbnails))

    @app.post("/similar", summary="Images like one already in the store (its id, a unique id prefix, or #N of a thread)",
              response_model=ImageSearchResponse, responses=errors(400, 404, 409, 413, 422))
    async def similar(req: SimilarRequest) -> dict:
        return await service.retrieval(lambda: _thumbed(service.similar(req.image, req.k, req.thread_id), "results",
                                                        req.thumbnails))

    @app.post("/ask", summary="The whole agent: plan, retrieve, judge, fuse; the answer with its run id",
              response_model=AskResponse, responses=errors(400, 413, 422, 503))
    async def ask(req: AskRequest) -> dict:
        return await service.judged(lambda: _thumbed(service.ask(req.text, req.k, req.thread_id, rounds=req.rounds),
                                                     "rows", req.thumbnails))

    @app.post("/ask/stream", summary="Like /ask, as server-sent events: node, progress, then answer (or error)",
              response_class=EventStream, responses={**STREAM_DOC, **errors(400, 413, 422)})
    async def ask_stream(req: AskRequest) -> EventStream:
        loop = asyncio.get_running_loop()
        events: "asyncio.Queue[Optional[str]]" = asyncio.Queue()

        def put(item: Optional[str]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        def work():
            try:
                answer = service.ask(req.text, req.k, req.thread_id, rounds=req.rounds,
                                     on_event=lambda kind, payload: put(_sse(kind, payload)))
                put(_sse("answer", _thumbed(answer, "rows", req.thumbnails)))
            except RequestError as e:
                put(_sse("error", {"error": str(e), "status": e.status}))
            except Exception as e:  # noqa: BLE001 - the stream has started: report, do not raise
                log.exception("ask stream failed")
                put(_sse("error", {"error": f"internal error ({type(e).__name__})", "status": 500}))
            finally:
                put(None)

        service.ask_pool.submit(work)

        async def stream():
            while (item := await events.get()) is not None:
                yield item

        return EventStream(stream(), headers={"Cache-Control": "no-cache"})

    @app.get("/runs", summary="Recent runs, newest first", response_model=list[RunSummary],
             responses=errors(404, 422))
    async def runs(limit: int = Query(20, ge=1, le=MAX_RUNS),
                   q: Optional[str] = Query(None, max_length=MAX_TEXT, description="Runs whose input holds this.")
                   ) -> list:
        return await service.retrieval(service.runs, limit, q)

    @app.get("/runs/{run_id}", summary="One run's full record: every node's input and output",
             response_model=RunRecord, responses=errors(404, 409, 422))
    async def run(run_id: str = RunId) -> dict:
        return await service.retrieval(service.run, run_id)

    @app.get("/runs/{run_id}/report", response_class=HTMLResponse, summary="One run as a self-contained HTML page",
             responses=errors(404, 409, 422))
    async def report(run_id: str = RunId) -> HTMLResponse:
        return HTMLResponse(await service.retrieval(service.report_html, run_id))

    _describe(app, bearer=token is not None)
    if mcp_server is not None:
        app.mount("/mcp", mcp_app)
    return Guard(app, policy, token, MAX_UPLOAD + BODY_SLACK)


def _describe(app: FastAPI, bearer: bool) -> None:
    """The generated description, plus the one error body every route refers to and, when the server checks
    a token, the bearer scheme (clients, and schemathesis, then know to send it)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = build()
            components = doc.setdefault("components", {})
            components.setdefault("schemas", {})["ErrorBody"] = ErrorBody.model_json_schema()
            if bearer:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                            "description": "$KGER_SERVE_TOKEN"}}
                doc["security"] = [{"bearer": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi


