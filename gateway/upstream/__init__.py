"""The upstream side: keep-alive connections to nodes."""

from gateway.upstream.connection import (
    ConnectFailure,
    InvalidResponse,
    PoolOverflow,
    UpstreamConnection,
    UpstreamError,
    UpstreamReset,
)
from gateway.upstream.pool import ConnectionPool

__all__ = ["ConnectFailure", "ConnectionPool", "InvalidResponse", "PoolOverflow",
           "UpstreamConnection", "UpstreamError", "UpstreamReset"]
