"""Times a user gives to `kger trace list --since/--until` and `trace prune --before`, parsed in one place.

`--before ''` used to reach the database as None (AttributeError) and `--before 99999999999d` overflowed
`timedelta` (OverflowError): both crash files. A cutoff in the future deletes every run, so `prune` refuses
one unless told `--yes`. Pure functions: `now` is a parameter, so tests need no clock.
"""
from __future__ import annotations

from datetime import datetime, time as dtime, timedelta
from typing import Optional

from retrieval.errors import InputError

class FutureCutoffError(InputError):
    """A prune cutoff after now, without --yes: a choice to confirm, not a malformed value."""


UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
FORMS = "YYYY-MM-DD, YYYY-MM-DDTHH:MM or an age: 30m, 2h, 7d, 4w"


def parse_when(value: Optional[str], end_of_day: bool = False, now: Optional[datetime] = None) -> Optional[datetime]:
    """ISO date or date-time (local time unless it names a zone), or a span back from `now`: 30m, 2h, 7d.
    None for None; InputError (one line) for text that is empty, not a time, or out of range."""
    if value is None:
        return None
    v = value.strip()
    if not v:
        raise InputError(f"an empty time was given: give {FORMS}")
    now = now or datetime.now().astimezone()
    if len(v) > 1 and v[-1].lower() in UNITS and v[:-1].isdigit():
        try:
            return now - timedelta(**{UNITS[v[-1].lower()]: int(v[:-1])})
        except (OverflowError, ValueError):
            raise InputError(f"{value!r} reaches before the year 1: give a shorter age or a date") from None
    try:
        when = datetime.fromisoformat(v)
    except ValueError:
        raise InputError(f"{value!r} is not a date: give {FORMS}") from None
    if end_of_day and len(v) == 10:  # a bare date as the upper bound includes that whole day
        when = datetime.combine(when.date(), dtime.max)
    try:
        when.astimezone()  # a naive year-1 or year-9999 moment may not convert to UTC
    except (OverflowError, ValueError, OSError):
        raise InputError(f"{value!r} is out of range: give a date between 1970 and 9999") from None
    return when


def prune_cutoff(value: Optional[str], yes: bool = False, now: Optional[datetime] = None) -> datetime:
    """`trace prune --before`: required, parsed, and not in the future unless `yes` (it would remove every run,
    those being written now included)."""
    now = now or datetime.now().astimezone()
    when = parse_when(value, now=now) if value is not None else None
    if when is None:
        raise InputError(f"--before is required: give {FORMS}")
    if when.astimezone() > now and not yes:
        raise FutureCutoffError(f"--before {value} is in the future: every run would be removed; "
                         "add --yes if that is what you want (--dry-run shows what would go)")
    return when
