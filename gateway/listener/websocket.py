"""WebSocket upgrades, proxied both ways.

A WebSocket outlives any request, so drains cannot wait for it: when its node
drains (or the gateway shuts down) it gets a grace period, then both sides are
closed with 1001 (going away) so the client reconnects to another node.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import aiohttp
from aiohttp import WSMsgType, web

from gateway.cluster import Cluster
from gateway.errors import error_response
from gateway.headers import HOP_BY_HOP
from gateway.node import Node

log = logging.getLogger("hagw.websocket")

GOING_AWAY = aiohttp.WSCloseCode.GOING_AWAY
_SKIP = HOP_BY_HOP | {b"host", b"sec-websocket-key", b"sec-websocket-version",
                      b"sec-websocket-extensions", b"content-length"}


class WebSocketProxy:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._session: aiohttp.ClientSession | None = None
        self.open: dict[Node, set[web.WebSocketResponse]] = defaultdict(set)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def close(self) -> None:
        await self.close_all("gateway shutting down", grace=0)
        if self._session is not None:
            await self._session.close()

    def __repr__(self) -> str:
        return f"<WebSocketProxy open={sum(len(s) for s in self.open.values())}>"

    async def proxy(self, request: web.BaseRequest, request_id: str) -> web.StreamResponse:
        assert self._session is not None
        node = self.cluster.pick()
        if node is None:
            return error_response(503, "no node is available", request_id, retry_after=1)
        url = f"ws://{node.config.url.host}:{node.config.url.port}{request.raw_path}"
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.raw_headers
                   if k.lower() not in _SKIP}
        headers["X-Request-Id"] = request_id
        headers["X-Forwarded-For"] = request.remote or ""
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                     if p.strip()]
        node.acquire()
        try:
            try:
                upstream = await self._session.ws_connect(
                    url, headers=headers, protocols=protocols, autoclose=False,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
            except (aiohttp.ClientError, OSError) as exc:
                return error_response(502, f"WebSocket upgrade to {node.name} failed: {exc}",
                                      request_id)
            client = web.WebSocketResponse(protocols=protocols, autoclose=False)
            await client.prepare(request)
        finally:
            node.release()
        self.open[node].add(client)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pump(client, upstream))
                tg.create_task(_pump(upstream, client))
        finally:
            self.open[node].discard(client)
            await upstream.close()
            await client.close()
        return client

    async def close_node(self, node: Node, grace: float) -> None:
        """Close the node's WebSockets with 1001 once ``grace`` has passed."""
        if not self.open.get(node):
            return
        await asyncio.sleep(grace)
        for ws in list(self.open.get(node, ())):
            await ws.close(code=GOING_AWAY, message=b"node draining")

    async def close_all(self, why: str, grace: float) -> None:
        if not any(self.open.values()):
            return
        if grace:
            await asyncio.sleep(grace)
        for sockets in list(self.open.values()):
            for ws in list(sockets):
                await ws.close(code=GOING_AWAY, message=why.encode()[:120])


async def _pump(source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    async for msg in source:
        if msg.type is WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type is WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type is WSMsgType.PONG:
            await sink.pong(msg.data)
        else:
            break
    code = source.close_code or GOING_AWAY
    if not sink.closed:
        await sink.close(code=code)
