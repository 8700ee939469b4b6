"""Every Redis key and channel hagw uses, in one place, under ``peers.prefix``.

::

    {p}:leader                 the lease: "<name>:<epoch>", with a TTL
    {p}:epoch                  the fencing epoch, incremented by every new leader
    {p}:ns:<namespace>         shared records: hash key -> JSON
    {p}:namespaces             the set of namespaces that have records
    {p}:version                incremented by every record write (change notices carry it)
    {p}:changes                pub/sub channel of record changes
    {p}:queue                  the write queue: a stream of the accepted requests
    {p}:queue:seq              arrival counter (an entry's seq)
    {p}:queue:line             entries not yet replayed: sorted set ticket -> seq
    {p}:queue:created          the same entries: ticket -> created (for the oldest one)
    {p}:queue:replaying        entries being replayed (a set)
    {p}:queue:finished         finished entries: ticket -> finished time (for purging)
    {p}:queue:counts           done and failed counts (a hash)
    {p}:queue:entry:<ticket>   one entry's status and result (a hash)
    {p}:slo:m:<start>          fleet-wide SLO counts of one minute (good, bad, excluded)
    {p}:slo:h:<start>          ... of one hour
    {p}:rl:<second>:<client>   one client's requests in one second, fleet-wide

Scripts compute some keys from a prefix argument, so this layout needs one Redis
(standalone or Sentinel-managed), not Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    def _k(self, *parts: str | int) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    @property
    def leader(self) -> str:
        return self._k("leader")

    @property
    def epoch(self) -> str:
        return self._k("epoch")

    def namespace(self, name: str) -> str:
        return self._k("ns", name)

    @property
    def namespace_prefix(self) -> str:
        return self._k("ns", "")

    @property
    def namespaces(self) -> str:
        return self._k("namespaces")

    @property
    def version(self) -> str:
        return self._k("version")

    @property
    def changes(self) -> str:
        return self._k("changes")

    @property
    def queue(self) -> str:
        return self._k("queue")

    def queue_part(self, part: str) -> str:
        return self._k("queue", part)

    @property
    def entry_prefix(self) -> str:
        return self._k("queue", "entry", "")

    def entry(self, ticket: str) -> str:
        return self._k("queue", "entry", ticket)

    def slo(self, size: str, start: int) -> str:
        return self._k("slo", size, start)

    def slo_prefix(self, size: str) -> str:
        return self._k("slo", size, "")

    def rate(self, second: int, client: str) -> str:
        return self._k("rl", second, client)
