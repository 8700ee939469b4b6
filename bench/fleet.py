"""Everything a run measures against, started on first use and reused after.

One set of nodes serves every target in the run, so that the targets differ only
in what sits between the load generator and the nodes. A target that cannot run
(a missing tool, a server that did not start) is remembered with its reason, and
every scenario then reports it as skipped or failed instead of stopping the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench import peers
from bench.certs import CertFiles, make_certificate
from bench.gateway import start_gateway
from bench.nodes import Nodes, start_demo_nodes, start_nginx_nodes
from bench.processes import Child, ProcessGroup, StartError
from bench.report import progress as _progress
from bench.settings import PEERS, Settings
from bench.tools import Tools

#: hagw with more workers (the "workers" scenario), beside "hagw" with one.
WORKER_TARGETS = {"hagw-2w": 2}
#: The "https" scenario's targets, each terminating TLS with one certificate, and the
#: target whose selection (--targets) brings it in.
TLS_TARGETS = {"hagw-tls": "hagw", "nginx-tls": "nginx"}


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    port: int
    #: The process whose memory is measured (for nginx nodes, the master).
    child: Child
    scheme: str = "http"

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


class Unavailable(Exception):
    """``status`` reads "skipped: <reason>" (cannot run here) or "failed: <reason>"."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class Fleet:
    def __init__(self, settings: Settings, tools: Tools, group: ProcessGroup) -> None:
        self.settings = settings
        self.tools = tools
        self.group = group
        #: What actually ran, for the report (e.g. demo nodes because nginx is missing).
        self.notes: list[str] = []
        self._nodes: Nodes | Unavailable | None = None
        self._targets: dict[str, Target | Unavailable] = {}
        self._stream: tuple[Target, Target] | Unavailable | None = None
        self._cert: CertFiles | None = None

    def certificate(self) -> CertFiles:
        """The one certificate every TLS target serves, made on first use."""
        if self._cert is None:
            self._cert = make_certificate(self.group.workdir)
        return self._cert

    def nodes(self) -> Nodes:
        if self._nodes is None:
            self._nodes = self._start_nodes()
        if isinstance(self._nodes, Unavailable):
            raise self._nodes
        return self._nodes

    def _start_nodes(self) -> Nodes | Unavailable:
        kind = self.settings.nodes
        if kind == "nginx" and self.tools.missing("nginx"):
            self.notes.append(f"nodes: demo aiohttp nodes instead of nginx "
                              f"({self.tools.missing('nginx')})")
            kind = "demo"
        _progress(f"starting 3 {kind} nodes")
        try:
            if kind == "nginx":
                return start_nginx_nodes(self.group, self.tools)
            return start_demo_nodes(self.group)
        except StartError as exc:
            return Unavailable(f"failed: the nodes did not start: {_first_line(exc)}")

    def target(self, name: str) -> Target:
        if name not in self._targets:
            try:
                self._targets[name] = self._start(name)
            except Unavailable as exc:
                self._targets[name] = exc
            except StartError as exc:
                _progress(f"{name} did not start:\n{exc}")
                self._targets[name] = Unavailable(f"failed: did not start: {_first_line(exc)}")
        found = self._targets[name]
        if isinstance(found, Unavailable):
            raise found
        return found

    def _start(self, name: str) -> Target:
        selected = self.settings.targets
        brought_in = ((name in WORKER_TARGETS and "hagw" in selected)
                      or TLS_TARGETS.get(name) in selected)
        if name not in selected and not brought_in:
            raise Unavailable("skipped: not selected (--targets)")
        tool = TLS_TARGETS.get(name, name)
        if tool in PEERS:
            missing = self.tools.missing(tool)
            if missing:
                raise Unavailable(f"skipped: {missing}")
        nodes = self.nodes()
        if name == "direct":
            return Target(name, nodes.ports[0], nodes.children[0])
        _progress(f"starting {name}")
        if name == "hagw":
            child, port = start_gateway(self.group, nodes)  # one worker (bench.gateway)
        elif name in WORKER_TARGETS:
            child, port = start_gateway(self.group, nodes, name=name,
                                        extra={"workers": WORKER_TARGETS[name]})
        elif name == "hagw-tls":
            cert = self.certificate()
            child, port = start_gateway(self.group, nodes, name=name, extra={
                "tls": {"cert": str(cert.cert), "key": str(cert.key)}})
            return self._started(Target(name, port, child, scheme="https"))
        elif name == "nginx-tls":
            cert = self.certificate()
            child, port = peers.start_nginx_tls_proxy(self.group, _path(self.tools, "nginx"),
                                                      nodes, cert.cert, cert.key)
            return self._started(Target(name, port, child, scheme="https"))
        elif name == "naive":
            child, port = peers.start_naive(self.group, nodes)
        elif name == "nginx":
            child, port = peers.start_nginx_proxy(self.group, _path(self.tools, "nginx"), nodes)
        elif name == "haproxy":
            child, port = peers.start_haproxy(self.group, _path(self.tools, "haproxy"), nodes)
        else:
            raise Unavailable(f"failed: unknown target {name!r}")
        return self._started(Target(name, port, child))

    def _started(self, target: Target) -> Target:
        # The pid is what a profiler attaches to (py-spy record -p PID).
        _progress(f"{target.name} listening on {target.url()} (pid {target.child.pid})")
        return target

    def streaming_pair(self) -> tuple[Target, Target]:
        """(direct, hagw) over one demo aiohttp node, whose ``/download`` streams any size.

        A gateway of its own, so that its memory reflects the stream and nothing else.
        """
        if self._stream is None:
            try:
                _progress("starting a demo node and a gateway for streaming")
                node = start_demo_nodes(self.group, count=1, prefix="stream-node")
                child, port = start_gateway(self.group, node, name="hagw-stream")
                self._stream = (Target("direct", node.ports[0], node.children[0]),
                                Target("hagw", port, child))
            except StartError as exc:
                _progress(f"streaming fleet did not start:\n{exc}")
                self._stream = Unavailable(f"failed: did not start: {_first_line(exc)}")
        if isinstance(self._stream, Unavailable):
            raise self._stream
        return self._stream


def _path(tools: Tools, name: str) -> str:
    path = tools.path(name)
    assert path is not None, "checked before starting"
    return path


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
