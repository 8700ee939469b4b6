"""A naive aiohttp reverse proxy: the floor any proxy built on aiohttp starts from.

Round robin over the nodes, ``session.request`` and ``await resp.read()``, nothing
else: no health checks, retries, metrics, limits or header hygiene. Next to hagw it
shows what hagw's features and its lean upstream client cost or save on top of
aiohttp itself. It uses the same low-level ``web.Server`` and, when installed,
uvloop, as hagw does, so that the comparison is about the proxying.

Run: python naive_proxy.py --port 8081 http://127.0.0.1:9601 http://127.0.0.1:9602
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal

from aiohttp import ClientSession, web


async def serve(port: int, upstreams: list[str]) -> None:
    session = ClientSession(auto_decompress=False)
    nodes = itertools.cycle(upstreams)

    async def handle(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        async with session.request(request.method, next(nodes) + request.raw_path,
                                   data=body or None, allow_redirects=False) as resp:
            payload = await resp.read()
            return web.Response(status=resp.status, body=payload,
                                content_type=resp.content_type)

    runner = web.ServerRunner(web.Server(handle), handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("upstreams", nargs="+", help="node base URLs")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.port, args.upstreams))


if __name__ == "__main__":
    main()
