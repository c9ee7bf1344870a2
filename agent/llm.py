"""Gemini chat models for the judge and the planner: settings, construction, and calls that retry sanely.

The client's own retry setting has been reported ignored (langchain-google issue 1452) and its backoff
ignores the server's retry hint, so the client makes exactly one attempt per call and `invoke_with_retries`
owns retries: exponential backoff with jitter, on HTTP 429 and 5xx only, at least as long as the server's
RetryInfo asks for. A token-bucket limiter (LangChain's own) keeps calls under a requests-per-minute quota.
The API key is a `SecretStr` end to end; no message built here contains it.
"""
from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import tenacity
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from retrieval.errors import InputError

if TYPE_CHECKING:
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_google_genai import ChatGoogleGenerativeAI

log = logging.getLogger(__name__)

DEFAULT_GEMINI_MODEL = "gemini-3.5-flash"  # multimodal, stable; model ids change often: KGER_GEMINI_MODEL
_RETRY_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


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

    api_key: Optional[SecretStr] = Field(default=None, description="GOOGLE_API_KEY")
    model: str = Field(default=DEFAULT_GEMINI_MODEL, description="KGER_GEMINI_MODEL")
    base_url: Optional[str] = Field(default=None, description="KGER_GEMINI_BASE_URL: a proxy or a local server")
    timeout: float = Field(default=60.0, gt=0, description="seconds per HTTP request (KGER_GEMINI_TIMEOUT)")
    max_retries: int = Field(default=3, ge=0, description="our retries after the first attempt, 429/5xx only")
    backoff_base: float = Field(default=1.0, ge=0, description="seconds before the first retry; doubles")
    backoff_max: float = Field(default=60.0, ge=0, description="cap on one wait, server hints included")
    requests_per_minute: Optional[float] = Field(default=60.0, gt=0, description="None: no client-side limit")


def gemini_settings_from_env(env: Optional[Mapping[str, str]] = None, **overrides: Any) -> GeminiSettings:
    """Settings from GOOGLE_API_KEY and KGER_GEMINI_* (MODEL, BASE_URL, TIMEOUT, MAX_RETRIES, RPM)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    key = (env.get("GOOGLE_API_KEY") or "").strip()
    if key:
        values["api_key"] = SecretStr(key)
    for var, name in (("KGER_GEMINI_MODEL", "model"), ("KGER_GEMINI_BASE_URL", "base_url")):
        if (env.get(var) or "").strip():
            values[name] = env[var].strip()
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


def make_gemini_chat(settings: GeminiSettings, **kw: Any) -> "ChatGoogleGenerativeAI":
    """The real LangChain client, pointed at `settings.base_url` when set; one HTTP attempt per call."""
    if settings.api_key is None or not settings.api_key.get_secret_value().strip():
        raise GeminiUnavailable("no GOOGLE_API_KEY")
    from langchain_core.rate_limiters import InMemoryRateLimiter
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
    if settings.requests_per_minute:
        limiter = InMemoryRateLimiter(requests_per_second=settings.requests_per_minute / 60.0,
                                      check_every_n_seconds=min(0.1, 30.0 / settings.requests_per_minute),
                                      max_bucket_size=1)
        limiter.available_tokens = 1.0  # the first call need not wait a whole interval
        params["rate_limiter"] = limiter
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


def failure_reason(exc: BaseException) -> str:
    """A short, secret-free reason; never the server's or the exception's own text."""
    if isinstance(exc, (GeminiUnavailable, GeminiCallError)):
        return str(exc)
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


def invoke_with_retries(chat: Any, messages: Sequence["BaseMessage"], settings: GeminiSettings,
                        **kw: Any) -> "AIMessage":
    """`chat.invoke(messages, **kw)` with our retry policy; raises `GeminiCallError` when it gives up."""
    attempts = 0

    def once() -> "AIMessage":
        nonlocal attempts
        attempts += 1
        return chat.invoke(list(messages), **kw)

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
    except Exception as exc:  # noqa: BLE001 - every failure becomes a short, safe reason
        reason = failure_reason(exc)
        if attempts > 1:
            reason = f"{reason} after {attempts} attempts"
        raise GeminiCallError(reason, attempts) from exc
