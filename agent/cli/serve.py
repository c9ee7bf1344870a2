"""`kger serve`: the HTTP JSON API and the MCP tools over one warm process (agent/serve/).

As Jupyter Server does (STYLE.md §6): a token by default, even on loopback, printed with the URL; --no-token on
loopback only; Host and Origin checked on every request (agent/serve/guard.py).
"""
from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from agent.cli.common import LlmOpt, check_llm
from agent.cli.common import ChromaUrlOpt, HomeOpt, StoreOpt, err_console, set_home


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind (beyond loopback: clients must send the token, at least 16 characters).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port, printed).")] = 8765,
    allow_host: Annotated[Optional[list[str]], typer.Option("--allow-host", metavar="NAME", help="Also answer requests that reach this server by NAME (a DNS name or address; repeatable; also $KGER_SERVE_ALLOWED_HOSTS, comma separated). Loopback names, the bound address and, for 0.0.0.0 / ::, this machine's addresses are always answered; any other Host header gets 403 (DNS rebinding).")] = None,
    no_token: Annotated[bool, typer.Option("--no-token", help="Serve without a token (loopback only): any program on this machine can then read the store.")] = False,
    mcp_stdio: Annotated[bool, typer.Option("--mcp-stdio", help="Serve the MCP tools over stdin/stdout instead of HTTP (for an MCP client that starts kger; no token).")] = False,
    llm: LlmOpt = "offline",
    store: StoreOpt = "default",
    chroma_url: ChromaUrlOpt = None,
    home: HomeOpt = None,
):
    """Serve search, ask, runs and reports as an HTTP JSON API (OpenAPI page at /docs) and as MCP tools
    (retrieve, similar, ask, trace) at /mcp, from one process that loads the bundle and store once.

    A token is required by default (generated and printed unless $KGER_SERVE_TOKEN is set)."""
    from agent.serve.guard import GuardConfigError, HostPolicy, server_token

    set_home(home)
    check_llm(llm)
    token, source, policy = None, "off", None
    if not mcp_stdio:
        try:
            token, source = server_token(host, no_token)
            policy = HostPolicy.for_bind(host, allow_host or ())
        except GuardConfigError as e:
            raise typer.BadParameter(str(e), param_hint="--no-token" if no_token else "--host") from None
    from agent.serve.service import Service

    with err_console.status("Loading bundle and store..."):
        service = Service.open(store, url=chroma_url, llm=llm)
    if mcp_stdio:
        from agent.serve.mcp_tools import build_mcp

        build_mcp(service).run("stdio")
        return
    import uvicorn

    from agent.serve.http import create_app
    from agent.serve.protocol import HeaderDeadlineH11

    app = create_app(service, token=token, policy=policy)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=3, http=HeaderDeadlineH11)
    server = uvicorn.Server(config)
    _announce(server, token, source, service)
    server.run()


def banner(host: str, port: int, token: Optional[str], source: str, encoder: str) -> list[str]:
    """What `kger serve` prints once bound: the URL (IPv6 in brackets), how to send the token, and an MCP client
    configuration. A token from $KGER_SERVE_TOKEN is not echoed (it may be in a log); a generated one is."""
    from agent.serve.guard import TOKEN_ENV, WILDCARDS, url_host

    wildcard = host in WILDCARDS
    url = f"http://{url_host({'::': '::1'}.get(host, '127.0.0.1') if wildcard else host)}:{port}"
    state = {"env": f"token from ${TOKEN_ENV}", "generated": "token generated",
             "off": "NO TOKEN (--no-token): any program on this machine can read the store"}[source]
    lines = [f"kger serve: {url}  (API docs {url}/docs, MCP {url}/mcp/; encoder {encoder}; {state})"]
    if wildcard:
        lines.append(f"  bound to {host}: also reachable by this machine's addresses and host name (port {port}); "
                     "other names need --allow-host NAME")
    if token is None:
        snippet = {"mcpServers": {"kger": {"url": f"{url}/mcp/"}}}
        lines.append(f"  MCP client configuration: {json.dumps(snippet)}")
        return lines
    shown = token if source == "generated" else f"${TOKEN_ENV}"
    if source == "generated":
        lines.append(f"  token: {token}   (set {TOKEN_ENV} to choose one)")
    lines.append(f"  try: curl -H 'Authorization: Bearer {shown}' {url}/health")
    snippet = {"mcpServers": {"kger": {"url": f"{url}/mcp/", "headers": {"Authorization": f"Bearer {shown}"}}}}
    lines.append(f"  MCP client configuration: {json.dumps(snippet)}")
    return lines


def _announce(server, token: Optional[str], source: str, service) -> None:
    """Print the real address once the socket is bound (port 0 picks one), so scripts can read it."""
    started = server.startup

    async def startup(sockets=None):
        await started(sockets=sockets)
        for s in server.servers:
            for sock in s.sockets:
                h, p = sock.getsockname()[:2]
                for line in banner(h, p, token, source, service.health()["encoder"]):
                    err_console.print(line, markup=False, soft_wrap=True)
                return

    server.startup = startup
