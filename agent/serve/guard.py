"""Who may talk to `kger serve`, and how much: Host and Origin, the token, the request body.

Jupyter Server's rules (STYLE.md §6), because the store holds clinical descriptions and a web page the user
visits can otherwise call http://127.0.0.1:PORT:
- Host: a name this server answers to (loopback names, the address it binds, the machine's own addresses
  when it binds a wildcard, and what the user names with --allow-host / $KGER_SERVE_ALLOWED_HOSTS). A DNS
  rebinding page reaches us under ITS name, so it gets 403. Only the name is checked, not the port: an ssh
  tunnel or a container port map changes the port, never the name the attacker controls.
- Origin: a browser sends it on cross-origin requests; only our own origin (the Host itself) is answered.
- A token (Authorization: Bearer, or X-Kger-Token) on everything but the API's description (/docs,
  /openapi.json): the description holds no data, and the docs page must load before the user can paste a token.
- The body: at most `max_body` bytes, declared or chunked (413 either way), and it must keep coming (408).

The same host list goes to the MCP SDK's own DNS-rebinding check (`transport_security`), so /mcp answers
exactly the names the rest of the API does.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Iterable, Optional
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

TOKEN_ENV = "KGER_SERVE_TOKEN"
HOSTS_ENV = "KGER_SERVE_ALLOWED_HOSTS"
MIN_TOKEN = 16  # a token guessable in a few tries is no token; a generated one has 43 characters
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
BODY_IDLE_S = 30.0  # a body that stops arriving for this long is a held connection, not an upload
OPEN_PATHS = ("/docs", "/redoc", "/openapi.json")  # GET without a token: the API's description, no data


class GuardConfigError(ValueError):
    """A token or host setting `kger serve` refuses to start with (the message is the user's one line)."""


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """A host as it goes into a URL: IPv6 addresses in brackets (http://[::1]:8765)."""
    host = host.strip("[]")
    return f"[{host}]" if ":" in host else host


def host_name(header: str) -> Optional[str]:
    """The name of a Host header value ('name', 'name:port', '[v6]', '[v6]:port'), lowercased; None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        rest = header[end + 1:] if end > 0 else "x"
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return header[1:end]
    name, _, port = header.partition(":")
    if (port and not port.isdigit()) or not name:
        return None
    return name


def _names(values: Iterable[str]) -> list[str]:
    out = []
    for v in values:
        for part in v.replace(",", " ").split():
            name = host_name(part)
            if name is None:
                raise GuardConfigError(f"{part!r} is not a host name (give NAME or an IP address, no scheme or path)")
            out.append(name)
    return out


def machine_addresses() -> set[str]:
    """This machine's own names and addresses, for a wildcard bind (0.0.0.0 / ::): its host name and every
    interface address (what `hostname -I` prints), so a client on the network may use any of them."""
    found = {socket.gethostname().lower()}  # no DNS lookup of it: offline that can hang, and it is traffic
    try:  # Linux: IPv4 per interface (SIOCGIFADDR), IPv6 from /proc
        import fcntl
        import struct

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                    found.add(socket.inet_ntoa(packed[20:24]))
                except OSError:
                    continue
        with open("/proc/net/if_inet6") as f:
            for line in f:
                raw = line.split()[0]
                found.add(str(ipaddress.IPv6Address(int(raw, 16))))
    except (OSError, ImportError, ValueError):
        pass
    return {a.lower() for a in found if a}


@dataclass(frozen=True)
class HostPolicy:
    """The names this server answers to (lowercase, IPv6 without brackets)."""

    names: frozenset[str] = frozenset(LOOPBACK_NAMES)

    @classmethod
    def for_bind(cls, bind: str, allow: Iterable[str] = (), env: Optional[str] = None) -> "HostPolicy":
        """Loopback names, the bound address (or this machine's addresses for a wildcard), --allow-host
        names and $KGER_SERVE_ALLOWED_HOSTS (comma or space separated)."""
        names = set(LOOPBACK_NAMES)
        bind = bind.strip("[]").lower()
        names |= machine_addresses() if bind in WILDCARDS else {bind}
        names |= set(_names(allow))
        names |= set(_names([os.environ.get(HOSTS_ENV, "") if env is None else env]))
        names -= set(WILDCARDS)  # browsers send 0.0.0.0 to localhost: never a name we answer to
        return cls(frozenset(names))

    def host_ok(self, header: Optional[str]) -> bool:
        name = host_name(header) if header else None
        return name is not None and name in self.names

    @staticmethod
    def origin_ok(origin: Optional[str], host_header: str) -> bool:
        """No Origin (not a browser, or same-origin GET) or our own origin; anything else is another page."""
        if origin is None:
            return True
        try:
            parts = urlsplit(origin.strip())
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.strip().lower() \
            and not parts.path.strip("/")

    def sdk_settings(self):
        """The MCP SDK's DNS-rebinding settings for the same names (its patterns: 'name:*' and 'name')."""
        from mcp.server.transport_security import TransportSecuritySettings

        hosts = sorted(url_host(n) for n in self.names)
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[p for h in hosts for p in (h, f"{h}:*")],
            allowed_origins=[p for h in hosts for s in ("http", "https") for p in (f"{s}://{h}", f"{s}://{h}:*")])


def server_token(bind: str, no_token: bool, environ: Optional[dict] = None) -> tuple[Optional[str], str]:
    """(the token, where it came from: 'env' | 'generated' | 'off'), as Jupyter does: a token by default, even on
    loopback; --no-token on loopback only; a short or blank $KGER_SERVE_TOKEN refused beyond loopback."""
    environ = os.environ if environ is None else environ
    given = environ.get(TOKEN_ENV)
    loopback = is_loopback(bind)
    if no_token:
        if not loopback:
            raise GuardConfigError(f"--no-token is for loopback only: binding to {bind} exposes the store beyond "
                                   f"this machine (leave the token on; set {TOKEN_ENV} or let kger generate one)")
        if given:
            raise GuardConfigError(f"--no-token with {TOKEN_ENV} set: choose one")
        return None, "off"
    if given is None:
        return secrets.token_urlsafe(32), "generated"
    if not given.strip() or given != given.strip() or any(c.isspace() or ord(c) < 33 for c in given):
        raise GuardConfigError(f"{TOKEN_ENV} is blank or holds spaces or control characters: unset it (a token is "
                               "then generated) or set a printable one")
    if not loopback and len(given) < MIN_TOKEN:
        raise GuardConfigError(f"{TOKEN_ENV} has {len(given)} characters; binding to {bind} needs at least "
                               f"{MIN_TOKEN} (or unset it: a token is then generated)")
    return given, "env"


def refuse(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    """The one-line JSON error of every door (no request data beyond what the message names)."""
    return JSONResponse({"error": " ".join(str(message).split()) or "error"}, status_code=status, headers=headers)


def _show(value: str) -> str:
    return repr(value[:80])


class Guard:
    """ASGI middleware in front of everything (the MCP door too): Host, Origin, the token, then the body.

    The body is read here, whole, before the app sees it (at most `max_body` bytes, as the app would read
    it anyway): a chunked body over the limit is a 413 like a declared one, and never an exception raised
    inside a route (that was a 400 "error parsing the body" on /search and a 500 traceback on /mcp)."""

    def __init__(self, app, policy: HostPolicy, token: Optional[str], max_body: int, body_idle_s: float = BODY_IDLE_S):
        self.app, self.policy, self.token, self.max_body, self.body_idle_s = app, policy, token, max_body, body_idle_s

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websocket routes: refuse before anything is read
            return await send({"type": "websocket.close", "code": 1008})
        refusal = self._check(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        body = await self._read_body(receive)
        if isinstance(body, JSONResponse):
            return await body(scope, receive, send)
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        # host names are case-insensitive; the MCP SDK's own check compares them as strings
        headers = [(k, v.lower() if k.lower() == b"host" else v) for k, v in scope.get("headers", [])]
        await self.app({**scope, "headers": headers}, replay, send)

    def _check(self, scope) -> Optional[JSONResponse]:
        raw = scope.get("headers", [])
        hosts = [v.decode("latin-1") for k, v in raw if k.lower() == b"host"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
        if len(hosts) != 1 or not self.policy.host_ok(hosts[0]):
            shown = _show(hosts[0]) if len(hosts) == 1 else "missing or repeated"
            return refuse(403, f"Host {shown} is not a name this server answers to (DNS rebinding protection): "
                               "reach it by a name it binds, or start kger serve with --allow-host NAME")
        if not self.policy.origin_ok(headers.get("origin"), hosts[0]):
            return refuse(403, "cross-origin request refused: this server answers its own pages only")
        open_path = scope.get("method") in ("GET", "HEAD") and (
            scope.get("path") in OPEN_PATHS or scope.get("path", "").startswith("/docs/"))
        if self.token is not None and not open_path:
            given = headers.get("authorization", "")
            given = given[7:].strip() if given.lower().startswith("bearer ") else headers.get("x-kger-token", "")
            if not hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode()):
                return refuse(401, f"missing or wrong token (send Authorization: Bearer $KGER_SERVE_TOKEN, or the "
                                   "token kger serve printed)", {"WWW-Authenticate": 'Bearer realm="kger"'})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            if not length.isdigit():
                return refuse(400, "Content-Length is not a number")
            return refuse(413, f"request body over {self.max_body:,} bytes")
        return None

    async def _read_body(self, receive):
        chunks, seen = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.body_idle_s)
            except asyncio.TimeoutError:
                return refuse(408, f"the request body stopped arriving for {self.body_idle_s:.0f} s")
            if message["type"] != "http.request":  # the client left
                return refuse(400, "the client disconnected before the body was complete")
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                return refuse(413, f"request body over {self.max_body:,} bytes")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
