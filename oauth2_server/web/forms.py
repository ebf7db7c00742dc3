"""Reading OAuth request parameters from HTTP (RFC 6749 §3.1, §3.2, Appendix B).

Bodies are `application/x-www-form-urlencoded`, parsed by the standard library
(`urllib.parse.parse_qsl`, strict UTF-8), at most `OAUTH2_MAX_BODY_BYTES`. Parameters
sent without a value are treated as omitted; a parameter sent twice is `invalid_request`,
and so is a name or value holding a control character (U+0000-U+001F, U+007F): no OAuth
parameter has one (RFC 6749 Appendix A: VSCHAR, NQCHAR, NQSCHAR are all printable), and
NUL cannot even be stored by PostgreSQL.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl

from starlette.requests import Request

from oauth2_server.audit.log import RequestContext
from oauth2_server.oauth.bridge import OAuthRequest
from oauth2_server.storage import utcnow

FORM_TYPE = "application/x-www-form-urlencoded"
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class BadRequest(Exception):
    """The HTTP request cannot be an OAuth request: `error`, `description`, HTTP `status`,
    and the parameter at fault (`field`) when there is one."""

    def __init__(
        self,
        description: str,
        status: int = 400,
        error: str = "invalid_request",
        field: str | None = None,
    ):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.field = field


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes (413) without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BadRequest(f"request body is larger than {limit} bytes", 413)
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request body is larger than {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


# Parameters that may repeat in an OAuth request: `resource` (RFC 8707 §2).
REPEATABLE = frozenset({"resource"})


def parse_params(text: str, allow_repeats: bool = False) -> dict[str, list[str]]:
    """Parse urlencoded text into name → values, dropping empty values (RFC 6749 §3.1).

    Raises BadRequest on malformed text, on a name or value with a control character
    (`field`: the parameter), and on a repeated parameter unless `allow_repeats` or the
    parameter is one a standard lets repeat (`REPEATABLE`; at most 100 fields in all).
    """
    params: dict[str, list[str]] = {}
    try:
        pairs = parse_qsl(
            text, keep_blank_values=False, strict_parsing=False, errors="strict", max_num_fields=100
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"malformed form body: {exc}") from None
    for name, value in pairs:
        if CONTROL_CHARACTERS.search(name) or CONTROL_CHARACTERS.search(value):
            shown = CONTROL_CHARACTERS.sub("?", name[:40])
            raise BadRequest(f"parameter '{shown}' contains a control character", field=shown)
        values = params.setdefault(name, [])
        values.append(value)
        if len(values) > 1 and not allow_repeats and name not in REPEATABLE:
            raise BadRequest(f"parameter '{name[:40]}' is included more than once", field=name[:40])
    return params


async def read_form(request: Request, limit: int) -> dict[str, list[str]]:
    """The urlencoded body of a POST; BadRequest on a wrong content type, size or encoding."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise BadRequest(f"Content-Type must be {FORM_TYPE}")
    body = await read_body(request, limit)
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("form body must be percent-encoded ASCII") from None
    return parse_params(text)


def header_text(value: str | None) -> str | None:
    """A header's text as its sender most likely wrote it: the bytes (which Starlette
    hands over decoded as Latin-1, RFC 9110 §5.5) decoded as UTF-8, each invalid
    sequence replaced by U+FFFD. None stays None."""
    if value is None or value.isascii():
        return value
    return value.encode("latin-1").decode("utf-8", "replace")


def request_context(request: Request) -> RequestContext:
    """IP (after uvicorn's trusted-proxy handling), user agent (`header_text`), request id
    and the time the request arrived (UTC)."""
    return RequestContext(
        ip=request.client.host if request.client else None,
        user_agent=header_text(request.headers.get("user-agent")),
        request_id=request.state.request_id if hasattr(request.state, "request_id") else None,
        received_at=utcnow(),
    )


def new_request_id(presented: str | None) -> str:
    """Keep a caller's X-Request-ID if it is short, printable ASCII (it is echoed in a
    response header and stored in the audit trail), else make one: 32 lowercase hex digits
    of 128 random bits (`os.urandom`; a uuid4's bits without building a UUID object, which
    cost ~2 % of a token request's CPU)."""
    if presented and len(presented) <= 64 and presented.isascii() and presented.isprintable():
        return presented
    return os.urandom(16).hex()


def oauth_request(
    request: Request, issuer: str, params: dict[str, list[str]], allow_http: bool = False
) -> OAuthRequest:
    """Build Authlib's request; its URI is the issuer's, so a TLS-terminating proxy does
    not make Authlib see plain http. `allow_http`: this app serves development over an
    `http://` issuer (`OAuthService.allow_http`; see `OAuthRequest`)."""
    uri = issuer + request.url.path
    if request.url.query:
        uri += "?" + request.url.query
    return OAuthRequest(
        request.method,
        uri,
        request.headers,
        params,
        request_context(request),
        allow_http=allow_http,
    )
