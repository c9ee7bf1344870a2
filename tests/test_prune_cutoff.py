"""`trace prune --before`: unparsable or out-of-range values are clear errors, a future cutoff needs --yes,
--dry-run removes nothing (issue 22 row 6)."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from store.traces import TraceDB
from store.when import FutureCutoffError, parse_when, prune_cutoff
from retrieval.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("value, why", [
    ("", "empty"), ("   ", "empty"), ("yesterday", "not a date"), ("99999999999d", "before the year 1"),
    ("99999999999999999999w", "before the year 1"), ("0001-01-01", "out of range"),
])
def test_bad_cutoffs_are_one_line_input_errors(value, why):
    with pytest.raises(InputError, match=why) as e:
        prune_cutoff(value, now=NOW)
    assert "\n" not in str(e.value)


def test_ages_dates_and_the_future():
    assert prune_cutoff("7d", now=NOW) == NOW - timedelta(days=7)
    assert parse_when("2026-05-01", end_of_day=True).hour == 23
    with pytest.raises(FutureCutoffError, match="--yes"):
        prune_cutoff("2099-01-01", now=NOW)
    assert prune_cutoff("2099-01-01", yes=True, now=NOW).year == 2099
    with pytest.raises(InputError, match="required"):
        prune_cutoff(None, now=NOW)


def _kger(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from agent.cli import main; main()", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_prune_cli_refuses_bad_and_future_cutoffs_and_dry_run_keeps_runs(kger_home):
    with TraceDB() as db:
        ids = [db.start_run(input=f"q{i}", kind="ask", llm="offline", store="s", bundle=None, models=None)
               for i in range(3)]
    for value in ("", "99999999999d"):
        done = _kger("trace", "prune", "--before", value)
        assert done.returncode == 2 and "--before" in done.stderr and "Internal error" not in done.stderr
    assert not (kger_home / "crashes").exists()
    done = _kger("trace", "prune", "--before", "2099-01-01")
    assert done.returncode == 1 and "in the future" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = _kger("trace", "prune", "--before", "2099-01-01", "--yes", "--dry-run")
    assert done.returncode == 0 and "Would remove 3 runs" in done.stdout, done.stderr
    with TraceDB() as db:
        assert {r["id"] for r in db.list_runs(limit=0)} == set(ids)
    done = _kger("trace", "prune", "--before", "2099-01-01", "--yes")
    assert done.returncode == 0 and "Removed 3 runs" in done.stdout, done.stderr
