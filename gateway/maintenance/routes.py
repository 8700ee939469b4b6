"""Which requests a whole-fleet window queues, and which it answers like reads:
``RouteMatch`` patterns (``*`` within a path segment, ``**`` across) compiled once."""

from __future__ import annotations

import re

from gateway.config.schema import RouteMatch


def compile_route(route: RouteMatch) -> tuple[str, re.Pattern[str]]:
    pattern = re.escape(route.path).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return route.method, re.compile(pattern + r"/?")


class RouteSet:
    def __init__(self, routes: tuple[RouteMatch, ...]) -> None:
        self._routes = [compile_route(r) for r in routes]

    def matches(self, method: str, path: str) -> bool:
        return any((m == "*" or m == method) and p.fullmatch(path) for m, p in self._routes)

    def __len__(self) -> int:
        return len(self._routes)

    def __repr__(self) -> str:
        return f"<RouteSet {len(self._routes)} routes>"
