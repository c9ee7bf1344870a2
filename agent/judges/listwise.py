"""The listwise Gemini judge (`--judge list`): one request per round carrying every new candidate's image.

KGER's judge (agent/judges/gemini.py, the default) asks once per image. This one sends the stored re-rank
prompt, adapted by `LIST_NOTE` to several images, with each image after a text part "Image i", and asks for
strict JSON: {"verdicts": [{"image": i, "score": ..., "justification": ..., "region_seen": ...}, ...]}. Each
item is validated as the per-image answer is (`GeminiAnswer`); an image whose item is missing or malformed
falls back to the offline verdict for that image alone, the others keep theirs. A failed request falls back for
every image of it. Good verdicts go into the same cache, keyed with the listwise prompt's hash, so a cached
image costs nothing in either mode. Fewer requests (1 a round instead of n); the input tokens are about the
same (the images dominate), measured in bench/agent_loop.py.
"""
from __future__ import annotations

import base64
import json
import time
from typing import Any, Optional

from pydantic import ValidationError

from agent.judges.gemini import (RESPONSE_SCHEMA, AnswerError, GeminiAnswer, GeminiJudge, _answer_text, _ms)
from agent.judges.base import Candidate, Verdict
from agent.llm import failure_reason
from agent.prompts import Prompt, escape_user_text, load_prompt

LIST_NOTE = (
    "\n\n## Several images\nThis request carries {n} candidate images, each after a text part 'Image i'. Judge "
    "each one on its own, as above, and answer with ONE JSON object: {{\"verdicts\": [{{\"image\": i, \"score\": "
    "..., \"justification\": ..., \"region_seen\": ...}}, ...]}}, one item per image, in order.")
LIST_SCHEMA = {"type": "object", "properties": {"verdicts": {"type": "array", "items": {
    **RESPONSE_SCHEMA, "properties": {"image": {"type": "integer"}, **RESPONSE_SCHEMA["properties"]},
    "required": ["image", *RESPONSE_SCHEMA["required"]]}}}, "required": ["verdicts"]}


def parse_items(text: str, n: int) -> dict[int, GeminiAnswer]:
    """Image number (1..n) -> its validated verdict; items that are missing or malformed are left out."""
    body = text[text.find("{"):] if "{" in (text or "") else ""
    try:
        obj, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError:
        raise AnswerError("malformed answer (invalid JSON)") from None
    items = obj.get("verdicts") if isinstance(obj, dict) else None
    if not isinstance(items, list):
        raise AnswerError("malformed answer (no verdicts list)")
    out: dict[int, GeminiAnswer] = {}
    for item in items:
        if not isinstance(item, dict) or isinstance(item.get("image"), bool):
            continue
        try:
            i = int(item.get("image"))
            if 1 <= i <= n and i not in out:
                out[i] = GeminiAnswer.model_validate(item)
        except (TypeError, ValueError, ValidationError):
            continue
    return out


class ListwiseGeminiJudge(GeminiJudge):
    """One request per call of `judge` (a round's new candidates), one validated verdict per image."""

    name = "gemini"

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        base = self.prompt
        self.prompt = Prompt(name=f"{base.name}-list", text=base.text + LIST_NOTE.replace("{n}", "{{n}}"))

    def _ask_all(self, chat, settings, query, candidates, todo, verdicts, keys, cache, on_progress=None) -> None:
        from langchain_core.messages import HumanMessage
        from langchain_core.messages.content import create_image_block

        text = self.prompt.format(description=escape_user_text(query)).replace("{n}", str(len(todo)))
        parts: list[dict] = [{"type": "text", "text": text}]
        unreadable: dict[int, str] = {}
        sent: list[int] = []
        for i in todo:
            try:
                jpeg = self._image_bytes(candidates[i])
            except Exception as e:  # noqa: BLE001
                unreadable[i] = f"image unreadable ({str(getattr(e, 'reason', None) or type(e).__name__)[:80]})"
                continue
            sent.append(i)
            parts += [{"type": "text", "text": f"Image {len(sent)}"},
                      create_image_block(base64=base64.b64encode(jpeg).decode("ascii"), mime_type="image/jpeg")]
        t0, raw, answers, reason = time.perf_counter(), None, {}, None
        if sent:
            try:
                reply = self.session.invoke(chat, [HumanMessage(content=parts)], kind="judge",
                                            response_mime_type="application/json", response_json_schema=LIST_SCHEMA)
                raw = _answer_text(reply)
                answers = parse_items(raw, len(sent))
            except AnswerError as e:
                reason = str(e)
            except Exception as e:  # noqa: BLE001
                reason = failure_reason(e)
        latency = _ms(t0) / max(1, len(sent))
        for n, i in enumerate(sent, start=1):
            a: Optional[GeminiAnswer] = answers.get(n)
            c = candidates[i]
            if a is None:
                why = reason or f"no valid verdict for image {n} in the listwise answer"
                v = self._fall_back(query, c, candidates, why)
                verdicts[i] = v.model_copy(update={"raw": raw, "latency_ms": latency})
                continue
            verdicts[i] = Verdict(id=c.id, score=a.score, justification=a.justification, region_seen=a.region_seen,
                                  judge="gemini", model=settings.model, prompt_hash=self.prompt.sha256, raw=raw,
                                  latency_ms=latency)
            if cache is not None and keys[i] is not None:
                try:
                    cache.put(keys[i], {"score": a.score, "justification": a.justification,
                                        "region_seen": a.region_seen, "raw": raw})
                except Exception:  # noqa: BLE001 - a cache that cannot write only costs a future call
                    pass
        for i, why in unreadable.items():
            verdicts[i] = self._fall_back(query, candidates[i], candidates, why)
        if on_progress is not None:
            on_progress(len(candidates))


def make_listwise(session, **kw: Any) -> ListwiseGeminiJudge:
    return ListwiseGeminiJudge(session=session, prompt=load_prompt("rerank"), **kw)
