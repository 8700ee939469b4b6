"""The CLI's client for the admin API (stdlib only: the CLI must start fast)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig


class AdminError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AdminClient:
    base: str
    token: str | None = None
    timeout: float = 10.0

    @classmethod
    def from_config(cls, config: GatewayConfig, *, url: str | None = None,
                    token: str | None = None) -> AdminClient:
        if url is None:
            host = config.admin.listen.host
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1"  # a wildcard listener is reachable on loopback
            scheme = "https" if config.admin.tls is not None else "http"
            url = f"{scheme}://{host}:{config.admin.listen.port}"
        return cls(url.rstrip("/"), token or config.admin.token)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:  # reads need it too with admin.read_token, and show deploy output
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("message") or raw.decode()
            except (ValueError, AttributeError):
                message = raw.decode("utf-8", "replace")
            raise AdminError(f"{method} {path}: HTTP {exc.code}: {message}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach the admin API at {self.base}: {reason} "
                             f"(is the gateway running?)") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
