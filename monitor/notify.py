"""Announcements to people and tools: maintenance windows and incidents.

Notifiers: a generic JSON webhook, Slack-compatible and Alertmanager-compatible
webhooks, and SMTP email. Each delivery is retried with tenacity and recorded
(delivered or failed, attempts, error), so an operator can see what went out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import smtplib
import ssl
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from gateway.config.redact import redact_urls
from gateway.config.schema import NotifierConfig
from gateway.events import Entry, Event, Publish

log = logging.getLogger("hagw.notify")
RECORDS = 200


@dataclass(frozen=True, slots=True)
class Notice:
    #: maintenance.scheduled, .reminder, .started, .ended, .cancelled; incident.opened, .resolved
    event: str
    title: str
    text: str
    at: float
    data: dict[str, Any] = field(default_factory=dict)
    #: For Alertmanager: when the condition starts and ends (Unix seconds).
    starts: float | None = None
    ends: float | None = None

    @property
    def family(self) -> str:
        return self.event.split(".", 1)[0]


@dataclass(slots=True)
class Delivery:
    notifier: str
    event: str
    title: str
    at: float
    status: str = "pending"
    attempts: int = 0
    error: str = ""
    delivered_at: float | None = None


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


class Notifier:
    def __init__(self, config: NotifierConfig, index: int) -> None:
        self.config = config
        self.name = f"{config.type}[{index}]"

    def wants(self, notice: Notice) -> bool:
        return notice.family in self.config.events

    async def send(self, session: aiohttp.ClientSession, notice: Notice) -> None:
        cfg = self.config
        if cfg.type == "email":
            await asyncio.to_thread(self._send_email, notice)
            return
        if cfg.type == "slack":
            payload: Any = {"text": f"*{notice.title}*\n{notice.text}"}
        elif cfg.type == "alertmanager":
            labels = {"alertname": "HagwMaintenance" if notice.family == "maintenance"
                      else "HagwIncident", "service": "hagw", "severity": "info",
                      "event": notice.event}
            labels.update({k: str(v) for k, v in notice.data.items() if k in ("window", "id")})
            alert: dict[str, Any] = {"labels": labels,
                                     "annotations": {"summary": notice.title,
                                                     "description": notice.text}}
            if notice.starts is not None:
                alert["startsAt"] = _iso(notice.starts)
            if notice.ends is not None:
                alert["endsAt"] = _iso(notice.ends)
            payload = [alert]
        else:
            payload = asdict(notice)
        url = cfg.url.rstrip("/") + "/api/v2/alerts" if cfg.type == "alertmanager" else cfg.url
        async with session.post(url, json=payload, headers=cfg.headers,
                                timeout=aiohttp.ClientTimeout(total=cfg.timeout)) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")

    def _send_email(self, notice: Notice) -> None:
        cfg = self.config
        message = EmailMessage()
        message["Subject"] = f"[hagw] {notice.title}"
        message["From"] = cfg.sender
        message["To"] = ", ".join(cfg.to)
        message.set_content(notice.text)
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout) as smtp:
            if cfg.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if cfg.username:
                smtp.login(cfg.username, cfg.password)
            smtp.send_message(message)


Spawner = Callable[[Coroutine[Any, Any, Any], str], object]


@dataclass(frozen=True, slots=True)
class Delivered(Event):
    """A notice reached a notifier, or failed to after its retries."""

    delivery: Delivery

    def log_entry(self) -> Entry:
        d = self.delivery
        return Entry("notify." + d.status, f"{d.notifier}: {d.title} ({d.attempts} "
                     f"attempt(s))" + (f": {d.error}" if d.error else ""),
                     level=logging.INFO if d.status == "delivered" else logging.WARNING)


class NotifierHub:
    """Sends each notice to every notifier that wants it, in the background, with retries."""

    def __init__(self, configs: tuple[NotifierConfig, ...], spawn: Spawner,
                 publish: Publish) -> None:
        self.notifiers = [Notifier(c, i) for i, c in enumerate(configs)]
        self.deliveries: deque[Delivery] = deque(maxlen=RECORDS)
        self._spawn = spawn
        self._publish = publish
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<NotifierHub {len(self.notifiers)} notifiers>"

    def configure(self, configs: tuple[NotifierConfig, ...]) -> None:
        self.notifiers = [Notifier(c, i) for i, c in enumerate(configs)]

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def publish(self, notice: Notice) -> list[Delivery]:
        out = []
        for notifier in self.notifiers:
            if notifier.wants(notice):
                delivery = Delivery(notifier.name, notice.event, notice.title, notice.at)
                self.deliveries.append(delivery)
                out.append(delivery)
                self._spawn(self._deliver(notifier, notice, delivery),
                            f"notify {notifier.name} {notice.event}")
        return out

    async def _deliver(self, notifier: Notifier, notice: Notice, delivery: Delivery) -> None:
        assert self._session is not None
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(notifier.config.attempts),
                    wait=wait_exponential(multiplier=0.5, max=30), reraise=True):
                with attempt:
                    delivery.attempts += 1
                    await notifier.send(self._session, notice)
        except Exception as exc:  # recorded, never silent
            delivery.status = "failed"
            # Shown in GET /maintenance and the event log: a notifier's URL is a secret.
            delivery.error = redact_urls(f"{type(exc).__name__}: {exc}")
            log.warning("notifier %s failed to deliver %s after %d attempts: %s",
                        notifier.name, notice.event, delivery.attempts, delivery.error)
        else:
            delivery.status = "delivered"
            delivery.delivered_at = dt.datetime.now(dt.UTC).timestamp()
        self._publish(Delivered(delivery))
