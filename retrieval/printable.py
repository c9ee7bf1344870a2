"""Text from outside (a file name, a description, a model's answer) made safe to show: control characters
(NUL, ESC, a newline in a file name) and bidi overrides become visible escapes, `\\x0a` or `\\u202e`.

One rule for the terminal (agent/cli/render.py), the HTML report and the names kger stores for display (a
video frame's `exam.mp4 @ 00:00:01`): a newline in a file name must not split a skip line in two or forge
one, and a NUL must not reach a report. Imports nothing, so retrieval/ and store/ may use it.
"""
from __future__ import annotations

import re

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match) -> str:
    return f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100 else f"\\u{ord(match.group()):04x}"


def visible(text: str, newlines: bool = True) -> str:
    """`text` with control characters escaped; `newlines=False` escapes line breaks and tabs too (a name,
    a one-line message), else they are kept (a paragraph)."""
    s = text.replace("\r\n", "\n")
    if not newlines:
        s = s.replace("\n", "\\n").replace("\t", "\\t")
    return CONTROL.sub(_visible, s)
