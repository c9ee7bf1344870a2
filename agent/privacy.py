"""Nothing leaves the machine unless the user chose it, whatever the environment says.

LangChain and LangGraph send every run (descriptions, candidates, file paths; with Gemini, the images too)
to LangSmith as soon as `LANGSMITH_TRACING=true` (or the older `LANGCHAIN_TRACING_V2`) is set, as it often
is on machines that run other LangChain code: measured on main, one offline `kger ask` uploaded ~157 KB.
kger switches that off unless the user opts in with `KGER_LANGSMITH=1`, and then says so on stderr.
"""
from __future__ import annotations

import os
import sys
from typing import MutableMapping, Optional

OPT_IN = "KGER_LANGSMITH"
# every spelling langsmith reads (it tries LANGSMITH_* then LANGCHAIN_* for TRACING_V2, then TRACING)
TRACING_VARS = ("LANGSMITH_TRACING", "LANGSMITH_TRACING_V2", "LANGCHAIN_TRACING", "LANGCHAIN_TRACING_V2")
DEFAULT_ENDPOINT = "https://api.smith.langchain.com"


def opted_in(env: Optional[MutableMapping[str, str]] = None) -> bool:
    env = os.environ if env is None else env
    return (env.get(OPT_IN) or "").strip().lower() in ("1", "true", "yes", "on")


def enforce(env: Optional[MutableMapping[str, str]] = None) -> Optional[str]:
    """Turn LangSmith tracing off unless opted in; returns the notice to show when it stays on.

    The variables are set to "false" rather than removed so that child processes inherit the decision,
    and langsmith's global switch is set too in case it already read (and cached) the environment.
    """
    env = os.environ if env is None else env
    if opted_in(env):
        endpoint = env.get("LANGSMITH_ENDPOINT") or env.get("LANGCHAIN_ENDPOINT") or DEFAULT_ENDPOINT
        return (f"LangSmith tracing is on ({OPT_IN}=1): descriptions, candidates and answers of this run "
                f"are sent to {endpoint}.")
    for var in TRACING_VARS:
        env[var] = "false"
    if "langsmith" in sys.modules:  # already imported (and maybe cached the variables): switch it off directly
        import langsmith

        langsmith.utils.get_env_var.cache_clear()
        langsmith.configure(enabled=False)
    return None
