"""Answers the traffic listener gives itself instead of proxying: the public status page,
maintenance mode and queue tickets are ``LocalRoute``s."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.errors import Answer
from gateway.request import Request

#: How an answer counts for the SLO (see monitor.slo): None for normal accounting.
Accounting = str | None


class LocalRoute(Protocol):
    def matches(self, request: Request) -> bool:
        """A cheap synchronous check, made on every request."""

    async def answer(self, request: Request,
                     request_id: str) -> tuple[Answer, Accounting] | None:
        """The response and how it counts for the SLO, or None to let the request through
        after all."""


#: The public status page's formats: what follows ``status.path`` in the request path, and
#: the kind of page the renderer is asked for.
PAGE_FORMATS = {"": "html", ".json": "json", ".atom": "atom"}


class PublicPage:
    """Serves a page at ``path`` (HTML), ``path.json`` and ``path.atom`` (its Atom feed) on
    the traffic listener, from a renderer the composition root provides (the public status
    page: rendered in this process, or asked of the supervisor by a worker), called with
    the kind of ``PAGE_FORMATS``."""

    def __init__(self, enabled: Callable[[], bool], path: Callable[[], str],
                 render: Callable[[str], Awaitable[Answer]]) -> None:
        self._enabled = enabled
        self._path = path
        self._render = render

    def matches(self, request: Request) -> bool:
        return self._enabled() and request.path.startswith(self._path())

    async def answer(self, request: Request,
                     request_id: str) -> tuple[Answer, Accounting] | None:
        if request.method not in ("GET", "HEAD"):
            return None
        path = self._path()
        kind = PAGE_FORMATS.get(request.path[len(path):])
        if kind is None:
            return None
        return await self._render(kind), None

    def __repr__(self) -> str:
        return f"<PublicPage {self._path()} enabled={self._enabled()}>"
