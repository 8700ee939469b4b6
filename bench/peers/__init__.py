"""The proxies hagw is compared with, started against this run's nodes.

Configs live next to this module (``nginx_proxy.conf``, ``haproxy.cfg``) as templates
filled with ports at run time; ``naive_proxy.py`` is a minimal aiohttp proxy.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.nodes import Nodes
from bench.processes import Child, ProcessGroup, free_port, wait_for_port
from bench.templates import render_file

HERE = Path(__file__).parent


def start_naive(group: ProcessGroup, nodes: Nodes) -> tuple[Child, int]:
    port = free_port()
    child = group.start("naive-proxy", [sys.executable, str(HERE / "naive_proxy.py"),
                                        "--port", str(port), *nodes.urls])
    wait_for_port(child, port)
    return child, port


def start_nginx_proxy(group: ProcessGroup, nginx: str, nodes: Nodes) -> tuple[Child, int]:
    workdir = group.workdir
    (workdir / "nginx-proxy-tmp").mkdir(exist_ok=True)
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in nodes.ports)
    conf = render_file(HERE / "nginx_proxy.conf",
                       {"workdir": str(workdir), "port": str(port), "servers": servers},
                       workdir / "nginx-proxy.conf")
    child = group.start("nginx-proxy", [nginx, "-p", str(workdir), "-c", str(conf),
                                        "-e", str(workdir / "nginx-proxy.error.log")])
    wait_for_port(child, port)
    return child, port


def start_nginx_tls_proxy(group: ProcessGroup, nginx: str, nodes: Nodes, cert: Path,
                          key: Path) -> tuple[Child, int]:
    """nginx terminating TLS with ``cert`` in front of the nodes (the "https" scenario)."""
    workdir = group.workdir
    (workdir / "nginx-tls-tmp").mkdir(exist_ok=True)
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in nodes.ports)
    conf = render_file(HERE / "nginx_tls_proxy.conf",
                       {"workdir": str(workdir), "port": str(port), "servers": servers,
                        "cert": str(cert), "key": str(key)},
                       workdir / "nginx-tls.conf")
    child = group.start("nginx-tls", [nginx, "-p", str(workdir), "-c", str(conf),
                                      "-e", str(workdir / "nginx-tls.error.log")])
    wait_for_port(child, port)
    return child, port


def start_haproxy(group: ProcessGroup, haproxy: str, nodes: Nodes) -> tuple[Child, int]:
    workdir = group.workdir
    port = free_port()
    servers = "\n".join(f"    server {name} 127.0.0.1:{p}"
                        for name, p in zip(nodes.names, nodes.ports, strict=True))
    conf = render_file(HERE / "haproxy.cfg",
                       {"workdir": str(workdir), "port": str(port), "servers": servers},
                       workdir / "haproxy.cfg")
    # -db: stay in the foreground, so the process group owns it.
    child = group.start("haproxy", [haproxy, "-db", "-f", str(conf)])
    wait_for_port(child, port)
    return child, port
