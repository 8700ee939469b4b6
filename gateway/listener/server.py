"""The traffic listener's server: it accepts connections (each a ClientConnection), stops
accepting, and drains what is in flight, in uvicorn's order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from gateway.listener.connection import ClientConnection, ServerState

log = logging.getLogger("hagw.listener")


class TrafficServer:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    sock: socket.socket | None = None, backlog: int = 4096,
                    ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen on ``host:port``, or accept on an already listening ``sock`` (one the
        supervisor opened, or one inherited on an upgrade)."""
        loop = asyncio.get_running_loop()
        state = self.state
        if sock is not None:
            self._server = await loop.create_server(lambda: ClientConnection(state), sock=sock,
                                                    backlog=backlog, ssl=ssl_context)
        else:
            self._server = await loop.create_server(lambda: ClientConnection(state), host,
                                                    port, backlog=backlog, reuse_address=True,
                                                    ssl=ssl_context)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        server = self._server
        if server is None:
            return []
        return [s.getsockname()[:2] for s in getattr(server, "sockets", ())]

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def stop_accepting(self) -> None:
        """No new connections; those open go on (a shared socket stays open elsewhere)."""
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
