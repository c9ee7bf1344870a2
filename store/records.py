"""What Chroma accepts, owned in one place: metadata values (clean_metadata) and filter syntax (where_clause)."""
from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any, Sequence

import numpy as np


def clean_metadata(meta: dict | None) -> dict | None:
    """Chroma takes only str/int/float/bool values and rejects an empty dict, so drop None and
    turn numpy scalars and paths into plain values."""
    out: dict[str, Any] = {}
    for key, value in (meta or {}).items():
        if value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, PurePath):
            value = str(value)
        if not isinstance(value, (str, int, float, bool)):
            raise TypeError(f"metadata {key!r} must be str, int, float or bool, not {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metadata {key!r} is {value}; only finite numbers can be stored")
        out[str(key)] = value
    return out or None


def where_clause(where: dict | None = None, classes: Sequence[str] | None = None) -> dict | None:
    """Chroma's filter syntax, owned here: the natural {"a": 1, "b": 2} becomes one `$and` of equalities,
    and `classes` keeps records whose class (metadata 'cls', the label or else the prediction) is listed."""
    clauses = [{k: v} for k, v in (where or {}).items() if not str(k).startswith("$")]
    if where and len(clauses) < len(where):  # already in Chroma's syntax: pass it through
        clauses = [dict(where)]
    clauses += [{"cls": {"$in": [str(c) for c in classes]}}] if classes else []
    return (clauses[0] if len(clauses) == 1 else {"$and": clauses}) if clauses else None
