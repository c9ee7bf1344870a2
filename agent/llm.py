"""Gemini chat models for the judge and the planner: settings, construction, and calls that retry sanely.

The client's own retry setting has been reported ignored (langchain-google issue 1452) and its backoff
ignores the server's retry hint, so the client makes exactly one attempt per call and `invoke_with_retries`
owns retries: exponential backoff with jitter, on HTTP 429 and 5xx only, at least as long as the server's
RetryInfo asks for. A `GeminiSession` is what the planner and the judge of one run or batch share: one
token-bucket limiter (LangChain's own), so together they keep under the requests-per-minute quota, and one
`GeminiCircuit`, so an error no retry can fix (a bad key, no permission, an unknown model, a rejected request)
costs one request, not one per candidate and query. The API key is a `SecretStr` end to end; no message built
here contains it.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, TypeVar

import tenacity
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from retrieval.errors import InputError

if TYPE_CHECKING:
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.rate_limiters import InMemoryRateLimiter
    from langchain_google_genai import ChatGoogleGenerativeAI

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_GEMINI_MODEL = "gemini-3.5-flash"  # multimodal, stable; model ids change often: KGER_GEMINI_MODEL
_RETRY_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
# Where the key is read, first set wins: the order google-genai and langchain-google-genai use themselves,
# so kger and a bare client agree on which key a machine with both set is using.
KEY_VARS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
NO_KEY = "no GOOGLE_API_KEY or GEMINI_API_KEY"
THINKING_LEVELS = ("minimal", "low", "medium", "high")  # ChatGoogleGenerativeAI's thinking_level values


class GeminiUnavailable(RuntimeError):
    """Gemini cannot be used in this setting (no API key); callers fall back to the offline path."""


class GeminiCallError(RuntimeError):
    """A call failed for good; `reason` is short, safe to show and store (no key, no server text)."""

    def __init__(self, reason: str, attempts: int):
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


class GeminiSettings(BaseModel):
    """How to reach Gemini. `repr` and `model_dump` never reveal the key (SecretStr)."""

    model_config = ConfigDict(frozen=True)

    api_key: Optional[SecretStr] = Field(default=None, description="GOOGLE_API_KEY, else GEMINI_API_KEY")
    model: str = Field(default=DEFAULT_GEMINI_MODEL, description="KGER_GEMINI_MODEL")
    base_url: Optional[str] = Field(default=None, description="KGER_GEMINI_BASE_URL: a proxy or a local server")
    timeout: float = Field(default=60.0, gt=0, description="seconds per HTTP request (KGER_GEMINI_TIMEOUT)")
    max_retries: int = Field(default=3, ge=0, description="our retries after the first attempt, 429/5xx only")
    backoff_base: float = Field(default=1.0, ge=0, description="seconds before the first retry; doubles")
    backoff_max: float = Field(default=60.0, ge=0, description="cap on one wait, server hints included")
    requests_per_minute: Optional[float] = Field(default=60.0, gt=0, description="None: no client-side limit")
    thinking: Optional[str] = Field(default="low", description="KGER_GEMINI_THINKING: minimal|low|medium|high, "
                                    "or None (none) for the model's own default; low, because a question costs "
                                    "a judge call per candidate (20)")

    @field_validator("thinking", mode="before")
    @classmethod
    def _thinking(cls, v: Any) -> Optional[str]:
        v = None if v is None else str(v).strip().lower()
        if v in (None, "", "none", "default"):
            return None
        if v not in THINKING_LEVELS:
            raise ValueError(f"thinking must be one of {', '.join(THINKING_LEVELS)} or none, not {v!r}")
        return v


def api_key_from_env(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The Gemini key: GOOGLE_API_KEY if set, else GEMINI_API_KEY (see KEY_VARS for why that order)."""
    env = os.environ if env is None else env
    return next((v for v in ((env.get(var) or "").strip() for var in KEY_VARS) if v), None)


def gemini_settings_from_env(env: Optional[Mapping[str, str]] = None, **overrides: Any) -> GeminiSettings:
    """Settings from the key (api_key_from_env) and KGER_GEMINI_* (MODEL, BASE_URL, TIMEOUT, MAX_RETRIES, RPM,
    THINKING)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    key = api_key_from_env(env)
    if key:
        values["api_key"] = SecretStr(key)
    for var, name in (("KGER_GEMINI_MODEL", "model"), ("KGER_GEMINI_BASE_URL", "base_url")):
        if (env.get(var) or "").strip():
            values[name] = env[var].strip()
    thinking = (env.get("KGER_GEMINI_THINKING") or "").strip().lower()
    if thinking:
        if thinking not in (*THINKING_LEVELS, "none"):
            raise InputError(f"KGER_GEMINI_THINKING must be one of {', '.join(THINKING_LEVELS)} or none, "
                             f"got {thinking!r}")
        values["thinking"] = thinking
    for var, name, kind in (("KGER_GEMINI_TIMEOUT", "timeout", float),
                            ("KGER_GEMINI_MAX_RETRIES", "max_retries", int),
                            ("KGER_GEMINI_RPM", "requests_per_minute", float)):
        raw = (env.get(var) or "").strip()
        if raw:
            try:
                values[name] = kind(raw)
            except ValueError:
                raise InputError(f"{var} must be a number, got {raw!r}") from None
    values.update(overrides)
    return GeminiSettings(**values)


def make_rate_limiter(settings: GeminiSettings) -> Optional["InMemoryRateLimiter"]:
    """A token bucket for `settings.requests_per_minute` (None: no limit); share it to share the quota."""
    if not settings.requests_per_minute:
        return None
    from langchain_core.rate_limiters import InMemoryRateLimiter

    limiter = InMemoryRateLimiter(requests_per_second=settings.requests_per_minute / 60.0,
                                  check_every_n_seconds=min(0.1, 30.0 / settings.requests_per_minute),
                                  max_bucket_size=1)
    limiter.available_tokens = 1.0  # the first call need not wait a whole interval
    return limiter


def make_gemini_chat(settings: GeminiSettings, **kw: Any) -> "ChatGoogleGenerativeAI":
    """The real LangChain client, pointed at `settings.base_url` when set; one HTTP attempt per call. Pass
    `rate_limiter=` to share one (GeminiSession does); without it the client gets its own."""
    if settings.api_key is None or not settings.api_key.get_secret_value().strip():
        raise GeminiUnavailable(NO_KEY)
    from langchain_google_genai import ChatGoogleGenerativeAI

    params: dict[str, Any] = {
        "model": settings.model,
        "api_key": settings.api_key,
        "timeout": settings.timeout,
        "max_retries": 1,  # 1 = a single attempt in google-genai (0 means "its default": 5)
        "vertexai": False,  # the Developer API, whatever GOOGLE_GENAI_USE_VERTEXAI says
    }
    if settings.base_url:
        params["base_url"] = settings.base_url
    if settings.thinking:
        params["thinking_level"] = settings.thinking  # 4.x: thinking_level (thinking_budget is for Gemini 2.5)
    if "rate_limiter" not in kw:
        kw["rate_limiter"] = make_rate_limiter(settings)
    params.update(kw)
    return ChatGoogleGenerativeAI(**params)


def _causes(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def http_status(exc: BaseException) -> Optional[int]:
    """The HTTP status behind a (possibly wrapped) google-genai API error, if any."""
    from google.genai import errors

    for e in _causes(exc):
        if isinstance(e, errors.APIError) and isinstance(e.code, int):
            return e.code
    return None


def is_retryable(exc: BaseException) -> bool:
    """Worth another try: rate limited (429) or a server error (5xx). Timeouts and 4xx are not."""
    status = http_status(exc)
    return status is not None and (status == 429 or 500 <= status < 600)


def _is_timeout(exc: BaseException) -> bool:
    import httpx

    return any(isinstance(e, (TimeoutError, httpx.TimeoutException)) or type(e).__name__.endswith("Timeout")
               for e in _causes(exc))


def fatal_reason(exc: BaseException) -> Optional[str]:
    """Why no call can succeed in this setting (a bad key, no permission, an unknown model or endpoint, a
    rejected request), or None for failures that may pass (429, 5xx, timeouts, network, bad answers).

    langchain-core's typed errors decide where the client raised them (langchain-google-genai 4.x maps
    400/401/403/404 to them); the google-genai status code where it did not. A context overflow is a 400 too,
    but only that request's fault, and not fatal."""
    from langchain_core import exceptions as lc

    typed = ((lc.ModelAuthenticationError, "API key rejected (HTTP 401)"),
             (lc.ModelPermissionDeniedError, "permission denied (HTTP 403)"),
             (lc.ModelNotFoundError, "model or endpoint not found (HTTP 404)"),
             (lc.ModelInvalidRequestError, "request rejected (HTTP 400)"))
    for e in _causes(exc):
        for kind, reason in typed:
            if isinstance(e, kind):
                return reason
        if isinstance(e, lc.ModelError):
            return None
    status = http_status(exc)
    return {401: typed[0][1], 403: typed[1][1], 404: typed[2][1], 400: typed[3][1]}.get(status or 0)


def failure_reason(exc: BaseException) -> str:
    """A short, secret-free reason; never the server's or the exception's own text."""
    if isinstance(exc, (GeminiUnavailable, GeminiCallError)):
        return str(exc)
    fatal = fatal_reason(exc)
    if fatal:
        return fatal
    status = http_status(exc)
    if status == 429:
        return "rate limited (HTTP 429)"
    if status is not None and status >= 500:
        return f"server error (HTTP {status})"
    if status is not None:
        return f"request rejected (HTTP {status})"
    if _is_timeout(exc):
        return "timed out"
    import httpx

    if any(isinstance(e, (httpx.TransportError, ConnectionError)) for e in _causes(exc)):
        return f"network error ({type(exc).__name__})"
    return f"unexpected error ({type(exc).__name__})"


def server_retry_delay(exc: BaseException) -> Optional[float]:
    """Seconds the server asked us to wait (google.rpc.RetryInfo `retryDelay: "30s"`), if it said."""
    from google.genai import errors

    for e in _causes(exc):
        if not isinstance(e, errors.APIError) or not isinstance(e.details, dict):
            continue
        error = e.details.get("error", e.details)
        for detail in error.get("details", []) if isinstance(error, dict) else []:
            if isinstance(detail, dict) and "RetryInfo" in str(detail.get("@type", "")):
                match = _RETRY_DELAY.match(str(detail.get("retryDelay", "")))
                if match:
                    return float(match.group(1))
    return None


class _Backoff:
    """Exponential backoff with jitter, stretched to the server's retry hint, capped at `cap`."""

    def __init__(self, base: float, cap: float):
        self._exp = tenacity.wait_exponential_jitter(initial=base, max=cap, jitter=base)
        self._cap = cap

    def __call__(self, state: tenacity.RetryCallState) -> float:
        wait = self._exp(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        hint = server_retry_delay(exc) if exc is not None else None
        return min(self._cap, max(wait, hint or 0.0))


class GeminiCircuit:
    """Whether Gemini may still be called in this run or batch; shared by its planner and judge.

    The first error no retry can fix (`fatal_reason`) opens it: every later call fails at once with that
    reason, sending nothing, and the offline planner and judge stand in. Until a first call of a kind (the
    planner's, the judge's: different payloads, so one succeeding proves little for the other) has
    succeeded, calls of that kind go one at a time (the judge's worker threads wait their turn), so a bad key
    or a rejected request costs one request rather than one per worker; after that they run concurrently.
    """

    OFF = "Gemini off for this run: "

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self._proven: set[str] = set()
        self._probe = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self.reason is not None

    def check(self) -> None:
        if self.reason is not None:
            raise GeminiCallError(self.reason, 0)

    def call(self, fn: Callable[[], T], kind: str = "call") -> T:
        """`fn()` unless the circuit is open; opens it when `fn` fails fatally."""
        if kind not in self._proven:
            with self._probe:
                if kind not in self._proven:
                    result = self._guarded(fn)
                    self._proven.add(kind)
                    return result
        return self._guarded(fn)

    def _guarded(self, fn: Callable[[], T]) -> T:
        self.check()
        try:
            return fn()
        except Exception as e:
            fatal = fatal_reason(e)
            if fatal and self.reason is None:
                self.reason = self.OFF + fatal
                log.warning("gemini: %s; no further Gemini calls in this run (the offline planner and judge "
                            "stand in)", fatal)
            if fatal:
                raise GeminiCallError(self.reason or fatal, 1) from e
            raise


class GeminiSession:
    """What the planner and the judge of one run or batch share: the settings, one rate limiter (so together
    they stay under KGER_GEMINI_RPM, not twice it) and one circuit."""

    def __init__(self, settings: Optional[GeminiSettings] = None):
        self.settings = settings if settings is not None else gemini_settings_from_env()
        self.limiter = make_rate_limiter(self.settings)
        self.circuit = GeminiCircuit()
        self.usage = Usage()

    def chat(self, **kw: Any) -> "ChatGoogleGenerativeAI":
        return make_gemini_chat(self.settings, rate_limiter=self.limiter, **kw)

    def invoke(self, chat: Any, messages: Sequence["BaseMessage"], kind: str = "call", **kw: Any) -> "AIMessage":
        """One call with kger's retries, through the circuit; `kind` ('planner', 'judge') names the payload."""
        return invoke_with_retries(chat, messages, self.settings, circuit=self.circuit, kind=kind, usage=self.usage,
                                   **kw)


IMAGE_TOKENS = 258  # what the Gemini API counts for an image of <= 384 px a side (larger ones are tiled)


def input_tokens(messages: Sequence["BaseMessage"]) -> int:
    """A request's input tokens as the API counts them, estimated: text characters / 4, 258 per image."""
    chars, images = 0, 0
    for m in messages:
        parts = m.content if isinstance(m.content, list) else [m.content]
        for p in parts:
            if isinstance(p, str):
                chars += len(p)
            elif isinstance(p, dict) and p.get("type") == "text":
                chars += len(str(p.get("text", "")))
            elif isinstance(p, dict):
                images += 1
    return chars // 4 + IMAGE_TOKENS * images


class Usage:
    """Gemini requests (every attempt, retries included) and their estimated input tokens, for a session;
    a turn reports its share as the difference of two `snapshot`s (agent/assistant.py)."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.requests = 0
        self.input_tokens = 0

    def add(self, tokens: int) -> None:
        with self._lock:
            self.requests += 1
            self.input_tokens += tokens

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.requests, self.input_tokens


def invoke_with_retries(chat: Any, messages: Sequence["BaseMessage"], settings: GeminiSettings,
                        circuit: Optional[GeminiCircuit] = None, kind: str = "call", usage: Optional[Usage] = None,
                        **kw: Any) -> "AIMessage":
    """`chat.invoke(messages, **kw)` with our retry policy, through `circuit` when given; raises
    `GeminiCallError` when it gives up."""
    attempts = 0

    def once() -> "AIMessage":
        nonlocal attempts
        attempts += 1

        def send() -> "AIMessage":
            if usage is not None:  # counted as sent: a request the open circuit refuses costs nothing
                usage.add(input_tokens(messages))
            return chat.invoke(list(messages), **kw)

        return send() if circuit is None else circuit.call(send, kind)

    def note_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.info("gemini call failed (%s), retry %d of %d in %.2f s", failure_reason(exc) if exc else "?",
                 state.attempt_number, settings.max_retries, state.upcoming_sleep)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(settings.max_retries + 1),
        wait=_Backoff(settings.backoff_base, settings.backoff_max),
        retry=tenacity.retry_if_exception(is_retryable),
        before_sleep=note_retry,
        reraise=True,
    )
    try:
        return retrying(once)
    except GeminiCallError:
        raise  # the circuit's own: already short and safe
    except Exception as exc:  # noqa: BLE001 - every failure becomes a short, safe reason
        reason = failure_reason(exc)
        if attempts > 1:
            reason = f"{reason} after {attempts} attempts"
        raise GeminiCallError(reason, attempts) from exc
