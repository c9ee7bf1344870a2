"""The root of every kger user error: bad input or state the user can fix, told in one line.

The CLI turns a `KgerError` (and an OS error about a user's path) into one line and exit 1; anything else is
a bug and keeps its traceback. This module imports nothing, so `store/` may use it without pulling in torch.
"""
from __future__ import annotations


class KgerError(Exception):
    """A failure the user can fix; the message is one line and, where it can, names the next command."""


class InputError(KgerError, ValueError):
    """A value the user gave (a flag, a description, a file's content) that kger cannot use.

    Also a ValueError, so library callers that validate with `except ValueError` keep working."""
