"""Opt-in Prometheus metrics listener, guarded like every interface the regulation covers.

第二十七条(三) asks of an interface: an issued token and a caller IP whitelist. So the listener
binds to loopback by default and answers only a client whose address is in the allow-list
(else 403) *and* that presents ``Authorization: Bearer <token>`` (else 401; the token is
compared in constant time and never logged). Metric names carry the ``edu_agent_`` prefix.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = structlog.get_logger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AgentMetrics:
    """The agent's metrics, in their own registry (no process-global state, testable)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.packages = Counter("edu_agent_packages", "Packages handled, by subscription and result",
                                ["subscription", "result"], registry=r)
        self.rows = Counter("edu_agent_rows_applied", "Rows upserted or deleted", ["subscription", "op"],
                            registry=r)
        self.files = Counter("edu_agent_files_applied", "Files written or removed", ["subscription"],
                             registry=r)
        self.errors = Counter("edu_agent_errors", "Failed subscription runs", ["subscription"], registry=r)
        self.reports_sent = Counter("edu_agent_reports_sent", "Reports delivered to outbox/", ["type"],
                                    registry=r)
        self.reports_dropped = Counter("edu_agent_reports_dropped",
                                       "Queued heartbeats dropped to keep the queue bounded", registry=r)
        self.report_queue = Gauge("edu_agent_report_queue_length", "Reports waiting for the platform",
                                  registry=r)
        self.last_success = Gauge("edu_agent_last_success_timestamp_seconds",
                                  "Unix time of the last successful run", ["subscription"], registry=r)
        self.last_sequence = Gauge("edu_agent_applied_sequence", "Last applied package sequence",
                                   ["subscription"], registry=r)
        self.digest_match = Gauge("edu_agent_digest_match", "1 when the local digest matches, else 0",
                                  ["subscription"], registry=r)
        self.apply_seconds = Histogram(
            "edu_agent_apply_duration_seconds", "Time to apply one package", ["subscription", "kind"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900), registry=r)
        self.heartbeat = Gauge("edu_agent_last_heartbeat_timestamp_seconds",
                               "Unix time of the last heartbeat", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def parse_allow_list(entries: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(e, strict=False) for e in entries]


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        status, body, ctype = self.server.respond(self.client_address[0], self.path,
                                                  self.headers.get("Authorization"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="edu-agent"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics.request", client=self.client_address[0], line=format % args)


class MetricsServer(ThreadingHTTPServer):
    """``/metrics`` over HTTP, allow-list first (403), then bearer token (401)."""

    daemon_threads = True

    def __init__(self, metrics: AgentMetrics, host: str, port: int, token: str,
                 allow: Iterable[str] = ("127.0.0.1/32", "::1/128")) -> None:
        if not token:
            raise ValueError("the metrics listener needs a token")
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)
        self.metrics = metrics
        self._token = token.encode()
        self._allow = parse_allow_list(allow)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def allowed(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._allow)

    def respond(self, client: str, path: str, authorization: str | None) -> tuple[int, bytes, str]:
        text = "text/plain; charset=utf-8"
        if not self.allowed(client):
            log.warning("metrics.forbidden_address", client=client)
            return 403, b"forbidden: address not in allow-list\n", text
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self._token):
            log.warning("metrics.bad_token", client=client)
            return 401, b"unauthorized: bearer token required\n", text
        if path.split("?", 1)[0] not in ("/metrics", "/"):
            return 404, b"not found\n", text
        return 200, self.metrics.render(), CONTENT_TYPE_LATEST

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        log.info("metrics.listening", host=self.server_address[0], port=self.port)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)
