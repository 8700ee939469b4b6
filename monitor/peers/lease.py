"""Leadership: one instance of the fleet leads, by a lease in Redis with a fencing epoch.

Acquiring is one Lua script: if nobody holds ``{prefix}:leader``, ``INCR {prefix}:epoch``
and ``SET {prefix}:leader "<name>:<epoch>" NX PX <ttl>``. The leader renews with a script
that ``PEXPIRE``\\s the key only while it still holds its own token. Leader-only writes go
through ``LeaderElection.fenced`` (or a fenced script of ``records``/``queue``), which Redis
refuses once the token is not the current one (``monitor.peers.fence``).

The leader's own deadline is ``ttl - margin`` after the *start* of its last successful
renewal (or acquisition), on its own monotonic clock. Redis set the key's expiry when it
ran the command, which is later than that start, so the leader always steps down before
Redis can let the lease go to someone else, even when the answer came back slowly. The
margin covers clock-rate differences and the time to act on a step-down. A step-down
always ends the epoch: the old token is released, and leading again takes a new epoch.

``LeaseState`` is the synchronous machine (no I/O, an injectable clock); ``LeaderElection``
does the Redis calls around it.

Why not Redlock: it needs several independent Redis masters, and it still gives no
fencing token, so a paused leader can write after its lock expired (Kleppmann, "How to
do distributed locking"). One Redis (with Sentinel for failover) plus an epoch checked
server-side in the same atomic step as each write is simpler and is safe for what
matters here, the writes; it trades availability (no leader while Redis is down) for it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.typing import EncodableT

from gateway.clock import Clock
from gateway.events import Entry, Event, Publish
from monitor.peers.connection import PeerLink, PeersUnavailable
from monitor.peers.fence import Fence, FencedCommands, StaleLeader
from monitor.ports import Events, Spawn

log = logging.getLogger("hagw.peers.lease")

#: A leader steps down this share of the TTL before its lease could expire in Redis.
SAFETY_SHARE = 0.2
#: The loop never waits less than this between two rounds.
MIN_WAIT = 0.01

#: KEYS: lease, epoch. ARGV: name, ttl in ms. {1, epoch} when acquired, else
#: {0, holder, pttl}.
ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder then return {0, holder, redis.call('PTTL', KEYS[1])} end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. epoch, 'NX', 'PX', ARGV[2])
return {1, epoch}
"""

#: KEYS: lease. ARGV: token, ttl in ms. 1 when renewed, else the holder (or nil).
RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return holder
"""

#: KEYS: lease. ARGV: token. Deletes the lease only if it is still this token.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Role(enum.Enum):
    FOLLOWER = "follower"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class LeadershipChanged(Event):
    """This instance became the leader (with ``epoch``) or stepped down."""

    name: str
    leading: bool
    epoch: int | None
    reason: str

    def log_entry(self) -> Entry:
        if self.leading:
            return Entry("peers.leader", f"{self.name} leads the fleet (epoch {self.epoch})",
                         data={"epoch": self.epoch})
        return Entry("peers.follower", f"{self.name} stepped down: {self.reason}",
                     level=logging.WARNING, data={"reason": self.reason})


@dataclass(frozen=True, slots=True)
class LeaderStatus:
    """Plain data for status pages and metrics (``hagw_peers_leader{name}``, the epoch)."""

    #: This instance.
    name: str
    leading: bool
    #: The leader as last seen from here (this instance included), and its epoch.
    leader: str | None
    epoch: int | None
    #: Why this instance is not leading (empty while it leads).
    reason: str


class LeaseState:
    """Whether this instance leads, judged on its own clock. Synchronous, no I/O.

    Every transition is published as ``LeadershipChanged``, including the step-down that
    a mere look at ``leading()`` discovers once the deadline has passed."""

    def __init__(self, name: str, ttl: float, clock: Clock, *, margin: float | None = None,
                 publish: Publish | None = None) -> None:
        margin = ttl * SAFETY_SHARE if margin is None else margin
        if not 0 < margin < ttl:
            raise ValueError(f"expected a safety margin between 0 and the ttl ({ttl:g}s), "
                             f"found {margin:g}s")
        self.name = name
        self.ttl = ttl
        self.margin = margin
        self.clock = clock
        self.publish = publish
        self.role = Role.FOLLOWER
        self.epoch: int | None = None
        #: Monotonic instant by which a leader must have renewed, or step down.
        self.deadline: float | None = None
        self.reason = "not elected yet"
        #: Who holds the lease, as last seen (this instance included).
        self.holder: Fence | None = None
        #: A step-down left our token in Redis: release it before competing again.
        self.release_pending: Fence | None = None

    def __repr__(self) -> str:
        if self.role is Role.LEADER and self.deadline is not None:
            left = self.deadline - self.clock.monotonic()
            return f"<LeaseState {self.name} leader epoch={self.epoch} deadline_in={left:.3f}s>"
        holder = self.holder.token if self.holder else "nobody"
        return f"<LeaseState {self.name} follower of {holder} ({self.reason})>"

    # -- reading ---------------------------------------------------------------------------

    def leading(self) -> bool:
        self.expire()
        return self.role is Role.LEADER

    def fence(self) -> Fence:
        """The token for a leader-only write; StaleLeader when not leading."""
        if not self.leading() or self.epoch is None:
            raise StaleLeader(f"{self.name} is not the leader ({self.reason})")
        return Fence(self.name, self.epoch)

    def begin(self) -> float:
        """The instant a lease request starts: what a successful answer is measured from."""
        return self.clock.monotonic()

    def until_deadline(self) -> float | None:
        if self.role is not Role.LEADER or self.deadline is None:
            return None
        return self.deadline - self.clock.monotonic()

    # -- transitions -----------------------------------------------------------------------

    def acquired(self, epoch: int, started: float) -> None:
        """Redis granted the lease at ``epoch`` to a request that started at ``started``."""
        self.role, self.epoch = Role.LEADER, epoch
        self.deadline = started + self.ttl - self.margin
        self.holder, self.reason = Fence(self.name, epoch), ""
        self._changed(f"acquired the lease at epoch {epoch}")
        self.expire()  # an answer that came too late to act on

    def renewed(self, started: float) -> None:
        """A renewal that started at ``started`` succeeded. Ignored after a step-down:
        that epoch is over (it is released, and leading again takes a new one)."""
        if self.role is not Role.LEADER or self.deadline is None:
            return
        self.deadline = max(self.deadline, started + self.ttl - self.margin)
        self.expire()

    def renew_failed(self, reason: str) -> None:
        """No answer: still the leader until the deadline, which ``expire`` enforces."""
        if self.role is Role.LEADER:
            log.warning("%s could not renew the lease (%s); %.3fs left", self.name, reason,
                        self.until_deadline() or 0.0)

    def lost(self, reason: str, holder: Fence | None = None) -> None:
        """Redis says the lease is not ours (someone else's, or expired)."""
        self.holder = holder
        self._step_down(reason, release=False)

    def observed(self, holder: Fence | None) -> None:
        """A follower saw who holds the lease."""
        self.holder = holder
        if self.role is Role.LEADER:
            return
        if holder is None:
            self.reason = "nobody holds the lease"
        elif holder.name != self.name:
            self.reason = f"{holder.name} leads (epoch {holder.epoch})"
        else:  # never adopted: another process may be running under this name
            self.reason = (f"the lease {holder.token} carries this instance's name (an "
                           "earlier run, or a duplicate name); waiting for it to run out")

    def unreachable(self, reason: str) -> None:
        """A follower could not reach Redis: it cannot lead."""
        if self.role is Role.FOLLOWER:
            self.reason = f"Redis is unreachable ({reason})"

    def released(self) -> None:
        self.release_pending = None

    def expire(self) -> None:
        """Step down once the deadline passed without a renewal."""
        if (self.role is Role.LEADER and self.deadline is not None
                and self.clock.monotonic() >= self.deadline):
            self._step_down("the lease was not renewed in time", release=True)

    def resign(self) -> None:
        self._step_down("resigned", release=True)

    def _step_down(self, reason: str, *, release: bool) -> None:
        if self.role is not Role.LEADER:
            return
        if release and self.epoch is not None:
            self.release_pending = Fence(self.name, self.epoch)
        self.role, self.epoch, self.deadline = Role.FOLLOWER, None, None
        self.reason = reason
        if self.holder is not None and self.holder.name == self.name:
            self.holder = None
        self._changed(reason)

    def _changed(self, reason: str) -> None:
        leading = self.role is Role.LEADER
        if leading:
            log.info("%s leads the fleet (epoch %s)", self.name, self.epoch)
        else:
            log.warning("%s stepped down: %s", self.name, reason)
        if self.publish is not None:
            self.publish(LeadershipChanged(self.name, leading, self.epoch, reason))


class LeaderElection:
    """Competes for the lease in Redis and keeps ``LeaseState`` in step with the answers.

    ``start()`` runs the loop (acquire or renew every ``renew_every``; a follower also
    tries again as soon as the holder's lease would run out); ``step()`` is one round, for
    tests. ``close()`` stops the loop and releases the lease, so a peer takes over
    without waiting for the TTL."""

    def __init__(self, link: PeerLink, *, clock: Clock, spawn: Spawn,
                 events: Events | None = None, margin: float | None = None) -> None:
        config = link.config
        self.link = link
        self.config = config
        self.spawn = spawn
        self.state = LeaseState(config.name, config.lease_ttl, clock, margin=margin,
                                publish=events.publish if events is not None else None)
        redis = link.redis
        self._acquire = redis.register_script(ACQUIRE)
        self._renew = redis.register_script(RENEW)
        self._release = redis.register_script(RELEASE)
        self._fenced = FencedCommands(link)
        self._ttl_ms = max(1, round(config.lease_ttl * 1000))
        self._holder_left: float | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<LeaderElection {self.state!r}>"

    # -- what others read ------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.state.leading()

    @property
    def epoch(self) -> int | None:
        """This instance's epoch while it leads."""
        return self.state.epoch if self.leading else None

    @property
    def leader(self) -> str | None:
        """The leader as last seen from here."""
        self.state.expire()
        return self.state.holder.name if self.state.holder else None

    def status(self) -> LeaderStatus:
        leading = self.leading
        holder = self.state.holder
        return LeaderStatus(self.state.name, leading, holder.name if holder else None,
                            holder.epoch if holder else None, self.state.reason)

    def fence(self) -> Fence:
        """The token for a leader-only write (StaleLeader when not leading)."""
        return self.state.fence()

    async def fenced(self, commands: Sequence[Sequence[EncodableT]],
                     touched: Sequence[str] = ()) -> list[Any]:
        """Run ``commands`` atomically, only while Redis still names this instance the
        leader at its epoch. Raises StaleLeader (and steps down) otherwise, and
        PeersUnavailable when Redis does not answer."""
        fence = self.fence()
        try:
            return await self._fenced(fence, commands, touched)
        except StaleLeader as exc:
            self.state.lost(f"a leader's write was refused: {exc}")
            raise

    # -- the loop --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = self.spawn(self._run(), name="peers leader election")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.resign()

    async def resign(self) -> None:
        """Give the lease up now (if held), so that a peer need not wait for the TTL."""
        self.state.resign()
        await self._release_pending()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await self.step()
            except Exception:
                log.exception("leader election: a round failed; trying again")
            await asyncio.sleep(self._next_wait(loop.time() - began))

    def _next_wait(self, elapsed: float = 0.0) -> float:
        """Rounds start every ``renew_every`` (however long the last one took), sooner
        to step down at the deadline or to take a lease that is running out."""
        wait = self.config.renew_interval - elapsed
        left = self.state.until_deadline()
        if left is not None:
            wait = min(wait, left)  # wake at the deadline to step down on time
        elif self._holder_left is not None:
            wait = min(wait, self._holder_left + MIN_WAIT)  # try as the lease runs out
        return max(MIN_WAIT, wait)

    async def step(self) -> None:
        """One round: release a token left by a step-down, then renew or acquire."""
        self.state.expire()
        await self._release_pending()
        if self.state.role is Role.LEADER:
            await self._renew_once()
        else:
            await self._acquire_once()

    async def _release_pending(self) -> None:
        token = self.state.release_pending
        if token is None:
            return
        try:
            async with self.link.io("releasing the leader lease") as redis:
                await self._release(keys=[self.link.keys.leader], args=[token.token],
                                    client=redis)
        except PeersUnavailable:
            return  # the key expires by itself; try again next round
        self.state.released()

    async def _renew_once(self) -> None:
        try:
            fence = self.state.fence()
        except StaleLeader:
            return  # the deadline passed just now: stepped down
        started = self.state.begin()
        left = self.state.until_deadline() or 0.0
        try:
            async with asyncio.timeout(max(MIN_WAIT, left)):
                async with self.link.io("renewing the leader lease") as redis:
                    reply = await self._renew(keys=[self.link.keys.leader],
                                              args=[fence.token, self._ttl_ms], client=redis)
        except PeersUnavailable as exc:
            self.state.renew_failed(str(exc))
            return
        except TimeoutError:
            self.state.expire()  # the deadline came while waiting for the answer
            return
        if reply == 1:
            self.state.renewed(started)
        else:
            holder = Fence.parse(reply)
            self.state.lost("the lease is not ours any more (held by "
                            f"{holder.token if holder else 'nobody'})", holder)

    async def _acquire_once(self) -> None:
        keys = self.link.keys
        config = self.config
        started = self.state.begin()
        try:
            async with self.link.io("acquiring the leader lease") as redis:
                pipe = redis.pipeline(transaction=False)
                await self._acquire(keys=[keys.leader, keys.epoch],
                                    args=[self.state.name, self._ttl_ms], client=pipe)
                if config.write_replicas:
                    pipe.wait(config.write_replicas, max(1, round(config.wait_timeout * 1000)))
                replies = await pipe.execute()
        except PeersUnavailable as exc:
            self.state.unreachable(str(exc))
            self._holder_left = None
            return
        won = replies[0]
        if int(won[0]) != 1:
            self.state.observed(Fence.parse(won[1]))
            self._holder_left = max(0, int(won[2])) / 1000
            return
        self._holder_left = None
        epoch = int(won[1])
        if config.write_replicas and int(replies[1]) < config.write_replicas:
            # Granted by the master alone: a failover could lose the lease and repeat the
            # epoch. Give it back rather than lead on it.
            self.state.release_pending = Fence(self.state.name, epoch)
            self.state.reason = (f"the lease reached {int(replies[1])} of "
                                 f"{config.write_replicas} replicas in time")
            await self._release_pending()
            return
        self.state.acquired(epoch, started)
