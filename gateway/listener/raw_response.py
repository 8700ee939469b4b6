"""A complete answer sent as prebuilt bytes in a single write.

For the common case, a node answer that is already whole in memory, the head is
built straight from the node's raw headers (no str decoding, no CIMultiDict, no
header re-serialisation) and written with the body in one call. It is still an
aiohttp StreamResponse, so the server's keep-alive and access bookkeeping work
unchanged. Streaming answers keep using aiohttp's StreamResponse.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

#: Above this much unsent data the write waits for the client (flow control).
_DRAIN_ABOVE = 256 * 1024


class RawResponse(web.StreamResponse):
    def __init__(self, status: int, data: bytes, *, keep_alive: bool) -> None:
        super().__init__(status=status)
        self._data = data
        self._keep_alive = keep_alive

    @classmethod
    def already_sent(cls, status: int, length: int, *, keep_alive: bool) -> RawResponse:
        """For an answer the proxy streamed itself: aiohttp has nothing left to write."""
        response = cls(status, b"", keep_alive=keep_alive)
        response._eof_sent = True
        response._body_length = length
        return response

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        transport.write(self._data)
        self._eof_sent = True
        self._body_length = len(self._data)
        if transport.get_write_buffer_size() > _DRAIN_ABOVE:
            await request.writer.drain()
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None

    def __repr__(self) -> str:
        return f"<RawResponse {self.status} {len(self._data)} bytes>"
