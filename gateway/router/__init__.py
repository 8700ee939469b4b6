"""The router: from an exchange to a node's answer, with retries, stall detection and
hedging (Envoy's router filter and its upstream requests)."""

from gateway.router.attempt import Attempts, PassiveObserver
from gateway.router.exchange import (
    BodySource,
    BodyTooLarge,
    ClientBodyError,
    Exchange,
    NoNode,
    TryTimeout,
    UpstreamBroke,
    declared_length,
)
from gateway.router.forward import Forwarder
from gateway.router.router import Router

__all__ = ["Attempts", "BodySource", "BodyTooLarge", "ClientBodyError", "Exchange",
           "Forwarder", "NoNode", "PassiveObserver", "Router", "TryTimeout", "UpstreamBroke",
           "declared_length"]
