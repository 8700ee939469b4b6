"""Graceful shutdown, in uvicorn's order, as logged and timed steps: stop being ready,
stop accepting, drain what is in flight, close."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from aiohttp import web

from gateway.app.dataplane import EjectionTimer
from gateway.config import GatewayConfig
from gateway.events import EventBus, News

log = logging.getLogger("hagw")


class Running(Protocol):
    config: GatewayConfig
    ready: bool
    bus: EventBus
    ejections: EjectionTimer
    admin_runner: web.AppRunner | None

    async def stop_traffic(self) -> None:
        """Stop accepting, let what is in flight finish (up to drain_timeout), close."""


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
    step(f"stop accepting connections; draining in-flight requests (up to "
         f"{cfg.drain_timeout:g}s)")
    await gw.stop_traffic()
    step("closing")
    gw.ejections.cancel()
    assert gw.admin_runner is not None
    await gw.admin_runner.cleanup()
    step("stopped")
