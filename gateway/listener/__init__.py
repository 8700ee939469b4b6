"""The traffic listener: the client side of the data plane (Envoy's listener and its HTTP
connection manager): accept, screen, admit, answer locally or route, respond."""

from gateway.listener.handler import OutcomeSink, TrafficHandler
from gateway.listener.local import LocalRoute, PublicPage
from gateway.listener.respond import Responder
from gateway.listener.server import GuardedServer, screen
from gateway.listener.websocket import WebSocketProxy

__all__ = ["GuardedServer", "LocalRoute", "OutcomeSink", "PublicPage", "Responder",
           "TrafficHandler", "WebSocketProxy", "screen"]
