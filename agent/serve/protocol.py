"""uvicorn's h11 protocol with a deadline on request headers (slowloris).

uvicorn times out idle keep-alive connections but not a request whose headers never finish: on main, 800
half-sent requests were held open for more than 40 s each, and a byte every few seconds keeps one open for
ever (each byte cancels the keep-alive timer). Here a request's headers must be complete within
HEADER_TIMEOUT_S of the connection opening (or of the previous response): a total deadline, not an idle one.
"""
from __future__ import annotations

import asyncio
from typing import Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0


class HeaderDeadlineH11(H11Protocol):
    """Closes a connection whose request head is not complete HEADER_TIMEOUT_S after it could start."""

    header_timeout_s = HEADER_TIMEOUT_S
    _header_timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        waiting = self.cycle is None or self.cycle.response_complete  # no request in progress: its head is late
        if waiting and not self.transport.is_closing():
            self.transport.close()
