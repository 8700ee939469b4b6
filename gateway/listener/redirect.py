"""``tls.http_redirect``: a plain-HTTP listener that answers every request with a 308 to
the same host, path and query over https (308, unlike 301, keeps the method and body).
It proxies nothing; it runs on the connection code of the traffic listener, so it has the
same limits (header size and timeout, keep-alive, refused framing)."""

from __future__ import annotations

from gateway.errors import Answer, error_response
from gateway.listener.connection import ClientConnection
from gateway.request import Request


class HttpsRedirect:
    """The redirect listener's handler (gateway.listener.connection.Handler)."""

    def __init__(self, https_port: int) -> None:
        #: The TLS listener's port; left out of the URL when it is 443.
        self.https_port = https_port

    def __repr__(self) -> str:
        return f"<HttpsRedirect to port {self.https_port}>"

    def location(self, request: Request) -> str | None:
        """``https://host[:port]/path?query`` for ``request``; None without a host."""
        target = request.target
        host = request.headers.get("Host")
        if not target.startswith("/") and "://" in target:  # absolute-form
            authority, _, rest = target.split("://", 1)[1].partition("/")
            authority = authority.rpartition("@")[2]  # never a user's credentials
            host, target = authority or host, "/" + rest
        if not host:
            return None
        if host.startswith("["):  # an IPv6 literal, maybe with a port
            name = host[:host.index("]") + 1] if "]" in host else host
        else:
            name = host.rsplit(":", 1)[0]
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return f"https://{name}{port}{target if target.startswith('/') else '/' + target}"

    def answer(self, request: Request) -> Answer:
        location = self.location(request)
        if location is None:
            return error_response(400, "a request needs a Host header to be redirected to "
                                       "https", "", close=True)
        body = f"This service is served over HTTPS: {location}\n".encode()
        # A body left unread would be parsed as the next request: close after answering.
        return Answer(308, body, [("Location", location)], "text/plain; charset=utf-8",
                      close=request.body is not None)

    async def handle(self, request: Request, conn: ClientConnection) -> bool:
        answer = self.answer(request)
        keep = conn.keep_alive(request) and not answer.close
        conn.send(answer, keep_alive=keep, head_only=request.method == "HEAD")
        return keep

    async def upgrade(self, request: Request, conn: ClientConnection, rest: bytes) -> None:
        conn.send(self.answer(request), keep_alive=False)  # the connection closes after
