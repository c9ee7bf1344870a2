"""Loaded by every Python process the tests start (its folder is put on PYTHONPATH by tests/conftest.py).

It refuses, and records, every connection to an address outside the loopback range, so a test whose kger
process tried to reach the network fails even when kger swallowed the error. The record goes to the file
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
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # any other host name would need a DNS lookup: that is network traffic already
    return ip.is_loopback or ip.is_unspecified or (ip.version == 6 and ip.ipv4_mapped is not None
                                                    and ip.ipv4_mapped.is_loopback)


def _refuse(what: str, target) -> None:
    path = os.environ.get("KGER_NETGUARD_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {what} {target!r}\n")
    raise ConnectionRefusedError(f"test network guard: {what} to {target!r} refused (not loopback)")


def _check(sock, address) -> None:
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
    if host is not None and not _is_local(host):
        _refuse("resolve", host)
    return _getaddrinfo(host, *args, **kwargs)


def install() -> None:
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo


if os.environ.get("KGER_NETGUARD_LOG"):
    install()
