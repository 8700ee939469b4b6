"""Graceful shutdown, in uvicorn's order, as logged and timed steps: stop being ready,
stop accepting, drain what is in flight, close."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from aiohttp import web

from gateway.app.reactions import EjectionTimer
from gateway.config import GatewayConfig
from gateway.events import EventBus, News
from gateway.listener import TrafficServer, WebSocketTunnels

log = logging.getLogger("hagw")


class Running(Protocol):
    config: GatewayConfig
    ready: bool
    bus: EventBus
    websockets: WebSocketTunnels
    ejections: EjectionTimer
    traffic_server: TrafficServer | None
    admin_runner: web.AppRunner | None


async def shutdown(gw: Running) -> None:
    cfg = gw.config.shutdown
    began = time.monotonic()

    def step(what: str) -> None:
        log.info("shutdown: %s (t=%.2fs)", what, time.monotonic() - began)

    step(f"reporting not-ready for {cfg.grace:g}s")
    gw.ready = False
    gw.bus.publish(News("gateway.stopping", f"not ready; grace {cfg.grace:g}s"))
    if cfg.grace > 0:
        await asyncio.sleep(cfg.grace)
    server = gw.traffic_server
    if server is not None:
        step("stop accepting connections")
        server.stop_accepting()
        step(f"draining in-flight requests (up to {cfg.drain_timeout:g}s)")
        await gw.websockets.close_all("gateway shutting down", grace=0)
        await server.drain(cfg.drain_timeout)  # idle keep-alives close at once
        gw.traffic_server = None
    step("closing")
    gw.ejections.cancel()
    assert gw.admin_runner is not None
    await gw.admin_runner.cleanup()
    step("stopped")
