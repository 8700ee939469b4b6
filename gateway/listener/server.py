"""The traffic listener's server: it accepts connections (each a ClientConnection), stops
accepting, and drains what is in flight, in uvicorn's order.

With TLS the server accepts each connection itself and awaits its handshake, bounded by
``limits.client_header_timeout`` (a handshake that stalls is a head that never comes): a
failed one (plain HTTP on the TLS port, a client with only old protocols, no shared
cipher, no client certificate, a timeout) is counted by reason and closed, never raised."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from typing import Protocol

from gateway.listener.connection import ClientConnection, ServerState

log = logging.getLogger("hagw.listener")


#: accept() errors that mean "out of descriptors or memory": pause instead of spinning.
_PAUSE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_PAUSE = 1.0


#: How much longer asyncio's own handshake timeout is than ours (a backstop only).
_HANDSHAKE_BACKSTOP = 5.0


class ListenerTls(Protocol):
    """A listener's TLS, as the server needs it (gateway.tls.ServerTls)."""

    #: Handed to every accepted connection; its SNI callback picks the certificate.
    context: ssl.SSLContext

    def handshake_failed(self, exc: BaseException) -> str:
        """Count a failed handshake; its reason."""
        ...


def open_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket (SO_REUSEADDR), non-blocking."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class TrafficServer:
    def __init__(self, state: ServerState, *, tls: ListenerTls | None = None) -> None:
        self.state = state
        #: The listener's TLS: every accepted connection makes a handshake first.
        self.tls = tls
        self._server: asyncio.AbstractServer | None = None
        #: A socket shared with other processes, accepted on one connection at a time.
        self._shared: socket.socket | None = None
        #: The socket is this server's own (TLS in one process): closed when it stops.
        self._owned = False
        self._accepting = False
        self._pause: asyncio.TimerHandle | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    sock: socket.socket | None = None, backlog: int = 4096) -> None:
        """Listen on ``host:port``, or accept on ``sock``: a listening socket the supervisor
        opened and every worker shares (or one inherited on an upgrade).

        A shared socket is accepted on one connection per wake-up (nginx's ``multi_accept
        off``): every worker is woken, each takes one, and a busy worker, slower to come
        back, takes fewer. asyncio's and libuv's servers take every pending connection at
        once instead, so the first worker awake would take a whole burst of keep-alive
        connections and the load would stay uneven for as long as they live.

        With TLS the server always accepts itself (on its own socket in one process), so
        that it sees each handshake fail and counts why."""
        loop = asyncio.get_running_loop()
        state = self.state
        if sock is None and self.tls is not None:
            sock, self._owned = open_socket(host, port, backlog), True
        if sock is not None:
            sock.setblocking(False)
            self._shared = sock
            self._resume()
        else:
            self._server = await loop.create_server(lambda: ClientConnection(state), host,
                                                    port, backlog=backlog, reuse_address=True)

    def _resume(self) -> None:
        self._pause = None
        if self._shared is not None and not self._accepting:
            asyncio.get_running_loop().add_reader(self._shared.fileno(), self._accept_one)
            self._accepting = True

    def _stop_reading(self) -> None:
        if self._shared is not None and self._accepting:
            asyncio.get_running_loop().remove_reader(self._shared.fileno())
            self._accepting = False

    def _accept_one(self) -> None:
        assert self._shared is not None
        try:
            conn, _ = self._shared.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up
        except OSError as exc:
            if exc.errno not in _PAUSE_ERRNOS:
                raise
            log.error("accept failed (%s): not accepting for %gs", exc, ACCEPT_PAUSE)
            self._stop_reading()
            self._pause = asyncio.get_running_loop().call_later(ACCEPT_PAUSE, self._resume)
            return
        conn.setblocking(False)
        self.state.spawn(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        # Spawned as requests are, unguarded (ServerState.spawn): nothing may escape.
        try:
            await self._start(conn)
        except Exception:
            log.exception("a connection failed to start")
            conn.close()

    async def _start(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        state = self.state
        tls = self.tls
        if tls is None:
            try:
                await loop.connect_accepted_socket(lambda: ClientConnection(state), conn)
            except OSError as exc:
                log.debug("a connection failed before it started: %s", exc)
                conn.close()
            return
        timeout = state.limits.client_header_timeout
        try:
            async with asyncio.timeout(timeout):
                await loop.connect_accepted_socket(
                    lambda: ClientConnection(state), conn, ssl=tls.context,
                    ssl_handshake_timeout=timeout + _HANDSHAKE_BACKSTOP)
        except (OSError, EOFError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            reason = tls.handshake_failed(exc)
            log.debug("a TLS handshake failed (%s): %s", reason, exc)
            conn.close()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._shared is not None:
            return [self._shared.getsockname()[:2]]
        server = self._server
        if server is None:
            return []
        return [s.getsockname()[:2] for s in getattr(server, "sockets", ())]

    @property
    def serving(self) -> bool:
        if self._shared is not None:
            return self._accepting or self._pause is not None
        return self._server is not None and self._server.is_serving()

    def stop_accepting(self) -> None:
        """No new connections; those open go on (a shared socket stays open elsewhere)."""
        self._stop_reading()
        if self._pause is not None:
            self._pause.cancel()
            self._pause = None
        if self._owned and self._shared is not None:
            self._shared.close()
        self._shared = None
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float, *, idle_grace: float = 0.0) -> None:
        """Finish what is in flight: busy connections close after their answer (with
        ``Connection: close``); past ``timeout`` the rest are cut.

        Idle keep-alive connections close now, or after ``idle_grace`` when another process
        accepts new connections meanwhile (a worker replaced): a request on one is then
        answered, with ``Connection: close``. Closing an idle connection races with a client
        just sending on it, and a POST lost so cannot be retried (HAProxy's
        ``idle-close-on-response``)."""
        state = self.state
        state.closing = True
        if idle_grace > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(idle_grace, timeout)):
                    await state.empty.wait()
        for conn in list(state.connections):
            if conn.task is None and conn.transport is not None:
                conn.transport.close()
        if state.busy():
            try:
                async with asyncio.timeout(timeout):
                    await state.idle.wait()
            except TimeoutError:
                log.warning("%d request(s) still in flight after %gs: cutting them",
                            state.busy(), timeout)
        for conn in list(state.connections):
            if conn.transport is not None:
                conn.transport.abort()

    def __repr__(self) -> str:
        return f"<TrafficServer {self.addresses} {self.state!r}>"
