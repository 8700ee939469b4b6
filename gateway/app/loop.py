"""The event loop every hagw process runs on: uvloop when installed (the ``speed`` extra),
asyncio's own otherwise. The gateway is correct on either."""

from __future__ import annotations

import asyncio


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - the speed extra is not installed
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
