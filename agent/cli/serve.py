"""`kger serve`: the HTTP JSON API and the MCP tools over one warm process (agent/serve/)."""
from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Optional

import typer

from agent.cli.common import LlmOpt, check_llm
from agent.cli.common import ChromaUrlOpt, HomeOpt, StoreOpt, err_console, set_home

TOKEN_ENV = "KGER_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback needs $KGER_SERVE_TOKEN.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port, printed).")] = 8765,
    mcp_stdio: Annotated[bool, typer.Option("--mcp-stdio", help="Serve the MCP tools over stdin/stdout instead of HTTP (for an MCP client that starts kger).")] = False,
    llm: LlmOpt = "offline",
    store: StoreOpt = "default",
    chroma_url: ChromaUrlOpt = None,
    home: HomeOpt = None,
):
    """Serve search, ask, runs and reports as an HTTP JSON API (OpenAPI page at /docs) and as MCP tools
    (retrieve, similar, ask, trace) at /mcp, from one process that loads the bundle and store once."""
    set_home(home)
    check_llm(llm)
    token = os.environ.get(TOKEN_ENV) or None
    if not mcp_stdio and not is_loopback(host) and token is None:
        raise typer.BadParameter(f"binding to {host} exposes the store beyond this machine: set {TOKEN_ENV} "
                                 "(clients then send Authorization: Bearer TOKEN)", param_hint="--host")
    from agent.serve.service import Service

    with err_console.status("Loading bundle and store..."):
        service = Service.open(store, url=chroma_url, llm=llm)
    if mcp_stdio:
        from agent.serve.mcp_tools import build_mcp

        build_mcp(service).run("stdio")
        return
    import uvicorn

    from agent.serve.http import create_app

    app = create_app(service, token=token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    _announce(server, host, token is not None, service)
    server.run()


def _announce(server, host: str, has_token: bool, service) -> None:
    """Print the real address once the socket is bound (port 0 picks one), so scripts can read it."""
    started = server.startup

    async def startup(sockets=None):
        await started(sockets=sockets)
        for s in server.servers:
            for sock in s.sockets:
                h, p = sock.getsockname()[:2]
                err_console.print(f"kger serve: http://{h}:{p}  (API docs /docs, MCP /mcp; encoder "
                                  f"{service.health()['encoder']}; token {'required' if has_token else 'off'})",
                                  markup=False, soft_wrap=True)
                return

    server.startup = startup
