"""Loaded by every Python process the tests start (its folder is put on PYTHONPATH by tests/conftest.py).

It refuses, and records, every TCP connection to an address outside the loopback range and every DNS lookup of
a host name, so a test whose kger process tried to reach the network fails even when kger swallowed the error. The record goes to the file
named by KGER_NETGUARD_LOG; conftest reads it after each test.
"""
import ipaddress
import os
import socket

_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}


def _is_local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").split("%", 1)[0]
    if host.lower() in _LOCAL_NAMES:
        return True
    # this machine's own interface addresses a test names (serve reached by its eth0 address): no packet leaves
    if host.lower() in os.environ.get("KGER_NETGUARD_ALLOW", "").lower().split(","):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # any other host name would need a DNS lookup: that is network traffic already
    return ip.is_loopback or ip.is_unspecified or (ip.version == 6 and ip.ipv4_mapped is not None
                                                    and ip.ipv4_mapped.is_loopback)


def _refuse(what: str, target) -> None:
    """Record the attempt, then fail it the way a machine without that route fails: a name that does not
    resolve (socket.gaierror) or a refused connection, so callers take their usual no-network path."""
    path = os.environ.get("KGER_NETGUARD_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {what} {target!r}\n")
    message = f"test network guard: {what} to {target!r} refused (not loopback)"
    if what == "resolve":
        raise socket.gaierror(socket.EAI_NONAME, message)
    raise ConnectionRefusedError(message)


def _is_ip(host) -> bool:
    try:
        ipaddress.ip_address(str(host.decode() if isinstance(host, bytes) else host).strip("[]").split("%", 1)[0])
        return True
    except ValueError:
        return False


def _check(sock, address) -> None:
    # a UDP "connect" only picks a route (Ray finds its node address that way): no packet leaves
    if sock.type == socket.SOCK_DGRAM:
        return
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and address:
        if not _is_local(address[0]):
            _refuse("connect", address)


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    # an address literal resolves without a lookup; only a host name would ask a DNS server
    if host is not None and not _is_local(host) and not _is_ip(host):
        _refuse("resolve", host)
    return _getaddrinfo(host, *args, **kwargs)


def install() -> None:
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo


if os.environ.get("KGER_NETGUARD_LOG"):
    install()
