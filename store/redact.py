"""Make any value safe to write down: JSON-able, and with no secret left in it.

Everything kger persists (trace records, cached judge answers) goes through ``record()``, so a Gemini
key that leaked into an error message, a URL or a model's settings never reaches the disk.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from datetime import date, datetime
from pathlib import PurePath
from typing import Any

import numpy as np

REDACTED = "[redacted]"
SECRET_ENV_VARS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")  # both Gemini keys kger reads (agent/llm.py KEY_VARS)
MIN_SECRET_LEN = 8  # shorter values would blank out ordinary words
# ?key=... / &api_key=... style query parameters (Google APIs take the key as ?key=)
_URL_SECRET = re.compile(r"(?i)([?&](?:key|api[_-]?key|access[_-]?token|token)=)[^&#\s\"'<>]+")


def _secrets() -> list[str]:
    values = (os.environ.get(name, "") for name in SECRET_ENV_VARS)
    return sorted({v for v in values if len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)


def scrub_text(text: str, secrets: list[str] | None = None) -> str:
    for secret in _secrets() if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    return _URL_SECRET.sub(lambda m: m.group(1) + REDACTED, text)


def record(value: Any) -> Any:
    """A JSON-able copy of ``value`` with secrets scrubbed from every string (keys included).

    numpy values become numbers or lists, paths and dates strings, dataclasses and pydantic models
    dicts; non-finite floats become None so the stored JSON stays strict.
    """
    return _record(value, _secrets())


def _record(value: Any, secrets: list[str]) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, np.generic):
        return _record(value.item(), secrets)
    if isinstance(value, np.ndarray):
        return _record(value.tolist(), secrets)
    if isinstance(value, dict):
        return {scrub_text(str(k), secrets): _record(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_record(v, secrets) for v in items]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return scrub_text(str(value), secrets)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _record(dataclasses.asdict(value), secrets)
    if hasattr(value, "model_dump"):  # pydantic v2
        return _record(value.model_dump(mode="json"), secrets)
    return scrub_text(str(value), secrets)
