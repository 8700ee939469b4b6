"""The traffic listener: the client side of the data plane (Envoy's listener and its HTTP
connection manager): accept, parse, screen, admit, answer locally or route, respond."""

from gateway.listener.connection import ClientConnection, ServerState
from gateway.listener.handler import AdvisoryChanged, OutcomeSink, TrafficHandler
from gateway.listener.local import LocalRoute, PublicPage
from gateway.listener.redirect import HttpsRedirect
from gateway.listener.respond import Responder
from gateway.listener.server import ListenerTls, TrafficServer, open_socket
from gateway.listener.websocket import WebSocketTunnels

__all__ = ["AdvisoryChanged", "ClientConnection", "HttpsRedirect", "ListenerTls", "LocalRoute",
           "OutcomeSink", "PublicPage", "Responder", "ServerState", "TrafficHandler",
           "TrafficServer", "WebSocketTunnels", "open_socket"]
