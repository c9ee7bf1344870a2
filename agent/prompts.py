"""The stored prompts (prompts/*.txt, package data), loaded by name and hashed.

A verdict records the hash of the exact template it was produced with, so a trace or a cached answer can
always be tied to one version of the prompt. Templates use `str.format` syntax: named `{placeholders}`,
literal braces doubled (`{{` `}}`).
"""
from __future__ import annotations

import hashlib
import html
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

PROMPTS_PACKAGE = "prompts"
USER_TEXT_MAX_CHARS = 4000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(f for _, f, _, _ in string.Formatter().parse(self.text) if f)

    def format(self, **values: object) -> str:
        """Fill every placeholder; a missing or unknown name is an error (a typo must not pass silently)."""
        missing = self.placeholders - values.keys()
        unknown = values.keys() - self.placeholders
        if missing or unknown:
            raise KeyError(f"prompt {self.name!r}: missing {sorted(missing)}, unknown {sorted(unknown)}")
        return self.text.format(**values)


@lru_cache(maxsize=None)
def load_prompt(name: str) -> Prompt:
    """The prompt stored as prompts/<name>.txt in the installed package."""
    resource = resources.files(PROMPTS_PACKAGE) / f"{name}.txt"
    if not resource.is_file():
        raise FileNotFoundError(f"no stored prompt named {name!r} (looked for {PROMPTS_PACKAGE}/{name}.txt)")
    return Prompt(name=name, text=resource.read_text(encoding="utf-8"))


def bounded_user_text(text: str, max_chars: int = USER_TEXT_MAX_CHARS) -> str:
    """User text as a prompt holds it: control characters dropped, length bounded (not yet escaped)."""
    text = _CONTROL.sub(" ", str(text)).strip()
    if len(text) > max_chars:
        text = text[:max_chars].rstrip() + " [...]"
    return text


def is_blank(text: str) -> bool:
    """Whether nothing of `text` would reach a prompt (white space and control characters only): such a
    description is empty, refused as bad input before a run starts rather than failing inside one."""
    return not bounded_user_text(text)


def escape_user_text(text: str, max_chars: int = USER_TEXT_MAX_CHARS) -> str:
    """User text made safe to place between delimiter tags: `<`, `>` and `&` escaped (so no `</description>`
    can close the field early), control characters dropped, length bounded."""
    return html.escape(bounded_user_text(text, max_chars), quote=False)
