"""What the HTTP API takes and sends, as its OpenAPI description says it (issue 20: schemathesis found the
description and the server apart). One place for the request models, the response models and, per route,
every status it can answer with the one body shape every error has, {"error": "..."}.

Request models are strict (a JSON "5" is not the integer 5, "yes" is not true) and say in the schema what
the server checks after it: a text must hold a character that is not white space (`NONBLANK`), so an input
the schema accepts is an input the server accepts.
"""
from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from agent.core.filters import Filters
from agent.core.limits import DEFAULT_ROUNDS, MAX_K, MAX_ROUNDS, MAX_TEXT
from agent.state import Answer, AnswerRow

# a character nobody counts as white space: Python's str.strip() (which also strips \x1c-\x1f and \x85) and
# JSON Schema's \s (which also counts \ufeff) agree that a text holding one is not blank
WHITESPACE = "\t\n\x0b\x0c\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# nor a control character a prompt drops (agent.prompts.is_blank): a text of "\x12" reaches no search (a
# schemathesis find: it was accepted here and then failed as a 503); written as regex escapes, which Rust's
# regex (pydantic) and ECMA-262 (JSON Schema) both read
CONTROLS = r"\x00-\x08\x0e-\x1b\x7f"
NONBLANK = f"[^{WHITESPACE}{CONTROLS}]"
MAX_ID = 200  # characters of a thread id or a run id
# what /similar takes (service.Service._resolve_image): an id or its 6+ hex prefix, or #N of a thread's answer
IMAGE_REF_PATTERN = r"^\s*(#[0-9]{1,6}|[0-9a-fA-F]{6,64})\s*$"


def _a_number(v: Any) -> Any:
    if isinstance(v, (str, bool)):  # JSON Schema's integer is a number: 5 and 5.0, never "5" or true
        raise ValueError("Input should be a valid integer")
    return v


# an integer as JSON Schema has it: 487.0 is one (a strict int would refuse it), 487.5 and "487" are not
Count = Annotated[int, Field(strict=False), BeforeValidator(_a_number)]


class ErrorBody(BaseModel):
    """Every 4xx and 5xx: one line, never a traceback."""

    error: str = Field(description="what was wrong, in one line")


class StrictFilters(Filters):
    model_config = ConfigDict(strict=True)


class SearchRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    text: str = Field(min_length=1, max_length=MAX_TEXT, pattern=NONBLANK, description="A clinical description.")
    k: Count = Field(10, ge=1, le=MAX_K, description="How many images to return.")
    filters: Optional[StrictFilters] = Field(None, description="Region, side, state: matching images first, "
                                                               "then uncertain, then contradicting; strict: "
                                                               "matching only.")
    thumbnails: bool = Field(False, description="Add each row's image as `thumbnail` (base64 JPEG, <= 256 px).")


class AskRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    text: str = Field(min_length=1, max_length=MAX_TEXT, pattern=NONBLANK,
                      description="A clinical description or a follow-up.")
    k: Count = Field(5, ge=1, le=MAX_K, description="How many images to return.")
    thread_id: Optional[str] = Field(None, min_length=1, max_length=MAX_ID, pattern=NONBLANK,
                                     description="Continue this conversation (the thread_id of an earlier answer).")
    rounds: Count = Field(DEFAULT_ROUNDS, ge=0, le=MAX_ROUNDS,
                        description="Extra search rounds the corrective loop may make when the evidence is weak "
                                    "(0: one pass). Each round is a `reflect` event in /ask/stream and in the trace.")
    thumbnails: bool = Field(False, description="Add each row's image as `thumbnail` (base64 JPEG, <= 256 px).")


class SimilarRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    # the pattern is stated in the schema only: the service checks it and says what to do instead (upload a file)
    image: str = Field(min_length=1, max_length=MAX_ID, json_schema_extra={"pattern": IMAGE_REF_PATTERN},
                       description="A stored image id (or a unique prefix of 6+ hex characters of one), or #N of a "
                                   "thread's last answer (give thread_id). Never a path on the server: upload a "
                                   "file to /search/image.")
    k: Count = Field(10, ge=1, le=MAX_K, description="How many images to return.")
    thread_id: Optional[str] = Field(None, min_length=1, max_length=MAX_ID, pattern=NONBLANK,
                                     description="The thread whose last answer #N ranks.")
    thumbnails: bool = Field(False, description="Add each row's image as `thumbnail` (base64 JPEG, <= 256 px).")


# ------------------------------------------------------------------------------------------------ responses
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ResultRow(_Open):
    """One retrieved image (retrieval.candidate.Candidate as `kger search --json` writes it)."""

    rank: int
    id: str = Field(description="content hash of the image file")
    path: str = Field(description="where the image file lives on the server")
    name: str
    score: float = Field(description="ensemble cosine similarity; compare within one query only")
    fold_scores: list[float] = Field(description="each ensemble member's cosine")
    label: Optional[str] = None
    predicted: Optional[str] = None
    predicted_prob: Optional[float] = None
    trusted: Optional[bool] = None
    familiarity: Optional[float] = None
    familiar: Optional[bool] = None
    class_probs: Optional[dict[str, float]] = None
    filter_match: Optional[bool] = Field(None, description="met the filters: true, unknown (null), false; "
                                                           "only when filters were given")
    thumbnail: Optional[str] = Field(None, description="base64 JPEG (<= 256 px) when asked with `thumbnails`; "
                                                       "null where the image cannot be read")


class SearchResponse(_Open):
    query: str
    store: str
    bundle: str
    results: list[ResultRow]
    filters: Optional[dict[str, Any]] = Field(None, description="the filters applied, when any were given")


class ImageSearchResponse(_Open):
    image: str = Field(description="the upload's file name, or the image asked about")
    store: str
    bundle: Optional[str] = None
    id: Optional[str] = Field(None, description="the reference image's id (/similar)")
    results: list[ResultRow]


class AskRow(AnswerRow):
    model_config = ConfigDict(extra="allow")

    thumbnail: Optional[str] = Field(None, description="base64 JPEG (<= 256 px) when asked with `thumbnails`")


class AskResponse(Answer):
    model_config = ConfigDict(extra="allow")

    rows: list[AskRow] = Field(default_factory=list)


class Health(_Open):
    status: str
    store: str
    images: int
    bundle: str
    folds: int
    encoder: str
    llm: str


class RunSummary(_Open):
    """One run as `kger trace list --json` shows it (answer, timings and models as JSON)."""

    id: str
    created: str
    kind: str
    status: str
    input: Optional[str] = None
    thread_id: Optional[str] = None
    error: Optional[str] = None


class RunEvent(_Open):
    seq: int
    node: Optional[str] = None
    kind: Optional[str] = None
    payload: Any = None
    created: str


class RunRecord(RunSummary):
    events: list[RunEvent]


ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def errors(*statuses: int) -> dict[int, dict]:
    """OpenAPI `responses` for these statuses, each with the one error body (JSON, also on the routes that
    answer HTML or events) and what causes it; http.py's `openapi` adds ErrorBody to the components."""
    return {s: {"description": ERROR_CAUSES[s], "content": ERROR_REF} for s in statuses}


# one server-sent event as schemathesis and the EventSource API see it: its name and its data (JSON text)
SSE_EVENT = {"type": "object", "required": ["event", "data"],
             "properties": {"event": {"type": "string", "enum": ["node", "progress", "reflect", "answer", "error"]},
                            "data": {"type": "string", "description": "JSON: a node's name and time, judging "
                                                                      "progress, a corrective-loop decision {round, "
                                                                      "decision, triggers, reason}, the /ask body, "
                                                                      "or {error, status}"}}}


ERROR_CAUSES = {
    400: "malformed JSON, or an empty upload",
    401: "missing or wrong token (send Authorization: Bearer $KGER_SERVE_TOKEN)",
    403: "a foreign Host (DNS rebinding protection) or a browser page of another origin",
    404: "no such image or run (or the server keeps no traces)",
    409: "an id prefix that matches several images or runs: give more of it",
    413: "request body over the upload limit (16 MiB)",
    415: "the upload is not an image kger can read",
    422: "a field out of bounds or of the wrong type; the one line names it",
    503: "the turn could not be answered (the store or a model failed); the line gives the run id",
}
COMMON = (401, 403)  # any route


def first_error_line(errs: list[dict]) -> str:
    """A pydantic error list as the one line a client gets (HTTP 400/422, an MCP tool error): the first
    error, with where it is; never the rejected value (a 5,000-character query is not echoed back)."""
    if not errs:
        return "invalid request"
    e = errs[0]
    if e.get("type") == "json_invalid":
        return f"malformed JSON: {e.get('ctx', {}).get('error', e.get('msg', ''))}"
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
    return " ".join((f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid request"))).split())
