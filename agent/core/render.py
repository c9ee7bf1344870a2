"""The one rendering rule for the terminal: text that came from a user, a file or a model is data.

Rich parses console markup in every plain string it prints, so a description such as `[/bold] left ear` raised
a MarkupError and `[link=...]` made a clickable link. Escaping by hand in some places (and twice in others)
was the bug; here it happens once, at the point of output: `literal()` turns untrusted text into a rich `Text`
(never parsed as markup), with control characters made visible (an ESC must not reach the terminal) and long
text shortened. Only strings written in kger's own code are markup; `line()` joins the two kinds.

What is shortened is only what the screen shows: traces and `--json` keep every character.
"""
from __future__ import annotations

from typing import Any, Optional

from rich.text import Text

from retrieval.printable import visible

SCREEN_CHARS = 300  # a heading or a table cell; the full text stays in the trace and in --json
BLOCK_CHARS = 4000  # a paragraph of its own (trace show's input, a judge's raw answer)


def clean(value: Any, limit: Optional[int] = SCREEN_CHARS, newlines: bool = True) -> str:
    """The plain string the screen shows: control and bidi-override characters as `\\xNN`, at most `limit`
    characters (then '... (N more characters)'); `newlines=False` shows line breaks as `\\n` too."""
    s = "" if value is None else str(value)
    if not newlines:
        s = s.replace("\t", " ")
    s = visible(s, newlines)
    if limit is not None and len(s) > limit:
        s = f"{s[:limit]}... ({len(s) - limit:,} more characters)"
    return s


def literal(value: Any, style: str = "", limit: Optional[int] = SCREEN_CHARS, newlines: bool = True) -> Text:
    """User, file or model text as a rich `Text`: shown exactly (never markup), made safe and shortened."""
    return Text(clean(value, limit, newlines), style=style)


def line(*parts: Any, style: str = "") -> Text:
    """One `Text` from parts: a `str` part is kger's own markup (a literal in our code), a `Text` part (from
    `literal()`) is kept as it is. Any other value (a number, a path) is data."""
    out = Text(style=style)
    for part in parts:
        if isinstance(part, Text):
            out.append_text(part)
        elif isinstance(part, str):
            out.append_text(Text.from_markup(part))
        else:
            out.append_text(literal(part))
    return out


def plural(n: int, noun: str) -> str:
    """'1 entry', '0 entries', '3 lines': the count and the noun, in English."""
    if n == 1:
        return f"{n} {noun}"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "o", "u"):
        return f"{n} {noun[:-1]}ies"
    return f"{n} {noun}s"
