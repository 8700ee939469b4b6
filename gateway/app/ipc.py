"""Messages between the supervisor and its workers: length-prefixed JSON frames over a
Unix socket pair (one per worker). Each side sends small dicts with a ``type``."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

_LENGTH = struct.Struct("!I")
#: No message is this large; a longer length means a broken stream.
MAX_FRAME = 64 * 1024 * 1024


class ChannelClosed(ConnectionError):
    pass


class Channel:
    """One end of a supervisor-worker link."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.closed = False

    @classmethod
    async def over(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        """Queue ``message`` (it leaves with the event loop's next write)."""
        if self.closed or self._writer.is_closing():
            raise ChannelClosed("the other side is gone")
        data = json.dumps(message, separators=(",", ":")).encode()
        self._writer.write(_LENGTH.pack(len(data)) + data)

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise ChannelClosed(str(exc)) from None

    async def recv(self) -> dict[str, Any] | None:
        """The next message, or None once the other side closed."""
        try:
            head = await self._reader.readexactly(_LENGTH.size)
            (length,) = _LENGTH.unpack(head)
            if length > MAX_FRAME:
                raise ChannelClosed(f"a frame of {length} bytes")
            body = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed = True
            return None
        message: dict[str, Any] = json.loads(body)
        return message

    def close(self) -> None:
        self.closed = True
        self._writer.close()

    def __repr__(self) -> str:
        return f"<Channel {'closed' if self.closed else 'open'}>"
