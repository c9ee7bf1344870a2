"""The warm process behind `kger serve`: one Assistant (encoder + store + graph) and the trace database.

Both doors (HTTP in http.py, MCP in mcp_tools.py) call these methods; the bounds on a request are
agent/core/limits.py's, the same as the CLI's and the tools'. A turn goes to the shared Assistant as its own
`TurnRequest` (k, pool, thread), never by changing the Assistant.

Two queues, so a retrieval-only request never waits behind a judged turn (issue 20: one shared queue took
/search from p50 18 ms to 640 ms under 50 users): judged turns run one at a time on their own thread
(`ask_pool`; the graph, the checkpointer and the trace writer then never see two turns at once), retrieval
runs on `search_pool`, side by side with a turn (the ONNX sessions and Chroma reads are safe across threads).
"""
from __future__ import annotations

import asyncio
import re
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from agent.core import limits
from agent.core.filters import Filters, filtered_search
from agent.core.limits import DEFAULT_ROUNDS, MAX_RUNS, MAX_TEXT, MAX_UPLOAD, LimitError, check_rounds
from agent.prompts import is_blank
from retrieval.candidate import TOOL_FIELDS

SEARCH_WORKERS = 4  # retrieval-only requests served at once (~20 ms each; more only queue on 2 cores)
ASK_WORKERS = 1  # judged turns at once: one (the graph and the trace writer see one turn at a time)


IMAGE_REF = "a stored image id (or a unique prefix of 6+ hex characters of one), or #N of a thread's last answer"
_IMAGE_ID = re.compile(r"[0-9a-fA-F]{6,64}")


class RequestError(ValueError):
    """A bad request: the message is the one line the client gets back (HTTP 4xx, MCP tool error)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def check_text(text: Any, what: str = "text", description: bool = False) -> str:
    """A non-empty string of at most MAX_TEXT characters; a `description` must also hold a readable
    character (schemas.NONBLANK): one of control characters only reaches no prompt and no search."""
    if not isinstance(text, str) or not text.strip() or (description and is_blank(text)):
        raise RequestError(f"{what} must be a non-empty string" + (" (not only white space or control "
                                                                   "characters)" if description else ""), 422)
    if len(text) > MAX_TEXT:
        raise RequestError(f"{what} is {len(text)} characters; at most {MAX_TEXT}", 422)
    return text


def check_k(k: Any) -> int:
    """agent.core.limits.check_k, as the client's 422."""
    try:
        return limits.check_k(k)
    except LimitError as e:
        raise RequestError(str(e), 422) from None


def _no_stop(fn: Callable, *args) -> Any:
    """`fn(*args)`, with a stray StopIteration as a RuntimeError: asyncio cannot set a StopIteration on a
    future, and the request would then hang forever instead of answering 500."""
    try:
        return fn(*args)
    except StopIteration as e:
        raise RuntimeError(f"StopIteration in {getattr(fn, '__name__', 'a request')}") from e


@dataclass
class Service:
    assistant: Any
    store: str = "default"
    lock: threading.Lock = field(default_factory=threading.Lock)  # held by a judged turn
    search_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(SEARCH_WORKERS, thread_name_prefix="kger-search"))
    ask_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(ASK_WORKERS, thread_name_prefix="kger-ask"))

    @classmethod
    def open(cls, store: str = "default", url: Optional[str] = None, llm: str = "offline") -> "Service":
        from agent.assistant import Assistant

        return cls(Assistant.open(store, url=url, llm=llm, k=10), store=store)

    async def retrieval(self, fn: Callable, *args) -> Any:
        """`fn(*args)` on the retrieval threads: never queued behind a judged turn."""
        return await asyncio.wrap_future(self.search_pool.submit(_no_stop, fn, *args))

    async def judged(self, fn: Callable, *args) -> Any:
        """`fn(*args)` on the turn thread: judged turns queue here, and only here."""
        return await asyncio.wrap_future(self.ask_pool.submit(_no_stop, fn, *args))

    @property
    def searcher(self):
        return self.assistant.searcher

    def health(self) -> dict:
        enc = self.searcher.encoder
        count = self.searcher.gallery.count()
        return {"status": "ok", "store": self.store, "images": count, "bundle": enc.fingerprint,
                "folds": enc.folds, "encoder": getattr(enc, "backend", "torch"), "llm": self.assistant.llm}

    # ----------------------------------------------------------------------------------------- retrieval
    def search_text(self, text: str, k: int = 10, filters: Optional[Filters] = None) -> dict:
        """Retrieval only; `filters` order (or, strict, limit) the results as the agent's tools do."""
        text, k = check_text(text, description=True), check_k(k)
        vec = self.searcher.encode_text(text)
        results = filtered_search(lambda n, classes: self.searcher.by_vector(vec, n, classes), k, text, filters)
        doc = {"query": text, "store": self.store, "bundle": self.searcher.encoder.fingerprint,
               "results": [r.model_dump(exclude=TOOL_FIELDS) for r in results]}
        if filters is not None and filters.classes() is not None:  # which results met the filter
            doc["filters"] = filters.model_dump()
            for row, r in zip(doc["results"], results):
                row["filter_match"] = r.filter_match
        return doc

    def search_image_bytes(self, data: bytes, k: int = 10, name: str = "upload") -> dict:
        """An uploaded image: its stored vector when it is in the store (same bytes), else encoded now."""
        from retrieval.preprocess import ImageLoadError

        k = check_k(k)
        if not data:
            raise RequestError("the upload is empty")
        if len(data) > MAX_UPLOAD:
            raise RequestError(f"the upload is {len(data):,} bytes; at most {MAX_UPLOAD:,}", 413)
        with tempfile.TemporaryDirectory(prefix="kger-upload-") as tmp:
            path = Path(tmp) / "image"
            path.write_bytes(data)
            try:
                results = self.searcher.image(path, k=k)
            except ImageLoadError as e:
                raise RequestError(f"{name}: {e.reason}", 415) from None
        return {"image": name, "store": self.store, "bundle": self.searcher.encoder.fingerprint,
                "results": [r.model_dump(exclude=TOOL_FIELDS) for r in results]}

    def similar(self, image: str, k: int = 10, thread_id: Optional[str] = None) -> dict:
        """Images like one already in the store: `image` is an id, a unique id prefix, or #N of `thread_id`'s
        last answer. Never a path: a remote caller must not make the server open (or reveal) its files, so
        anything else is the same 422 whether or not such a file exists. The CLI reads local files itself;
        an image from elsewhere is an upload (POST /search/image)."""
        image, k = check_text(image, "image").strip(), check_k(k)
        from retrieval.errors import InputError

        ref = self._resolve_image(image, thread_id)
        try:
            results = self.searcher.similar(ref, k=k, files=False)
        except InputError as e:  # a 64-character id that is not in the store
            raise RequestError(str(e), 404) from None
        return {"image": image, "id": ref, "store": self.store,
                "results": [r.model_dump(exclude=TOOL_FIELDS) for r in results]}

    def _resolve_image(self, image: str, thread_id: Optional[str]) -> str:
        rank = re.fullmatch(r"#(\d{1,6})", image)
        if rank:
            return self._thread_row(int(rank.group(1)), thread_id)
        if not _IMAGE_ID.fullmatch(image):
            raise RequestError(f"image must be {IMAGE_REF}; to search by an image file, upload it to "
                               "POST /search/image", 422)
        prefix = image.lower()
        hits = [i for i, _ in self.searcher.gallery.all_metadata() if i.startswith(prefix)]
        if not hits:
            raise RequestError(f"no image id starts with {prefix!r} in store '{self.store}'", 404)
        if len(hits) > 1:
            raise RequestError(f"image id prefix {prefix!r} is ambiguous: it matches {len(hits)} images in store "
                               f"'{self.store}'; give more of it", 409)
        return hits[0]

    def _thread_row(self, n: int, thread_id: Optional[str]) -> str:
        if not thread_id:
            raise RequestError(f"there is no image #{n} without the thread_id of the answer it ranks", 404)
        state = self.assistant.graph.get_state({"configurable": {"thread_id": check_text(thread_id, "thread_id")}})
        answer = (state.values or {}).get("answer")
        rows = answer.rows if answer is not None else []
        if not 1 <= n <= len(rows):
            raise RequestError(f"there is no image #{n} in the last answer of thread {thread_id!r}", 404)
        return rows[n - 1].id

    # ----------------------------------------------------------------------------------------- the agent
    def ask(self, text: str, k: int = 5, thread_id: Optional[str] = None,
            on_event: Optional[Callable[[str, dict], None]] = None, rounds: int = DEFAULT_ROUNDS) -> dict:
        text, k, rounds = check_text(text, description=True), check_k(k), check_rounds(rounds)
        if thread_id is not None:
            check_text(thread_id, "thread_id")
        # a server's answers can be followed up (the thread id comes back), so each keeps its thread
        # local_files=False: a remote caller's text must not open server files
        turn = self.assistant.turn(k=k, pool=None, thread=thread_id or uuid.uuid4().hex, kind="ask",
                                   rounds=rounds, local_files=False)
        with self.lock:
            answer = self.assistant.ask(text, turn, on_event=on_event)
        if answer.status == "error":  # the store or a model failed: an error, not an empty answer
            raise RequestError(f"no answer ({answer.error}); run {answer.run_id}", 503)
        return answer.model_dump()

    # ----------------------------------------------------------------------------------------- traces
    def runs(self, limit: int = 20, text: Optional[str] = None) -> list[dict]:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RUNS:
            raise RequestError(f"limit must be an integer from 1 to {MAX_RUNS}", 422)
        return self._traces().list_runs(limit=limit, text=text)

    def run(self, run_id: str) -> dict:
        from store.traces import AmbiguousRunError, UnknownRunError

        try:
            return self._traces().get_run(check_text(run_id, "run id"))
        except AmbiguousRunError as e:  # a valid prefix that names several runs: a conflict, not a bad field
            raise RequestError(str(e), 409) from None
        except UnknownRunError as e:
            raise RequestError(str(e), 404) from None

    def report_html(self, run_id: str) -> str:
        from agent.core.report import render_run

        return render_run(self.run(run_id))

    def _traces(self):
        if self.assistant.traces is None:
            raise RequestError("this server keeps no traces", 404)
        return self.assistant.traces
