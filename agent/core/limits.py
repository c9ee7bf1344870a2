"""The bounds of a request, written once: the CLI, HTTP, MCP and the agent's tools all read them here.

`k` (images in an answer) and `pool` (candidates retrieved and judged per query) share one bound, MAX_K. A
request over it is an error that names the bound (`LimitError`, one line, exit 1 / HTTP 422 / an MCP tool
error), never a silent cap: a caller who asks for 500 images gets 500 or is told why not. `pool_for` is the
one place the rule "the pool holds at least k candidates" is written.
"""
from __future__ import annotations

from typing import Any, Optional

from retrieval.errors import InputError

MAX_K = 1000  # images per answer and candidates per query (k and pool), for every door and the tools
DEFAULT_POOL = 20  # candidates per query when the caller names none
MAX_TEXT = 2000  # characters of a description sent to the server
MAX_UPLOAD = 16 * 1024 * 1024  # bytes of an uploaded image (and of any request body)
MAX_RUNS = 200  # runs listed by one request to the server
# Extra search rounds the corrective loop may make per turn (agent/reflect.py; `--rounds N`); 0: one pass, KGER's
# pipeline. On by default: on 3 blind splits (bench/agent_loop.py) R@1, MRR and nDCG@10 were never below one pass
# in 27 of 27 split x query set x pool cells, and the mean R@1 at pool 5 rose from 0.892 to 0.971. Each round judges
# only new candidates, but those go to the judge too (to Gemini, off the machine, with --llm gemini): `--rounds 0`.
DEFAULT_ROUNDS = 2
MAX_ROUNDS = 5  # the most extra rounds a request may ask for
MAX_TOOL_CALLS = 12  # tool calls per turn, all rounds together (the planner's first calls count too)


class LimitError(InputError):
    """A request over one of the bounds above; the message names the bound."""


def check_k(k: Any, what: str = "k") -> int:
    """`k` as an int from 1 to MAX_K, or LimitError naming the bound (a bool is not a count)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise LimitError(f"{what} must be an integer from 1 to {MAX_K}, not {k!r}")
    return k


def pool_for(k: int, pool: Optional[int] = None) -> int:
    """Candidates per query for an answer of k images: the pool asked for (DEFAULT_POOL if none), at least k."""
    return max(check_k(pool, "pool") if pool is not None else DEFAULT_POOL, check_k(k))


def check_rounds(rounds: Any) -> int:
    """Extra rounds of the corrective loop as an int from 0 to MAX_ROUNDS, or LimitError naming the bound."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 0 <= rounds <= MAX_ROUNDS:
        raise LimitError(f"rounds must be an integer from 0 to {MAX_ROUNDS}, not {rounds!r}")
    return rounds
