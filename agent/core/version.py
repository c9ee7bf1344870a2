"""kger's version, as both doors report it (`kger --version`, the OpenAPI page, the MCP server's info)."""
from __future__ import annotations


def kger_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kger")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"
