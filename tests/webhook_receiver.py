"""A loopback webhook receiver for tests: verifies Standard Webhooks signatures with
its own HMAC code (not the server's), records what arrives, and can fail on demand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import free_port

SECRET_KEY = bytes(range(32))  # the receiver's copy of the key
SECRET = "whsec_" + base64.b64encode(SECRET_KEY).decode()
TOLERANCE = 300  # seconds a timestamp may be away from the receiver's clock


def expected_signature(event_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks: base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the key."""
    content = event_id.encode() + b"." + timestamp.encode() + b"." + body
    return base64.b64encode(hmac.new(SECRET_KEY, content, hashlib.sha256).digest()).decode()


def signature_valid(headers: Any, body: bytes) -> bool:
    """Whether one `v1,` signature in `webhook-signature` matches, in constant time, and
    the timestamp is within TOLERANCE seconds."""
    event_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE:
        return False
    wanted = expected_signature(event_id, timestamp, body)
    for part in headers.get("webhook-signature", "").split():
        version, _, value = part.partition(",")
        if version == "v1" and hmac.compare_digest(value, wanted):
            return True
    return False


@dataclass
class Delivery:
    """One request received: its headers (lower-case names), body, parsed JSON, whether
    its signature verified, and the status answered."""

    headers: dict[str, str]
    body: bytes
    event: dict[str, Any]
    valid: bool
    status: int


@dataclass
class Receiver:
    """Records every request; `status` answers them (200 by default), `delay` seconds are
    slept first (a hanging receiver), and `fail_first(pred)` answers 500 to the first
    attempt of each event whose JSON matches `pred`."""

    port: int
    status: int = 200
    delay: float = 0.0
    received: list[Delivery] = field(default_factory=list)
    fail_first_when: Any = None
    _seen: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        event = json.loads(body) if body else {}
        with self._lock:
            status = self.status
            event_id = headers.get("webhook-id", "")
            first = event_id not in self._seen
            self._seen.add(event_id)
            if first and self.fail_first_when is not None and self.fail_first_when(event):
                status = 500
            self.received.append(
                Delivery(headers, body, event, signature_valid(headers, body), status)
            )
        return status

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if receiver.delay:
                    time.sleep(receiver.delay)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver.answer(headers, body)
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self, subjects: set[str] | None = None) -> list[Delivery]:
        """The deliveries answered 2xx, optionally only of events whose data names one of
        `subjects` (key `test_subject` or `client_id`)."""
        with self._lock:
            done = [d for d in self.received if 200 <= d.status < 300]
        if subjects is None:
            return done
        return [d for d in done if _subject(d.event) in subjects]

    def wait_for(self, count: int, subjects: set[str], timeout: float = 30.0) -> list[Delivery]:
        """Wait until `count` accepted deliveries of `subjects` arrived; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.accepted(subjects)
            if len(done) >= count:
                return done
            time.sleep(0.05)
        raise AssertionError(f"{len(self.accepted(subjects))} of {count} events arrived")


def _subject(event: dict[str, Any]) -> str | None:
    data = event.get("data") or {}
    return data.get("test_subject") or data.get("client_id")


def new_receiver() -> Receiver:
    """A receiver on a free loopback port, not yet listening (`start()`)."""
    return Receiver(free_port())
