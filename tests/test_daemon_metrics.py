"""The metrics listener: allow-list (403) and bearer token (401) over real HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from agent.metrics import AgentMetrics, MetricsServer

TOKEN = "s3cr3t-metrics-token"


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    metrics = AgentMetrics()
    metrics.packages.labels("rsc-teachers", "applied").inc(3)
    metrics.last_success.labels("rsc-teachers").set(1_764_000_000)
    metrics.apply_seconds.labels("rsc-teachers", "delta").observe(0.3)
    srv = MetricsServer(metrics, "127.0.0.1", 0, TOKEN)
    srv.start()
    yield srv
    srv.stop()


def _get(port: int, token: str | None, path: str = "/metrics") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http on loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_with_token(server: MetricsServer) -> None:
    status, body = _get(server.port, TOKEN)
    assert status == 200
    assert 'edu_agent_packages_total{result="applied",subscription="rsc-teachers"} 3.0' in body
    assert "edu_agent_last_success_timestamp_seconds" in body
    assert "edu_agent_apply_duration_seconds_bucket" in body
    assert TOKEN not in body


def test_missing_or_wrong_token_is_401(server: MetricsServer) -> None:
    assert _get(server.port, None)[0] == 401
    assert _get(server.port, "wrong")[0] == 401
    assert _get(server.port, TOKEN + "x")[0] == 401


def test_address_outside_allow_list_is_403_even_with_token() -> None:
    srv = MetricsServer(AgentMetrics(), "127.0.0.1", 0, TOKEN, allow=["10.0.0.0/8"])
    srv.start()
    try:
        assert _get(srv.port, TOKEN)[0] == 403
        assert _get(srv.port, None)[0] == 403
    finally:
        srv.stop()


def test_unknown_path_is_404(server: MetricsServer) -> None:
    assert _get(server.port, TOKEN, "/admin")[0] == 404


def test_allow_list_matching() -> None:
    srv = MetricsServer(AgentMetrics(), "127.0.0.1", 0, TOKEN, allow=["192.0.2.0/24", "::1"])
    try:
        assert srv.allowed("192.0.2.9")
        assert srv.allowed("::ffff:192.0.2.9")
        assert srv.allowed("::1")
        assert not srv.allowed("127.0.0.1")
    finally:
        srv.server_close()


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a token"):
        MetricsServer(AgentMetrics(), "127.0.0.1", 0, "")
