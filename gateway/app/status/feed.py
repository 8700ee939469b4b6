"""The status page as an Atom feed (RFC 4287): one entry per incident and per maintenance
window, as Statuspage's history feed has, so people follow the service in a feed reader
(or a chat's RSS app) instead of reloading the page.

Built from the same data as the page (``gateway.app.status.data``), so the public feed
shows exactly what the public page shows and no more. The XML is built with ElementTree,
which escapes every text and attribute; the entries' ``content`` is HTML (escaped once
more inside the XML), made of escaped text only.

Ids are ``urn:uuid:`` UUIDs derived from the incident's or window's id, so they stay the
same from one fetch to the next; links are relative to the feed (the page's anchors), so
the feed needs no host name and takes none from the request.
"""

from __future__ import annotations

import html
import uuid
import xml.etree.ElementTree as ET
from typing import Any

from gateway.clock import strftime_utc

ATOM = "http://www.w3.org/2005/Atom"
CONTENT_TYPE = "application/atom+xml; charset=utf-8"
#: Every id this feed makes is a UUID in this namespace (uuid5 of "hagw status").
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:hagw:status")

_WINDOW_TITLES = {"scheduled": "Scheduled maintenance", "active": "Maintenance in progress",
                  "ended": "Completed maintenance", "cancelled": "Cancelled maintenance"}


def _rfc3339(ts: float) -> str:
    return strftime_utc("%Y-%m-%dT%H:%M:%SZ", ts)


def _readable(ts: float) -> str:
    return strftime_utc("%Y-%m-%d %H:%M UTC", ts)


def _urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, ' '.join(parts))}"


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    element.text = text
    return element


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _incident_entry(inc: dict[str, Any], scope: str, page: str) -> tuple[float, ET.Element]:
    updates = inc.get("updates") or []
    updated = max([inc["opened_at"], inc.get("resolved_at") or 0.0,
                   *(u["at"] for u in updates)])
    entry = ET.Element("entry")
    _text(entry, "id", _urn(scope, "incident", inc["id"]))
    _text(entry, "title", inc["title"])
    _text(entry, "published", _rfc3339(inc["opened_at"]))
    _text(entry, "updated", _rfc3339(updated))
    ET.SubElement(entry, "link", rel="alternate", type="text/html",
                  href=f"{page}#incident-{inc['id']}")
    ET.SubElement(entry, "category", term="incident")
    ET.SubElement(entry, "category", term=inc["status"])
    # Newest first, as the page (and Statuspage) shows them.
    body = [f"<p><small>{_e(_readable(u['at']))}</small><br><strong>"
            f"{_e(u['status'].capitalize())}</strong> &ndash; {_e(u['text'])}</p>"
            for u in reversed(updates)]
    if not body:
        body.append(f"<p><strong>{_e(inc['status'].capitalize())}</strong> since "
                    f"{_e(_readable(inc['opened_at']))}</p>")
    causes = [c for c in inc.get("causes") or [] if c != inc["title"]]
    if causes:  # the admin feed only
        body.append("<ul>" + "".join(f"<li>{_e(c)}</li>" for c in causes) + "</ul>")
    _text(entry, "content", "".join(body), type="html")
    return updated, entry


def _window_entry(w: dict[str, Any], scope: str, page: str) -> tuple[float, ET.Element]:
    updated = float(w.get("updated_at") or w["start"])
    status = w["status"]
    entry = ET.Element("entry")
    _text(entry, "id", _urn(scope, "maintenance", w["id"]))
    _text(entry, "title", f"{_WINDOW_TITLES.get(status, 'Maintenance')}: {w['reason']}")
    _text(entry, "published", _rfc3339(updated if status == "scheduled" else w["start"]))
    _text(entry, "updated", _rfc3339(updated))
    ET.SubElement(entry, "link", rel="alternate", type="text/html",
                  href=f"{page}#maintenance-{w['id']}")
    ET.SubElement(entry, "category", term="maintenance")
    ET.SubElement(entry, "category", term=status)
    minutes = round((w["end"] - w["start"]) / 60)
    _text(entry, "content",
          f"<p><strong>{_e(_WINDOW_TITLES.get(status, status))}</strong></p>"
          f"<p>From {_e(_readable(w['start']))} to {_e(_readable(w['end']))} "
          f"({minutes} min). Scope: {_e(w['scope'])}.</p>", type="html")
    return updated, entry


def render_feed(data: dict[str, Any]) -> bytes:
    """The Atom document for a status page's data (``status_data``)."""
    scope = "public" if data["public"] else "admin"
    links = data["links"]
    page = links["html"]
    entries = [_incident_entry(inc, scope, page)
               for inc in data["incidents"]["open"] + data["incidents"]["recent"]]
    maintenance = data["maintenance"]
    entries += [_window_entry(w, scope, page)
                for w in maintenance["active"] + maintenance["upcoming"] + maintenance["recent"]]
    entries.sort(key=lambda pair: pair[0], reverse=True)

    feed = ET.Element("feed", xmlns=ATOM)
    _text(feed, "id", _urn(scope, "feed", page))
    _text(feed, "title", f"{data['title']}: incidents and maintenance")
    _text(feed, "subtitle", data["state_text"])
    _text(feed, "updated", _rfc3339(entries[0][0] if entries else data["generated_at"]))
    ET.SubElement(feed, "link", rel="alternate", type="text/html", href=page)
    ET.SubElement(feed, "link", rel="self", type="application/atom+xml", href=links["atom"])
    author = ET.SubElement(feed, "author")
    _text(author, "name", data["title"])
    # No version: the public page never says which hagw runs.
    _text(feed, "generator", "hagw")
    for _updated, entry in entries:
        feed.append(entry)
    document: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return document
