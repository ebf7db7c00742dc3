"""Connection hygiene and trusted proxies (issue #8 items 8 and 9).

- A request head over `OAUTH2_MAX_HEADER_BYTES` is refused (431, RFC 6585 §5; or 400)
  at once instead of being buffered; one under it is served.
- An idle keep-alive connection is closed after `OAUTH2_KEEP_ALIVE_TIMEOUT` seconds.
- `OAUTH2_FORWARDED_ALLOW_IPS` is empty by default: X-Forwarded-For from anyone is
  ignored for the client IP in audit rows; set to the proxy's address it is honoured.
- docker-compose.yml puts a proxy with header-read timeouts in front, publishes only the
  proxy, and the server trusts only the proxy's address.

Header-read (slowloris) timeouts are the proxy's job, so they are checked in the compose
file, not against uvicorn.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import ROOT


def raw_request(server, head: bytes, timeout: float = 30) -> bytes:
    """Send `head` on a new connection; everything the server answers until it closes
    or `timeout` seconds pass without data."""
    url = urlsplit(server.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(head)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
            if b"\r\n\r\n" in received and b"connection: close" not in received.lower():
                break
    return received


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def head_with(header_bytes: int, chunks: int = 1) -> list[bytes]:
    """A GET /healthz whose headers total about `header_bytes`, split into `chunks` parts."""
    lines = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(header_bytes // 1000))
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines + b"\r\n"
    size = -(-len(head) // chunks)
    return [head[i : i + size] for i in range(0, len(head), size)]


def test_oversized_request_headers_are_refused_not_buffered(server):
    """20 KB of headers against the 16 KB default: 431 (or 400), connection closed."""
    for chunks in (1, 10):  # in one write, and trickled in parts
        url = urlsplit(server.base_url)
        with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
            for part in head_with(20_000, chunks):
                try:
                    sock.sendall(part)
                except (BrokenPipeError, ConnectionResetError):
                    break  # already refused
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except ConnectionResetError:
                # The server closed with our unsent headers still arriving: the kernel
                # answers them with a reset, which may discard the refusal before we read
                # it. Refused either way; what must never come is a 200.
                pass
        if answer:
            assert status_of(answer) in (400, 431), answer[:300]
        assert server.get("/healthz").status_code == 200  # refused, not crashed


def test_headers_under_the_limit_are_served(server):
    answer = raw_request(server, b"".join(head_with(8_000)))
    assert status_of(answer) == 200, answer[:300]


def test_idle_keep_alive_connection_is_closed_after_the_timeout(start_server):
    live = start_server(OAUTH2_KEEP_ALIVE_TIMEOUT="1")
    url = urlsplit(live.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert status_of(answer) == 200
        started = time.monotonic()
        sock.settimeout(4.5)  # N × timeout; uvicorn's own default would be 5 s
        try:
            while sock.recv(65536):  # the rest of the body, then the close
                pass
        except TimeoutError:
            raise AssertionError("idle keep-alive connection still open after 4.5 s") from None
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 4.5


def issued_ip(db, client_id: str) -> str:
    return db.scalar(
        "SELECT ip FROM oauth2_token_logs WHERE action = 'issued' AND client_id = :c",
        c=client_id,
    )


@pytest.mark.parametrize(
    ("overrides", "recorded"),
    [
        pytest.param({}, "127.0.0.1", id="ignored-by-default"),
        pytest.param(
            {"OAUTH2_FORWARDED_ALLOW_IPS": "127.0.0.1"},
            "203.0.113.7",
            id="honoured-from-a-configured-proxy",
        ),
    ],
)
def test_forwarded_for_is_honoured_only_from_a_configured_proxy(
    server, start_server, db, unique, overrides, recorded
):
    """RFC 9700 §4.13: the audit row's client IP comes from X-Forwarded-For only when the
    peer is in `OAUTH2_FORWARDED_ALLOW_IPS` (empty by default: the shared server)."""
    live = start_server(**overrides) if overrides else server
    client_id, secret = db.create_client(name=unique("svc"))
    response = live.post(
        "/oauth2/token",
        auth=(client_id, secret),
        data={"grant_type": "client_credentials"},
        headers={"X-Forwarded-For": "203.0.113.7"},
    )
    assert response.status_code == 200, response.text
    assert issued_ip(db, client_id) == recorded


def test_compose_puts_a_proxy_with_header_timeouts_in_front():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    proxy, server = services["proxy"], services["server"]
    assert proxy["image"].split(":")[0] in {"caddy", "nginx"}
    assert "ports" not in server, "the server must be reached only through the proxy"
    assert proxy["ports"]
    proxy_ip = proxy["networks"]["backend"]["ipv4_address"]
    assert server["environment"]["OAUTH2_FORWARDED_ALLOW_IPS"] == proxy_ip
    config = compose["configs"]["caddyfile"]["content"]
    assert "read_header" in config and "idle" in config
