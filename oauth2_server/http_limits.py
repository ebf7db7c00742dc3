"""uvicorn's httptools protocol with a bound on request-line and header bytes.

uvicorn bounds headers only on its h11 protocol (`h11_max_incomplete_event_size`);
its faster httptools protocol buffers a request head of any size. This subclass
counts the bytes received while a request's head is incomplete and, past
`config.h11_max_incomplete_event_size` (`OAUTH2_MAX_HEADER_BYTES`), answers
431 Request Header Fields Too Large (RFC 6585 §5) and closes the connection, so
both protocols keep the same bound. `serve` picks it when httptools is installed.

Header-read timeouts (slowloris) are not handled here: the reverse proxy in front
enforces them (README, "Behind a reverse proxy").
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

_BODY = b'{"error":"invalid_request","error_description":"request headers too large"}'
_RESPONSE_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"cache-control: no-store\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY
)


def http_protocol() -> str:
    """The uvicorn `http` setting for `serve`: the bounded httptools protocol when
    httptools is installed, else h11 (bounded by `h11_max_incomplete_event_size`)."""
    if importlib.util.find_spec("httptools") is None:
        return "h11"
    return "oauth2_server.http_limits:BoundedHttpToolsProtocol"


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools missing: `http_protocol()` answers "h11"
    HttpToolsProtocol = asyncio.Protocol  # type: ignore[assignment,misc]


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a refused request head."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
    """HttpToolsProtocol that refuses a request head over `h11_max_incomplete_event_size`
    bytes with 431 (RFC 6585 §5) instead of buffering it.

    Two counts: the request line and headers as parsed (a head that arrives whole in
    one read), and the bytes received while a head is still incomplete (a head trickled
    in, or one endless header the parser keeps buffering).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_limit: int = self.config.h11_max_incomplete_event_size
        self._received = 0  # bytes received since the current head began
        self._parsed = 0  # bytes of request line and headers parsed
        self._in_head = True

    def _refuse(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(_RESPONSE_431)
            self.transport.close()

    def _count(self, size: int) -> None:
        self._parsed += size
        if self._parsed > self._head_limit:
            self._refuse()
            raise _HeadTooLarge  # stops the parser; uvicorn's own 400 finds it closed

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._in_head:
            self._received += len(data)
        super().data_received(data)
        if self._in_head and self._received > self._head_limit:
            self._refuse()

    def on_message_begin(self) -> None:
        self._parsed = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True
        self._received = 0
        super().on_message_complete()
