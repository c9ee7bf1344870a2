"""The Gemini judge: the stored re-rank prompt plus the candidate image, one strict-JSON verdict per image.

Every answer is validated (Pydantic, score clamped to [0, 1]) before it counts. Anything else (no key,
network error, 429 or 5xx after our retries, timeout, refusal, malformed or empty answer, unreadable image)
gives the offline verdict for that candidate, with `fallback` saying why: `judge()` never raises. An error no
retry can fix (bad key, no permission, unknown model, rejected request) opens the session's circuit
(agent/llm.py): the judge then asks nothing more in that run and says why in every verdict. Good
answers are cached by (model, prompt hash, image hash, query), so asking the same question again costs no call
(and is answered even without a key: the cache is read before the client is built).
"""
from __future__ import annotations

import base64
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence, Union

from pydantic import BaseModel, Field, ValidationError, field_validator

from agent.judges.base import Candidate, Verdict
from agent.llm import (GeminiCallError, GeminiSession, GeminiSettings, GeminiUnavailable, failure_reason,
                       gemini_settings_from_env)
from agent.prompts import Prompt, escape_user_text, load_prompt

if TYPE_CHECKING:
    from store.cache import JudgeCache

log = logging.getLogger(__name__)

Fallback = Callable[[str, Candidate, Sequence[Candidate], str], Verdict]

PROMPT_NAME = "rerank"
IMAGE_MAX_SIDE = 512
JPEG_QUALITY = 85
IMAGE_PREP = f"circle-crop/jpeg-{IMAGE_MAX_SIDE}px-q{JPEG_QUALITY}"  # part of the cache key: what the model saw
REGIONS = ("ear", "nose", "throat", "larynx", "unclear")
JUSTIFICATION_MAX_CHARS = 600
# Finish reasons that mean "this text is the whole answer"; anything else (SAFETY, RECITATION, ...) is a refusal.
_FINISHED = {"STOP", "MAX_TOKENS", "FINISH_REASON_UNSPECIFIED"}
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


class AnswerError(ValueError):
    """The model answered, but not with a usable verdict."""


class GeminiAnswer(BaseModel):
    """The strict JSON the re-rank prompt asks for."""

    score: float
    justification: str = Field(min_length=1)
    region_seen: Literal["ear", "nose", "throat", "larynx", "unclear"] = "unclear"

    @field_validator("score", mode="before")
    @classmethod
    def _clamp(cls, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ValueError("score must be a number")
        x = float(v)
        if x != x or x in (float("inf"), float("-inf")):
            raise ValueError("score must be finite")
        return min(1.0, max(0.0, x))

    @field_validator("justification", mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = " ".join(v.split())
            return v if len(v) <= JUSTIFICATION_MAX_CHARS else v[:JUSTIFICATION_MAX_CHARS - 3] + "..."
        return v

    @field_validator("region_seen", mode="before")
    @classmethod
    def _region(cls, v: Any) -> str:
        v = str(v or "").strip().lower()
        return v if v in REGIONS else "unclear"


RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "minimum": 0.0, "maximum": 1.0},
        "justification": {"type": "string"},
        "region_seen": {"type": "string", "enum": list(REGIONS)},
    },
    "required": ["score", "justification", "region_seen"],
}


def parse_answer(text: str, finish_reason: Optional[str] = None) -> GeminiAnswer:
    """The verdict in a model's answer text (bare JSON or inside ``` fences), or `AnswerError`."""
    if finish_reason and finish_reason.upper() not in _FINISHED:
        raise AnswerError(f"refused (finish_reason={finish_reason})")
    if not text or not text.strip():
        raise AnswerError("empty answer")
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start = body.find("{")
    if start < 0:
        raise AnswerError("malformed answer (no JSON object)")
    try:
        obj, _ = json.JSONDecoder().raw_decode(body[start:])
    except json.JSONDecodeError:
        raise AnswerError("malformed answer (invalid JSON)") from None
    try:
        return GeminiAnswer.model_validate(obj)
    except ValidationError as e:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "answer" for err in e.errors()})
        raise AnswerError(f"malformed answer (bad {', '.join(fields)})") from None


def _answer_text(message: Any) -> str:
    """The answer's text parts joined (thought parts and signatures left out)."""
    return str(getattr(message, "text", "") or "")


def _default_fallback(query: str, candidate: Candidate, candidates: Sequence[Candidate], reason: str) -> Verdict:
    from agent.judges.offline import offline_verdict

    return offline_verdict(query, candidate, candidates, reason)


class _Outcome:
    __slots__ = ("answer", "raw", "reason", "latency_ms")

    def __init__(self, answer: Optional[GeminiAnswer] = None, raw: Optional[str] = None,
                 reason: Optional[str] = None, latency_ms: float = 0.0):
        self.answer, self.raw, self.reason, self.latency_ms = answer, raw, reason, latency_ms


class GeminiJudge:
    """Scores candidates with Gemini; see the module docstring for the failure policy."""

    name = "gemini"

    def __init__(self, settings: Optional[GeminiSettings] = None, *, fallback: Optional[Fallback] = None,
                 cache: Union["JudgeCache", bool, None] = True, max_concurrency: int = 4,
                 prompt: Union[Prompt, str] = PROMPT_NAME, chat_kwargs: Optional[dict[str, Any]] = None,
                 session: Optional[GeminiSession] = None):
        """`settings` default to the environment (read on first use), or to `session`'s: a session shared
        with the planner shares its rate limiter and circuit. `cache=True` opens the one under KGER_HOME,
        a `JudgeCache` is used as is, False/None disables caching."""
        self._session = session
        self._settings = session.settings if session is not None and settings is None else settings
        self._fallback = fallback or _default_fallback
        self._cache_arg = cache
        self._cache: Optional["JudgeCache"] = None
        self.max_concurrency = max(1, int(max_concurrency))
        self.prompt = load_prompt(prompt) if isinstance(prompt, str) else prompt
        self._chat_kwargs = dict(chat_kwargs or {})
        self._chat: Any = None

    # ---------------------------------------------------------------------------------------- set-up

    @property
    def settings(self) -> GeminiSettings:
        if self._settings is None:
            self._settings = gemini_settings_from_env()
        return self._settings

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def session(self) -> GeminiSession:
        if self._session is None:
            self._session = GeminiSession(self.settings)
        return self._session

    def _get_chat(self) -> Any:
        if self._chat is None:
            self._chat = self.session.chat(**self._chat_kwargs)
        return self._chat

    def _get_cache(self) -> Optional["JudgeCache"]:
        if self._cache is None and self._cache_arg:
            if self._cache_arg is True:
                from store.cache import JudgeCache
                from store.paths import cache_db_path

                self._cache = JudgeCache(cache_db_path())
            else:
                self._cache = self._cache_arg
        return self._cache

    # ---------------------------------------------------------------------------------------- judging

    def judge(self, query: str, candidates: Sequence[Candidate],
              on_progress: Optional[Callable[[int], None]] = None) -> list[Verdict]:
        candidates = list(candidates)
        if not candidates:
            return []
        try:
            settings = self.settings
        except Exception as e:  # noqa: BLE001 - a bad KGER_GEMINI_* value must not crash a question
            log.warning("gemini settings unusable: %s", e)
            return [self._fall_back(query, c, candidates, "Gemini settings invalid") for c in candidates]

        verdicts: list[Optional[Verdict]] = [None] * len(candidates)
        keys: list[Optional[str]] = [None] * len(candidates)
        cache = self._safe_cache()
        for i, c in enumerate(candidates):
            if cache is None:
                break
            keys[i], verdicts[i] = self._lookup(cache, settings, query, c)

        todo = [i for i, v in enumerate(verdicts) if v is None]
        if todo:
            try:
                self.session.circuit.check()
                chat = self._get_chat()
            except (GeminiUnavailable, GeminiCallError) as e:
                reason = str(e)
                chat = None
            except Exception as e:  # noqa: BLE001
                reason = f"Gemini client setup failed ({type(e).__name__})"
                chat = None
            if chat is None:
                log.warning("gemini judge unavailable (%s): offline verdicts for %d candidates", reason, len(todo))
                for i in todo:
                    verdicts[i] = self._fall_back(query, candidates[i], candidates, reason)
            else:
                self._ask_all(chat, settings, query, candidates, todo, verdicts, keys, cache, on_progress)
        return [v for v in verdicts if v is not None]

    def _ask_all(self, chat: Any, settings: GeminiSettings, query: str, candidates: list[Candidate],
                 todo: list[int], verdicts: list[Optional[Verdict]], keys: list[Optional[str]],
                 cache: Optional["JudgeCache"], on_progress: Optional[Callable[[int], None]] = None) -> None:
        text = self.prompt.format(description=escape_user_text(query))
        outcomes = []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(todo)),
                                thread_name_prefix="gemini-judge") as pool:
            for outcome in pool.map(lambda i: self._ask_one(chat, settings, text, candidates[i]), todo):
                outcomes.append(outcome)  # in order, on this thread: safe to report from here
                if on_progress is not None:
                    on_progress(len(candidates) - len(todo) + len(outcomes))
        failed = []
        for i, outcome in zip(todo, outcomes):
            c = candidates[i]
            if outcome.answer is None:
                failed.append(outcome.reason)
                v = self._fall_back(query, c, candidates, outcome.reason or "unknown failure")
                verdicts[i] = v.model_copy(update={"raw": outcome.raw if outcome.raw is not None else v.raw,
                                                   "latency_ms": v.latency_ms + outcome.latency_ms})
                continue
            a = outcome.answer
            verdicts[i] = Verdict(id=c.id, score=a.score, justification=a.justification, region_seen=a.region_seen,
                                  judge="gemini", model=settings.model, prompt_hash=self.prompt.sha256,
                                  raw=outcome.raw, cached=False, latency_ms=outcome.latency_ms)
            if cache is not None and keys[i] is not None:
                try:
                    cache.put(keys[i], {"score": a.score, "justification": a.justification,
                                        "region_seen": a.region_seen, "raw": outcome.raw})
                except Exception as e:  # noqa: BLE001 - a cache that cannot write only costs a future call
                    log.warning("judge cache write failed (%s)", type(e).__name__)
        if failed:
            log.warning("gemini judge: %d of %d candidates fell back to offline (%s)", len(failed), len(todo),
                        "; ".join(sorted(set(failed))))

    def _ask_one(self, chat: Any, settings: GeminiSettings, text: str, candidate: Candidate) -> _Outcome:
        """One candidate, start to finish; returns an outcome, never raises (it runs in a worker thread)."""
        from langchain_core.messages import HumanMessage
        from langchain_core.messages.content import create_image_block

        t0 = time.perf_counter()
        try:
            jpeg = self._image_bytes(candidate)
        except Exception as e:  # noqa: BLE001
            why = getattr(e, "reason", None) or type(e).__name__  # ImageLoadError: a one-line, path-free reason
            return _Outcome(reason=f"image unreadable ({str(why)[:80]})")
        message = HumanMessage(content=[
            {"type": "text", "text": text},
            create_image_block(base64=base64.b64encode(jpeg).decode("ascii"), mime_type="image/jpeg"),
        ])
        raw = None
        try:
            reply = self.session.invoke(chat, [message], kind="judge", response_mime_type="application/json",
                                        response_json_schema=RESPONSE_SCHEMA)
            raw = _answer_text(reply)
            finish = (getattr(reply, "response_metadata", None) or {}).get("finish_reason")
            answer = parse_answer(raw, str(finish) if finish else None)
        except (GeminiCallError, AnswerError) as e:
            return _Outcome(raw=raw, reason=str(e), latency_ms=_ms(t0))
        except Exception as e:  # noqa: BLE001
            return _Outcome(raw=raw, reason=failure_reason(e), latency_ms=_ms(t0))
        return _Outcome(answer=answer, raw=raw, latency_ms=_ms(t0))

    @staticmethod
    def _image_bytes(candidate: Candidate) -> bytes:
        from retrieval.preprocess import load_image, to_jpeg_bytes

        return to_jpeg_bytes(load_image(candidate.path), max_side=IMAGE_MAX_SIDE, quality=JPEG_QUALITY)

    # ---------------------------------------------------------------------------------------- cache

    def close(self) -> None:
        """Close the cache this judge opened itself (one handed in belongs to the caller)."""
        if self._cache is not None and self._cache_arg is True:
            self._cache.close()
        self._cache = None

    def _safe_cache(self) -> Optional["JudgeCache"]:
        try:
            return self._get_cache()
        except Exception as e:  # noqa: BLE001 - no cache is slower, not wrong
            log.warning("judge cache unavailable (%s); continuing without it", type(e).__name__)
            self._cache_arg = None
            return None

    def _lookup(self, cache: "JudgeCache", settings: GeminiSettings, query: str,
                candidate: Candidate) -> tuple[Optional[str], Optional[Verdict]]:
        from retrieval.manifest import file_sha256

        try:
            key = cache.key(settings.model, self.prompt.sha256, f"{file_sha256(candidate.path)}:{IMAGE_PREP}", query)
            hit = cache.get(key)
            if hit is None:
                return key, None
            answer = GeminiAnswer.model_validate(hit)
            return key, Verdict(id=candidate.id, score=answer.score, justification=answer.justification,
                                region_seen=answer.region_seen, judge="gemini", model=settings.model,
                                prompt_hash=self.prompt.sha256, raw=hit.get("raw"), cached=True, latency_ms=0.0)
        except Exception as e:  # noqa: BLE001 - unreadable file or a bad entry: ask (or fall back) instead
            log.debug("judge cache lookup skipped for %s (%s)", candidate.id, type(e).__name__)
            return None, None

    # ---------------------------------------------------------------------------------------- fallback

    def _fall_back(self, query: str, candidate: Candidate, candidates: Sequence[Candidate], reason: str) -> Verdict:
        try:
            v = self._fallback(query, candidate, candidates, reason)
            return v if v.fallback == reason else v.model_copy(update={"fallback": reason})
        except Exception as e:  # noqa: BLE001 - the last line of defence: never raise from judge()
            log.error("offline fallback failed for %s (%s)", candidate.id, type(e).__name__)
            return Verdict(id=candidate.id, score=min(1.0, max(0.0, candidate.score)),
                           justification="No judge could score this image; the retrieval similarity stands in.",
                           judge="offline", model="retrieval-score", fallback=reason)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 1)
