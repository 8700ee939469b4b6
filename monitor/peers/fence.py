"""Fencing: a leader's writes land only while Redis still names it the leader.

A lease cannot stop a leader that was paused (a long GC, SIGSTOP, a stalled disk) past
its lease from writing when it wakes: it still believes it leads. So every leader-only
write is a Lua script that first compares, in the same atomic step, the lease key with
``"<name>:<epoch>"`` and the epoch key with ``<epoch>``. A mismatch is an error reply
(raised as ``StaleLeader``) and nothing is written. Each new leader increments the
epoch, so a stale leader's token never matches again; comparing the lease too refuses
a write after the lease merely expired, and keeps two leaders apart even if a failover
to a lagging replica made an epoch number repeat (their names differ).

This is Martin Kleppmann's fencing token, checked by the store itself rather than by
each resource, which Redis can do because a script runs alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError
from redis.typing import EncodableT

from monitor.peers.connection import PeerLink
from monitor.peers.keys import Keys
from monitor.ports import WriteRefused

STALE = "STALE"

#: A Lua function for the top of a fenced script: ``fence_refusal(lease_key, epoch_key,
#: token, epoch)`` is nil when the write may go ahead (or the token is empty: an
#: unfenced write), else the error reply to return.
CHECK = """
local function fence_refusal(lease_key, epoch_key, token, epoch)
  if token == '' then return nil end
  local holder = redis.call('GET', lease_key)
  local current = redis.call('GET', epoch_key)
  if holder == token and current == epoch then return nil end
  return redis.error_reply('STALE the lease is held by ' .. (holder or 'nobody')
    .. ' at epoch ' .. (current or 'none') .. ', not by ' .. token)
end
"""

#: KEYS[1], KEYS[2]: the lease and the epoch; KEYS[3...]: the keys the commands touch.
#: ARGV[1], ARGV[2]: the token and the epoch; then each command as its argument count
#: followed by its arguments. Returns the commands' replies, in order.
COMMANDS = CHECK + """
local refusal = fence_refusal(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if refusal then return refusal end
local replies = {}
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local command = {}
  for j = 1, n do command[j] = ARGV[i + j] end
  replies[#replies + 1] = redis.call(unpack(command))
  i = i + n + 1
end
return replies
"""


class StaleLeader(WriteRefused):
    """A leader-only write was refused: this instance does not hold the lease (any more)."""


@dataclass(frozen=True, slots=True)
class Fence:
    """A leader's token: its name and the epoch its lease was granted with."""

    name: str
    epoch: int

    @property
    def token(self) -> str:
        return f"{self.name}:{self.epoch}"

    @staticmethod
    def parse(value: bytes | str | None) -> Fence | None:
        """The lease key's value back into a Fence (None for no or a foreign value)."""
        if value is None:
            return None
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        name, sep, epoch = text.rpartition(":")
        if not sep or not name or not epoch.isdigit():
            return None
        return Fence(name, int(epoch))

    def __str__(self) -> str:
        return self.token


def fence_args(fence: Fence | None) -> list[EncodableT]:
    """ARGV[1], ARGV[2] of a fenced script: the token and epoch, or empty (unfenced)."""
    return ["", ""] if fence is None else [fence.token, str(fence.epoch)]


def fence_keys(keys: Keys) -> list[str]:
    return [keys.leader, keys.epoch]


def stale(exc: ResponseError) -> StaleLeader | None:
    """The StaleLeader a fenced script's refusal stands for, or None for other errors."""
    text = str(exc)
    if text.startswith(STALE):
        return StaleLeader(text[len(STALE):].strip())
    return None


class FencedCommands:
    """Any Redis commands, run atomically only while ``fence`` holds the lease."""

    def __init__(self, link: PeerLink) -> None:
        self.link = link
        self.keys = link.keys
        self._script = link.redis.register_script(COMMANDS)

    def __repr__(self) -> str:
        return f"<FencedCommands {self.keys.prefix}>"

    async def __call__(self, fence: Fence, commands: Sequence[Sequence[EncodableT]],
                       touched: Sequence[str] = ()) -> list[Any]:
        """``touched``: the keys the commands use (declared to Redis). A command that
        fails half-way leaves the earlier ones applied, as any Lua script does."""
        args: list[EncodableT] = fence_args(fence)
        for command in commands:
            args.append(len(command))
            args.extend(command)
        try:
            async with self.link.io("a leader's write") as redis:
                replies = await self._script(keys=[*fence_keys(self.keys), *touched],
                                             args=args, client=redis)
        except ResponseError as exc:
            refused = stale(exc)
            if refused is not None:
                raise refused from None
            raise
        return list(replies)
