"""kger as tools for other agents: an MCP server (the official `mcp` SDK) over stdio or streamable HTTP.

The descriptions are written for a model that has never seen kger: what each tool finds, what the scores
mean, which filters exist and when to prefer `ask` (judged, explained, traced) over `retrieve` (fast, raw).
"""
from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import Field

from agent.core.filters import Filters, Region, Side, State
from agent.core.limits import MAX_K
from agent.core.version import kger_version
from agent.serve.service import RequestError, Service

INSTRUCTIONS = (
    "kger searches a library of ENT (ear, nose, throat, larynx) endoscopy images by clinical description. "
    "Use `ask` for an answer a clinician can check: it plans queries, retrieves candidates with a NanoCLIP "
    "fold ensemble, judges each image against the description and fuses both rankings, with a reason per "
    "image and a run id. Use `retrieve` for the raw retrieval ranking only (faster, no reasons), `similar` "
    "for images that look like a given one, and `trace` to audit how a run reached its answer."
)


def _tool_error(fn):
    """A RequestError becomes the tool's one-line error text (the SDK marks the result is_error)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RequestError as e:
            raise ValueError(str(e)) from None

    return wrapper


def _rows(results: list[dict]) -> list[dict]:
    keep = ("rank", "id", "name", "path", "score", "fold_scores", "label", "predicted", "predicted_prob")
    return [{k: r.get(k) for k in keep + (("filter_match",) if "filter_match" in r else ())} for r in results]


def build_mcp(service: Service):
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("kger", instructions=INSTRUCTIONS, version=kger_version(), log_level="WARNING")

    @server.tool()
    @_tool_error
    def retrieve(
        query: Annotated[str, Field(description="A short clinical phrase, e.g. 'left tympanic membrane, "
                                                "central perforation' or 'vocal folds open'.")],
        k: Annotated[int, Field(ge=1, le=MAX_K, description="How many images to return.")] = 10,
        region: Annotated[Optional[Region], Field(description="Images of this region first.")] = None,
        side: Annotated[Optional[Side], Field(description="This side first (ear and nose images have a side).")] = None,
        state: Annotated[Optional[State], Field(description="Vocal folds open or closed first (larynx only).")] = None,
        strict: Annotated[bool, Field(description="Only images known to satisfy the filters (fewer than k, or "
                                                  "none, where the store does not know an image's class).")] = False,
    ) -> dict[str, Any]:
        """Search the endoscopy image library with a clinical phrase; retrieval only (no judge, no reasons).

        Returns the top-k images, best first: id (content hash), file path, `score` (ensemble cosine
        similarity, higher is closer; compare scores within one query only), `fold_scores` (each ensemble
        member's cosine: agreement between them means a stable match), and the image's class: `label` when
        known, else `predicted` with its probability. Filters (region, side, state) put images whose
        class satisfies them first, then images whose class is uncertain, then those known not to (each row's
        `filter_match`: true, null, false); `strict` keeps only the first. For a judged, explained answer use `ask`."""
        filters = Filters(region=region, side=side, state=state, strict=strict)
        doc = service.search_text(query, k, filters)
        return {"query": query, "filters": filters.model_dump(), "results": _rows(doc["results"])}

    @server.tool()
    @_tool_error
    def similar(
        image: Annotated[str, Field(description="An image id from an earlier result (or a unique prefix of 6+ "
                                                "characters), or '#N' (rank N of an `ask` answer; give its "
                                                "thread_id). Never a file path.")],
        k: Annotated[int, Field(ge=1, le=MAX_K, description="How many images to return.")] = 10,
        thread_id: Annotated[Optional[str], Field(description="The thread_id of the `ask` answer '#N' ranks.")] = None,
    ) -> dict[str, Any]:
        """Find images that look like one image (image-to-image retrieval), leaving out that image itself.

        Useful to follow up on a good result ("more like this one"). Same fields as `retrieve`."""
        doc = service.similar(image, k, thread_id)
        return {"image": image, "id": doc["id"], "results": _rows(doc["results"])}

    @server.tool()
    @_tool_error
    def ask(
        description: Annotated[str, Field(description="A clinical description in plain words, e.g. 'right "
                                                      "ear, dull retracted tympanic membrane'. Side, region "
                                                      "and open/closed named here are hard constraints.")],
        k: Annotated[int, Field(ge=1, le=MAX_K, description="How many images to return.")] = 5,
        thread_id: Annotated[Optional[str], Field(description="Pass the thread_id of an earlier answer to ask a "
                                                              "follow-up ('only the left side', 'more like #2').")] = None,
    ) -> dict[str, Any]:
        """Answer a description with ranked images and a reason for each, as a clinician would check them.

        Runs kger's whole agent: plans focused queries and filters, retrieves candidates, judges every
        candidate against the description, and fuses the retrieval and judge rankings (Pos-Fuse). Images
        that contradict a named side/region/state are ranked last and say so. Each row has `retrieval`,
        `judge` and `fused` scores and a `justification`. Returns `run_id` (pass it to `trace` to audit the
        run) and `thread_id` (pass it back for follow-ups)."""
        answer = service.ask(description, k, thread_id)
        keep = ("rank", "id", "name", "path", "label", "predicted", "predicted_prob", "retrieval", "judge",
                "fused", "justification", "fallback", "demoted")
        return {"question": answer.get("question", description), "run_id": answer.get("run_id"),
                "thread_id": answer.get("thread_id"),
                "rows": [{k_: r.get(k_) for k_ in keep} for r in answer.get("rows", [])]}

    @server.tool()
    @_tool_error
    def trace(
        run_id: Annotated[str, Field(description="A run id from `ask` (or a unique prefix of one).")],
    ) -> dict[str, Any]:
        """The full record of one run, for audit: the input, the planner's queries and filters, every
        candidate with its per-fold scores, every verdict with the judge's raw text, the fusion arithmetic,
        fallbacks and timings. Reading a trace never calls a model."""
        return service.run(run_id)

    return server

