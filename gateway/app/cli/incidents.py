"""``hagw incident``: list and show incidents, post public updates, ack and resolve them."""

from __future__ import annotations

import argparse
import time

from gateway.app.cli.common import admin_client, output, print_json, usage_error
from gateway.app.cli.render import table, when

#: Statuspage's statuses (monitor.incident.tracker.STATUSES; the CLI does not import the
#: control plane just for a tuple, and tests/test_cli.py checks the two agree).
STATUSES = ("investigating", "identified", "monitoring", "resolved")


def cmd_incident(args: argparse.Namespace) -> int:
    client = admin_client(args)
    mode = output(args)
    if args.action == "list":
        incidents = client.get("/incidents")["incidents"]
        if mode == "json":
            print_json(incidents)
            return 0
        headers = ["ID", "STATUS", "SEVERITY", "OPENED", "RESOLVED", "FAILED", "TITLE"]
        rows = [[i["id"], i["status"], i["severity"], when(i["opened_at"]),
                 when(i["resolved_at"]) if i["resolved_at"] else "-",
                 str(i["impact"]["requests_failed"]), i["title"]] for i in incidents]
        if mode == "wide":
            headers += ["ACKED", "UPDATES", "CONDITIONS"]
            for row, i in zip(rows, incidents, strict=True):
                row += [when(i["acknowledged_at"]) if i.get("acknowledged_at") else "-",
                        str(len(i.get("updates") or [])), ",".join(i["conditions"])]
        print(table(rows, headers))
        return 0
    if not args.id:
        return usage_error(f"incident {args.action} needs an incident id "
                           "(see hagw incident list)")
    text = " ".join(args.text).strip()
    if args.action == "note":
        if not text:
            return usage_error('usage: hagw incident note ID "text"')
        client.post(f"/incidents/{args.id}/notes", {"text": text})
        print(f"{args.id}: note added")
        return 0
    if args.action == "update":
        if args.status is None:
            return usage_error("incident update needs --status "
                               f"{'|'.join(STATUSES)} and the text of the update")
        if not text and args.status != "resolved":
            return usage_error('usage: hagw incident update ID --status STATUS "text"')
        update = client.post(f"/incidents/{args.id}/updates",
                             {"status": args.status, "text": text})
        print(f"{args.id}: {update['status']}: {update['text']}")
        return 0
    if args.action == "ack":
        incident = client.post(f"/incidents/{args.id}/ack")
        print(f"{args.id}: acknowledged ({incident['status']})")
        return 0
    if args.action == "resolve":
        client.post(f"/incidents/{args.id}/resolve", {"text": text} if text else {})
        print(f"{args.id}: resolved")
        return 0
    if args.action == "report":
        print(client.get(f"/incidents/{args.id}/report"), end="")
        return 0
    incident = client.get(f"/incidents/{args.id}")
    if mode == "json":
        print_json(incident)
        return 0
    print(f"{incident['id']} {incident['status'].upper()} ({incident['severity']}): "
          f"{incident['title']}")
    for cause in incident.get("causes") or []:
        print(f"  cause: {cause}")
    for update in reversed(incident.get("updates") or []):
        print(f"  {time.strftime('%H:%M:%S', time.gmtime(update['at']))} "
              f"{update['status']}: {update['text']}")
    print("  timeline:")
    for entry in incident["timeline"]:
        node = f" {entry['node']}:" if entry.get("node") else ""
        print(f"  {time.strftime('%H:%M:%S', time.gmtime(entry['at']))}{node} "
              f"{entry['message']}")
    return 0
