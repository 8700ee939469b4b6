"""Replaying queued writes to the nodes, in arrival order.

Each entry is marked ``replaying`` on disk before it is sent, so after a crash it
is sent again with the same ``Idempotency-Key`` (the client's own, or one made for
it, never its ticket) and the backend can drop the duplicate. The node gets the
request id the write was queued with; logs and events name an entry by it, never by
its ticket. Transient failures (no answer, 502,
503, 504) are retried with backoff by tenacity; after ``max_attempts`` an entry
ends ``failed``. A fleet with no serving node pauses the replay without using
attempts: nothing is dropped because the nodes are still coming back.

With ``replay_pipeline`` above 1, a batch goes to one node down one connection,
pipelined (gateway.upstream.pipeline), at most that many requests ahead of the answers:
the node reads them in order, so it sees them in arrival order, without a round trip
each. Once the node refuses one (502, 503, 504) no more are sent; that entry, and any
sent that got no answer, is then tried on its own with its retries (the pipelined try
counted as its first), before the rest of the batch goes, pipelined again. The entries
already pipelined behind a refused one that the node did answer were applied, so a
refused entry lands after them: at most ``replay_pipeline - 1`` places late.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from gateway.config.schema import MaintenanceConfig
from gateway.events import Event
from gateway.headers import new_request_id
from gateway.node import Node, NodeChanged
from gateway.queue.store import DONE, FAILED, Entry, QueueStore
from gateway.router import NoNode, TryTimeout
from gateway.upstream import UpstreamError
from monitor.ports import ClusterView, Events, Forwarder, Spawn

log = logging.getLogger("hagw.replay")
TRANSIENT_STATUSES = frozenset({502, 503, 504})
#: Entries marked, replayed and recorded together (two store writes per batch).
REPLAY_BATCH = 256


class Transient(Exception):
    pass


def public_error(exc: Exception) -> str:
    """Why a try failed, as the write's client may read it (at its ticket URL): the kind of
    failure, never a node's name or address."""
    if isinstance(exc, TryTimeout):
        return f"TryTimeout: {exc.public}"
    if isinstance(exc, NoNode):
        return "NoNode: no node is available"
    if isinstance(exc, UpstreamError) and not exc.sent:
        return f"{type(exc).__name__}: no node could be reached"
    if isinstance(exc, TimeoutError):
        return "TimeoutError: no answer from a node in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(frozen=True, slots=True)
class ReplayFinished(Event):
    """A queued write was replayed (``entry.status`` done) or gave up (failed)."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class ReplayIdle(Event):
    """A replay run emptied the queue."""


def runs(batch: list[Entry]) -> list[list[Entry]]:
    """The batch cut into pipelines: consecutive entries planned for the same node, in
    arrival order."""
    out: list[list[Entry]] = []
    for entry in batch:
        last = out[-1] if out else None
        if last is not None and last[0].node == entry.node:
            last.append(entry)
        else:
            out.append([entry])
    return out


class Replayer:
    def __init__(self, store: QueueStore, forwarder: Forwarder, cluster: ClusterView,
                 config: MaintenanceConfig, *, spawn: Spawn, events: Events) -> None:
        self.store = store
        self.forwarder = forwarder
        self.cluster = cluster
        self.config = config
        self.spawn = spawn
        self.events = events
        self._task: asyncio.Task[None] | None = None
        self._waiters: dict[str, list[asyncio.Future[Entry]]] = {}
        self._recent: deque[float] = deque(maxlen=10_000)
        self._changed = asyncio.Event()
        #: ensure_running() was called while running: look again before stopping.
        self._again = False
        events.subscribe(NodeChanged, lambda _event: self._changed.set())

    def __repr__(self) -> str:
        return f"<Replayer running={self.running} waiting={len(self._waiters)}>"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def ensure_running(self) -> None:
        """Run the replay; if it runs already, it looks at the queue once more before it
        calls itself idle (so a write committed just now, on any instance, is not left)."""
        if not self.running:
            self._again = False
            self._task = self.spawn(self._run(), name="queue replay")
        else:
            self._again = True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def rate(self, window: float = 10.0) -> float:
        """Entries finished per second over the last ``window`` seconds."""
        cutoff = time.monotonic() - window
        return sum(1 for t in self._recent if t >= cutoff) / window

    async def wait_result(self, ticket: str, timeout: float) -> Entry | None:
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(ticket, []).append(future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(ticket, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(ticket, None)

    async def _run(self) -> None:
        config = self.config
        while True:
            batch = await self.store.next_batch(REPLAY_BATCH, time.time())
            if not batch:
                if self._again:
                    self._again = False
                    continue
                break
            await self._wait_for_a_node()
            # One write marks the whole batch as being replayed, each entry with the node
            # it is planned for, before any of it is sent; one write records the results.
            # A crash in between re-sends the batch with the same keys, to the same nodes.
            depth = config.replay_pipeline if config.replay_concurrency == 1 else 1
            self._plan_all(batch, len(batch) if depth > 1 else 1)
            await self.store.mark_replaying_many(batch)
            finished: list[Entry] = []
            if depth > 1:
                for run in runs(batch):
                    await self._pipeline(run, finished, depth)
            elif config.replay_concurrency == 1:
                for entry in batch:
                    await self._replay(entry, finished)  # strictly one after another
            else:
                limit = asyncio.Semaphore(config.replay_concurrency)

                async def one(entry: Entry, limit: asyncio.Semaphore = limit,
                              finished: list[Entry] = finished) -> None:
                    async with limit:
                        await self._replay(entry, finished)

                # The semaphore is fair (FIFO), so entries are dispatched in arrival order.
                async with asyncio.TaskGroup() as tg:
                    for entry in batch:
                        tg.create_task(one(entry))
            await self.store.finish_many(finished)
            for entry in finished:
                self.events.publish(ReplayFinished(entry))
        self.events.publish(ReplayIdle())

    def _plan_all(self, batch: list[Entry], per_pick: int) -> None:
        """The node each entry goes to first: where it went before a crash, if that node
        serves (a per-node key store then drops the repeat), else the balancer's pick, one
        pick for every ``per_pick`` entries (a pipelined batch goes to one node)."""
        cluster = self.cluster
        picked: str | None = None
        for i, entry in enumerate(batch):
            if i % per_pick == 0:
                picked = None
            if entry.node is not None:
                node = cluster.get(entry.node)
                if node is not None and node.serving:
                    continue
            if picked is None:
                pick = cluster.pick()
                picked = pick.name if pick is not None else None
            entry.node = picked

    async def _pipeline(self, run: list[Entry], finished: list[Entry], window: int) -> None:
        """Entries planned for one node, pipelined (at most ``window`` ahead of the
        answers); each one the node refused or left unanswered is then tried on its own,
        in order, its pipelined try counted."""
        node = run[0].node
        if len(run) == 1 or node is None:
            for entry in run:
                await self._replay(entry, finished)
            return
        await self._wait_for_a_node()
        requests = [(e.method, e.target, self._headers(e), e.body,
                     e.request_id or new_request_id()) for e in run]
        try:
            answers, sent, reason = await self.forwarder.pipeline(
                node, requests, window, stop_on=TRANSIENT_STATUSES)
        except Exception as exc:
            if isinstance(exc, UpstreamError | NoNode):
                # Nothing was sent: each entry goes on its own, through the router, which
                # picks another node; the batch mark's count is for that first try.
                log.info("pipelined replay to %s: %s: %s; the entries go one by one", node,
                         type(exc).__name__, exc)
            else:  # a bug must not stop the replay (an entry failing so stays queued)
                log.exception("pipelined replay to %s failed unexpectedly; the entries go "
                              "one by one", node)
            for entry in run:
                await self._replay(entry, finished)
            return
        if reason:
            log.info("pipelined replay to %s: %d of %d sent, %d answered (%s)", node, sent,
                     len(run), len(answers), reason)
        for i, entry in enumerate(run[:sent]):
            if i < len(answers) and answers[i][0] not in TRANSIENT_STATUSES:
                self._done(entry, *answers[i])
                self._finish(entry)
                finished.append(entry)
            else:  # refused, or sent and not answered: on its own, with its retries
                tried = (f"node answered {answers[i][0]}" if i < len(answers)
                         else "no answer from a node")
                await self._replay(entry, finished, tried=tried)
        if sent < len(run):  # the node refused one, so no more went: the rest, pipelined
            await self._pipeline(run[sent:], finished, window)

    async def _replay(self, entry: Entry, finished: list[Entry], *,
                      tried: str | None = None) -> None:
        try:
            await self._replay_with_retries(entry, tried)
            finished.append(entry)
        except Exception as exc:
            # A bug or a store error must not stop the replay or strand the entry: it goes
            # back in line and the replay carries on after a pause.
            log.exception("replaying queued write #%d (request %s) failed unexpectedly; it "
                          "stays queued", entry.seq, entry.request_id)
            await self.store.retry_later(entry, time.time(), f"internal error: {exc!r}")
            await asyncio.sleep(1.0)

    async def _replay_with_retries(self, entry: Entry, tried: str | None = None) -> None:
        """Try until done or ``max_attempts``. ``tried``: the first attempt (counted by the
        batch mark) was made already, in a pipeline, and failed so; the retries follow it
        as they would any failed try."""
        config = self.config
        if tried is None:
            # The first try (the batch mark counted it) needs no retrying machinery: most
            # succeed, and tenacity is only built for one that did not.
            try:
                await self._attempt(entry, True)
            except Transient as exc:
                tried, recorded = str(exc), True  # _attempt put the failure on record
            else:
                self._finish(entry)
                return
        else:
            recorded = False
        remaining = max(1, config.max_attempts - entry.attempts + 1)
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(remaining),
                    wait=wait_exponential_jitter(multiplier=config.retry_base,
                                                 max=config.retry_max),
                    retry=retry_if_exception_type(Transient), reraise=True):
                with attempt:
                    if tried is not None:  # the first try, made already: its failure
                        error, tried = tried, None
                        if not recorded:
                            await self.store.retry_later(entry, time.time(), error)
                        raise Transient(error)
                    await self._attempt(entry, False)
        except Transient as exc:
            entry.status, entry.error = FAILED, str(exc)
            log.warning("queued write #%d (request %s) failed after %d attempts: %s",
                        entry.seq, entry.request_id, entry.attempts, exc)
        self._finish(entry)

    def _finish(self, entry: Entry) -> None:
        """The entry is done or failed: its time, the rate, and whoever waits for it."""
        entry.finished = time.time()
        self._recent.append(time.monotonic())
        for future in self._waiters.pop(entry.ticket, []):
            if not future.done():
                future.set_result(entry)

    async def _attempt(self, entry: Entry, fresh: bool) -> None:
        """One try; ``fresh``: the batch mark already recorded it (and its planned node)."""
        await self._wait_for_a_node()
        headers = self._headers(entry)
        first = not fresh

        async def before_send(node: Node) -> None:
            # On record before the first byte goes out, with the node it goes to: after a
            # crash the entry is re-sent there first, so a per-node key store dedupes it.
            nonlocal first
            if first:
                await self.store.mark_replaying(entry, node.name)
                first = False
            elif entry.node != node.name:
                await self.store.sent_to(entry, node.name)

        try:
            status, answer, body = await self.forwarder.forward(
                entry.method, entry.target, headers, entry.body,
                request_id=entry.request_id or new_request_id(),
                prefer=entry.node, before_send=before_send)
        except (UpstreamError, TimeoutError, NoNode) as exc:
            # The ticket's status shows the error to its client: no node's name or address.
            error = public_error(exc)
            log.info("queued write #%d (request %s): %s", entry.seq, entry.request_id,
                     f"{type(exc).__name__}: {exc}")
            await self.store.retry_later(entry, time.time(), error)
            raise Transient(error) from None
        if status in TRANSIENT_STATUSES:
            await self.store.retry_later(entry, time.time(), f"node answered {status}")
            raise Transient(f"node answered {status}")
        self._done(entry, status, answer, body)

    @staticmethod
    def _headers(entry: Entry) -> list[tuple[str, str]]:
        """The stored headers with the entry's Idempotency-Key (the client's, or made)."""
        headers = [(k, v) for k, v in entry.headers if k.lower() != "idempotency-key"]
        headers.append(("Idempotency-Key", entry.idempotency_key))
        return headers

    @staticmethod
    def _done(entry: Entry, status: int, answer: list[tuple[str, str]], body: bytes) -> None:
        entry.status, entry.result_status, entry.result_headers = DONE, status, answer
        entry.result_body, entry.error = body, None

    async def _wait_for_a_node(self) -> None:
        cluster = self.cluster
        while not any(n.serving for n in cluster):
            self._changed.clear()
            await self._changed.wait()
