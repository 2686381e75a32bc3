"""The network side of ``anomem serve``: the listening socket, and the HTTP protocol's
guards against clients that hold the server's resources without finishing a request.

uvicorn's own h11 protocol waits for a request without end, accepts connections until
the process runs out of file descriptors, and logs a traceback for each failed accept.
:func:`guarded_protocol` returns a subclass of it that adds:

* a **request timeout**: a request must arrive whole (head and body) within
  ``request_timeout`` seconds of its connection opening or of the previous answer, or it
  gets 408 ``{"error": ...}`` and the connection is closed;
* a **connection cap** below the descriptor limit: when connections pass
  ``max_connections``, the oldest ones still sending an unfinished request are answered
  503 and closed, so a flood of slow clients never fills the descriptor table and a new
  client (``GET /health``) is served. The check runs once the loop has read what the new
  connections sent, once per batch of accepts: a connection whose whole request has
  arrived is never dropped, and a batch costs one pass over the connections, not one per
  connection;
* a **shutdown deadline**: after SIGTERM, a request still arriving gets
  ``shutdown_timeout`` seconds more, then 503, so the server never waits on a client
  that trickles its body (requests being scored are answered).

:class:`ThrottledErrors` logs the event loop's errors (a failed ``accept()`` when
descriptors run out) once per interval with a count, instead of once per event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from anomem.errors import DataError

log = logging.getLogger("anomem.serve")
FD_RESERVE = 64  # descriptors kept free of client connections: the model, threads, spooled uploads, logs
# Connections accepted per turn of the event loop. asyncio accepts up to its server's
# "backlog" at a time (uvicorn's: 2048), and on EMFILE it goes on trying the rest of that
# count, scheduling a retry for each failure: under a flood at the descriptor limit those
# calls and timers took most of the loop's time, and GET /health waited seconds.
# With 8 (at most about 3 batches are accepted before their connections are counted), the
# cap holds the descriptors below the limit.
ACCEPT_BATCH = 8
LISTEN_BACKLOG = 1024  # connections the kernel queues before they are accepted
_PHRASES = {408: "Request Timeout", 503: "Service Unavailable"}


def default_max_connections() -> int:
    """Connections held at once by default: the descriptor soft limit less :data:`FD_RESERVE`
    (at least 8)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(8, min(soft - FD_RESERVE, 1 << 16))


def guarded_protocol(request_timeout: float, shutdown_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the timeouts and the connection cap of this module."""

    over_cap: list[asyncio.TimerHandle] = []  # the pending check, when one is

    def _enforce_cap(connections: set, heard_only: bool = False) -> None:
        """Close the oldest unfinished requests until ``max_connections`` are held (503 each).

        ``heard_only``: close only connections that sent part of a request and stopped. A
        connection not read yet may hold a whole request in the kernel's buffer (a GET
        /health accepted in the same turn as a flood): closing it would reset it (unread
        data turns the close into a TCP RST), so it waits for the check one turn later,
        after the loop has read it."""
        if not heard_only:
            for handle in over_cap:
                handle.cancel()
            over_cap.clear()
        excess = len(connections) - max_connections
        if excess <= 0:
            return
        # first those that sent part of a request and stopped, oldest first; then those not read yet
        waiting = sorted((c for c in connections if isinstance(c, Guarded) and c._unfinished()
                          and (c._heard or not heard_only)), key=lambda c: (not c._heard, c._since))
        for c in waiting[:excess]:
            c._refuse(503, f"the server holds {max_connections} connections (its limit) and this request was the "
                           "slowest to arrive; send it again")

    class Guarded(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._timer: asyncio.TimerHandle | None = None
            self._since, self._heard = self.loop.time(), False  # _heard: something of a request was read
            super().connection_made(transport)
            self._arm(request_timeout, "not received whole within {:g} s (--request-timeout)")
            if len(self.connections) > max_connections + FD_RESERVE // 4:  # descriptors first: at once
                _enforce_cap(self.connections, heard_only=True)
            if len(self.connections) > max_connections and not over_cap:
                # Decided once the loop has read what the new connections sent: a batch of
                # accepts is then checked in one pass, and a client whose whole request had
                # arrived (a GET /health) is never taken for a slow one.
                over_cap.append(self.loop.call_later(0, _enforce_cap, self.connections))

        def _unfinished(self) -> bool:
            """The client is still sending a request (nothing of the answer is out yet)."""
            if self.transport.is_closing() or self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED,
                                                                         h11.ERROR):
                return False
            return self.cycle is None or self.cycle.response_complete or not self.cycle.response_started

        def _arm(self, seconds: float, why: str) -> None:
            self._cancel()
            self._since = self.loop.time()
            self._timer = self.loop.call_later(seconds, self._expire, seconds, why)

        def _cancel(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self, seconds: float, why: str) -> None:
            self._timer = None
            if self._unfinished():
                self._refuse(408 if "request-timeout" in why else 503, "request " + why.format(seconds))

        def _refuse(self, status: int, message: str) -> None:
            """Answer ``status`` with a JSON reason (when no answer has started) and close."""
            self._cancel()
            cycle = self.cycle
            started = cycle is not None and cycle.response_started and not cycle.response_complete
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the application sees http.disconnect; what it sends is dropped
                cycle.message_event.set()
            if not started:
                body = json.dumps({"error": message}).encode()
                self.transport.write(f"HTTP/1.1 {status} {_PHRASES[status]}\r\ncontent-type: application/json\r\n"
                                     f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            self._heard = True
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            if not self._unfinished():
                self._cancel()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():  # kept alive: the next request has the same time
                self._arm(request_timeout, "not received whole within {:g} s (--request-timeout)")

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            super().connection_lost(exc)

        def shutdown(self) -> None:
            super().shutdown()
            if self._unfinished() and not self.transport.is_closing():
                left = request_timeout if self._timer is None else max(0.0, self._timer.when() - self.loop.time())
                if shutdown_timeout < left:
                    self._arm(shutdown_timeout, "still arriving {:g} s after the server began to stop "
                                                "(--shutdown-timeout)")

    return Guarded


class ThrottledErrors:
    """An event-loop exception handler that logs each kind of error (its message) at most
    once per ``interval`` seconds, with how many were left out since the last line."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] | None = None) -> None:
        self.interval, self.clock = interval, clock
        self._last: dict[str, float] = {}
        self._missed: dict[str, int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "event loop error"))
        exc = context.get("exception")
        now = (self.clock or loop.time)()
        if message in self._last and now - self._last[message] < self.interval:
            self._missed[message] = self._missed.get(message, 0) + 1
            return
        missed = self._missed.pop(message, 0)
        self._last[message] = now
        more = f" ({missed} more in the last {self.interval:g} s)" if missed else ""
        what = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        log.error("%s%s%s", message, what, more)


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (0: a free port), or a DataError saying why not.

    Made with proto ``IPPROTO_TCP``, as asyncio's own servers are: only then does asyncio
    turn Nagle's algorithm off on each connection; without it a kept-alive client waits for
    its delayed ACK on every answer (docs/performance.md, "Serving").
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except (OSError, OverflowError) as e:
        sock.close()
        raise DataError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    return sock


__all__ = ["ACCEPT_BATCH", "FD_RESERVE", "LISTEN_BACKLOG", "ThrottledErrors", "default_max_connections", "guarded_protocol", "listen_socket"]
