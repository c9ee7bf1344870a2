"""kger as tools for other agents: an MCP server (the official `mcp` SDK) over stdio or streamable HTTP.

The descriptions are written for a model that has never seen kger: what each tool finds, what the scores
mean, which filters exist and when to prefer `ask` (judged, explained, traced) over `retrieve` (fast, raw).
"""
from __future__ import annotations

import functools
import json
import logging
from typing import Annotated, Any, Optional

from pydantic import Field, ValidationError

from agent.core.filters import Filters, Region, Side, State
from agent.core.limits import DEFAULT_ROUNDS, MAX_K, MAX_ROUNDS
from agent.core.version import kger_version
from agent.serve.schemas import first_error_line
from agent.serve.service import RequestError, Service
from agent.serve.thumbs import THUMB_MIME, add_thumbnails
from retrieval.errors import InputError

log = logging.getLogger("kger.serve")

INSTRUCTIONS = (
    "kger searches a library of ENT (ear, nose, throat, larynx) endoscopy images by clinical description. "
    "Use `ask` for an answer a clinician can check: it plans queries, retrieves candidates with a NanoCLIP "
    "fold ensemble, judges each image against the description and fuses both rankings, with a reason per "
    "image and a run id. Use `retrieve` for the raw retrieval ranking only (faster, no reasons), `similar` "
    "for images that look like a given one, and `trace` to audit how a run reached its answer. Pass "
    "`thumbnails: true` to see the images themselves (small JPEGs) when their paths are not on your machine."
)
Thumbnails = Annotated[bool, Field(description="Also return each row's image as a small JPEG (<= 256 px), "
                                               "for a client that cannot open the server's paths.")]


def _tool_error(fn):
    """A bad request (RequestError, InputError) becomes the SDK's ToolError: the client gets a result with
    isError and the same one line HTTP gives; anything else stays a crash (logged with its traceback)."""
    from mcp.server.mcpserver.exceptions import ToolError

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except (RequestError, InputError) as e:
            raise ToolError(" ".join(str(e).split())) from None

    return wrapper


def _rows(results: list[dict]) -> list[dict]:
    keep = ("rank", "id", "name", "path", "score", "fold_scores", "label", "predicted", "predicted_prob")
    return [{k: r.get(k) for k in keep + (("filter_match",) if "filter_match" in r else ())} for r in results]


async def _with_images(service: Service, doc: dict, key: str, thumbnails: bool):
    """`doc` as is, or (thumbnails) a result whose content is the JSON then, per row, a caption and the
    image (ImageContent), with `doc` as its structured content; a row whose image cannot be read says so."""
    if not thumbnails:
        return doc
    from mcp.types import CallToolResult, ImageContent, TextContent

    rows = [dict(r) for r in doc[key]]
    await service.retrieval(add_thumbnails, rows)
    content: list = [TextContent(type="text", text=json.dumps(doc, ensure_ascii=False, default=str))]
    for r in rows:
        caption = f"#{r.get('rank')} {r.get('name') or ''} (id {str(r.get('id'))[:12]})"
        if r["thumbnail"] is None:
            content.append(TextContent(type="text", text=f"{caption}: image unreadable on the server"))
        else:
            content += [TextContent(type="text", text=caption),
                        ImageContent(type="image", data=r["thumbnail"], mime_type=THUMB_MIME)]
    return CallToolResult(content=content, structured_content=doc)


def _server_class():
    """MCPServer whose argument-validation errors are one line too (the SDK sends pydantic's multi-line
    report, with the rejected value echoed), and whose every refused call is logged as one line."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError

    class KgerMCP(MCPServer):
        async def call_tool(self, name, arguments, context=None):
            try:
                return await super().call_tool(name, arguments, context)
            except UnexpectedToolError:
                raise
            except ToolError as exc:
                cause = exc.__cause__
                if isinstance(cause, ValidationError):
                    exc = ToolError(f"Error executing tool {name}: {first_error_line(cause.errors())}")
                    exc.__cause__ = cause
                log.warning("mcp tool %s refused: %s", name, str(exc).removeprefix(f"Error executing tool {name}: "))
                raise exc from cause

    return KgerMCP


def build_mcp(service: Service):
    server = _server_class()("kger", instructions=INSTRUCTIONS, version=kger_version(), log_level="WARNING")

    @server.tool()
    @_tool_error
    async def retrieve(
        query: Annotated[str, Field(description="A short clinical phrase, e.g. 'left tympanic membrane, "
                                                "central perforation' or 'vocal folds open'.")],
        k: Annotated[int, Field(ge=1, le=MAX_K, description="How many images to return.")] = 10,
        region: Annotated[Optional[Region], Field(description="Images of this region first.")] = None,
        side: Annotated[Optional[Side], Field(description="This side first (ear and nose images have a side).")] = None,
        state: Annotated[Optional[State], Field(description="Vocal folds open or closed first (larynx only).")] = None,
        strict: Annotated[bool, Field(description="Only images known to satisfy the filters (fewer than k, or "
                                                  "none, where the store does not know an image's class).")] = False,
        thumbnails: Thumbnails = False,
    ) -> dict[str, Any]:
        """Search the endoscopy image library with a clinical phrase; retrieval only (no judge, no reasons).

        Returns the top-k images, best first: id (content hash), file path, `score` (ensemble cosine
        similarity, higher is closer; compare scores within one query only), `fold_scores` (each ensemble
        member's cosine: agreement between them means a stable match), and the image's class: `label` when
        known, else `predicted` with its probability. Filters (region, side, state) put images whose
        class satisfies them first, then images whose class is uncertain, then those known not to (each row's
        `filter_match`: true, null, false); `strict` keeps only the first. For a judged, explained answer use `ask`."""
        filters = Filters(region=region, side=side, state=state, strict=strict)
        doc = await service.retrieval(service.search_text, query, k, filters)
        out = {"query": query, "filters": filters.model_dump(), "results": _rows(doc["results"])}
        return await _with_images(service, out, "results", thumbnails)

    @server.tool()
    @_tool_error
    async def similar(
        image: Annotated[str, Field(description="An image id from an earlier result (or a unique prefix of 6+ "
                                                "characters), or '#N' (rank N of an `ask` answer; give its "
                                                "thread_id). Never a file path.")],
        k: Annotated[int, Field(ge=1, le=MAX_K, description="How many images to return.")] = 10,
        thread_id: Annotated[Optional[str], Field(description="The thread_id of the `ask` answer '#N' ranks.")] = None,
        thumbnails: Thumbnails = False,
    ) -> dict[str, Any]:
        """Find images that look like one image (image-to-image retrieval), leaving out that image itself.

        Useful to follow up on a good result ("more like this one"). Same fields as `retrieve`."""
        doc = await service.retrieval(service.similar, image, k, thread_id)
        out = {"image": image, "id": doc["id"], "results": _rows(doc["results"])}
        return await _with_images(service, out, "results", thumbnails)

    @server.tool()
    @_tool_error
    async def ask(
        description: Annotated[str, Field(description="A clinical description in plain words, e.g. 'right "
                                                      "ear, dull retracted tympanic membrane'. Side, region "
                                                      "and open/closed named here are hard constraints.")],
        k: Annotated[int, Field(ge=1, le=MAX_K, description="How many images to return.")] = 5,
        thread_id: Annotated[Optional[str], Field(description="Pass the thread_id of an earlier answer to ask a "
                                                              "follow-up ('only the left side', 'more like #2').")] = None,
        thumbnails: Thumbnails = False,
        rounds: Annotated[int, Field(ge=0, le=MAX_ROUNDS, description="Extra search rounds when the evidence is "
                                                                      "weak (0: one pass); each is in the trace.")]
        = DEFAULT_ROUNDS,
    ) -> dict[str, Any]:
        """Answer a description with ranked images and a reason for each, as a clinician would check them.

        Runs kger's whole agent: plans focused queries and filters, retrieves candidates, judges every
        candidate against the description, and fuses the retrieval and judge rankings (Pos-Fuse). Images
        that contradict a named side/region/state are ranked last and say so. Each row has `retrieval`,
        `judge` and `fused` scores and a `justification`. Returns `run_id` (pass it to `trace` to audit the
        run) and `thread_id` (pass it back for follow-ups)."""
        answer = await service.judged(lambda: service.ask(description, k, thread_id, rounds=rounds))
        keep = ("rank", "id", "name", "path", "label", "predicted", "predicted_prob", "retrieval", "judge",
                "fused", "justification", "fallback", "demoted")
        out = {"question": answer.get("question", description), "run_id": answer.get("run_id"),
               "thread_id": answer.get("thread_id"),
               "rows": [{k_: r.get(k_) for k_ in keep} for r in answer.get("rows", [])]}
        return await _with_images(service, out, "rows", thumbnails)

    @server.tool()
    @_tool_error
    async def trace(
        run_id: Annotated[str, Field(description="A run id from `ask` (or a unique prefix of one).")],
    ) -> dict[str, Any]:
        """The full record of one run, for audit: the input, the planner's queries and filters, every
        candidate with its per-fold scores, every verdict with the judge's raw text, the fusion arithmetic,
        fallbacks and timings. Reading a trace never calls a model."""
        return await service.retrieval(service.run, run_id)

    return server

