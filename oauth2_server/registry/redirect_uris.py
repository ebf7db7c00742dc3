"""Which redirect URIs a client may register, and the loopback rule used at request time
(RFC 6749 §3.1.2, RFC 9700 §2.1 and §4.1.3, RFC 8252 §7-8)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from oauth2_server.registry.errors import FieldInvalid

MAX_REDIRECT_URI_LENGTH = 2000
LOOPBACK_HOSTS = ("127.0.0.1", "[::1]")  # RFC 8252 §7.3 loopback IP literals
# RFC 3986 §3.1 scheme, reverse-domain form (RFC 8252 §7.1): labels joined by periods.
_PRIVATE_SCHEME = re.compile(r"[a-z][a-z0-9+-]*(\.[a-z0-9+-]+)+")
_URI_CHARS = re.compile(r"[\x21-\x7e]+")  # RFC 3986: visible ASCII, no spaces


def validate_redirect_uri(uri: str) -> None:
    """A redirect URI a client may register (RFC 6749 §3.1.2, RFC 9700 §2.1, RFC 8252 §7):

    - `https://host/…`: web clients and claimed https URIs of native apps (RFC 8252 §7.2);
    - `http://127.0.0.1[:port]/…` or `http://[::1][:port]/…`: native apps' loopback
      redirect (RFC 8252 §7.3; any port matches at request time, `OAuthClient`);
      `http://localhost` is refused (RFC 8252 §8.3: NOT RECOMMENDED, it may resolve off
      the machine), as is any other `http` host;
    - a private-use scheme in reverse-domain form, e.g. `com.example.app:/oauth/callback`
      (RFC 8252 §7.1); a scheme without a period (`myapp:`, `javascript:`, `data:`) is
      refused (RFC 8252 §8.4: "any private-use URI scheme that doesn't contain a period
      character SHOULD be rejected").

    Never a fragment (RFC 6749 §3.1.2), user information, whitespace, non-ASCII, or more
    than MAX_REDIRECT_URI_LENGTH characters. Raises FieldInvalid (`redirect_uris`) naming
    the URI and the rule.
    """
    shown = uri if len(uri) <= 200 else uri[:200] + "..."
    if not uri or len(uri) > MAX_REDIRECT_URI_LENGTH or not _URI_CHARS.fullmatch(uri):
        raise _invalid(
            f"redirect_uri {shown!r} must be 1-{MAX_REDIRECT_URI_LENGTH} visible ASCII "
            "characters (RFC 3986)"
        )
    parts = urlsplit(uri)
    if "#" in uri:
        raise _invalid(
            f"redirect_uri {shown!r} must not contain a fragment (RFC 6749 section 3.1.2)"
        )
    scheme = parts.scheme
    if not scheme or not uri.startswith(scheme + ":"):  # urlsplit lower-cases the scheme
        raise _invalid(
            f"redirect_uri {shown!r} must start with a lower-case scheme: https, loopback "
            "http, or a reverse-domain private-use scheme (RFC 8252 section 7)"
        )
    if "@" in parts.netloc:
        raise _invalid(f"redirect_uri {shown!r} must not carry user information")
    if scheme == "https":
        if not parts.hostname:
            raise _invalid(f"redirect_uri {shown!r} must name a host")
        return
    if scheme == "http":
        if loopback_host(parts.netloc) is None:
            raise _invalid(
                f"redirect_uri {shown!r} must use https; plain http only for the loopback IP "
                "literals 127.0.0.1 and [::1] (RFC 8252 section 7.3; localhost is not "
                "accepted, section 8.3)"
            )
        return
    if not _PRIVATE_SCHEME.fullmatch(scheme) or scheme.startswith(("http.", "https.")):
        raise _invalid(
            f"redirect_uri {shown!r}: scheme {scheme!r} is neither https, loopback http, nor "
            "a private-use scheme in reverse-domain form such as com.example.app "
            "(RFC 8252 sections 7.1 and 8.4)"
        )
    if not parts.path and not parts.netloc:
        raise _invalid(
            f"redirect_uri {shown!r} needs a path after the scheme, e.g. "
            f"{scheme}:/oauth/callback (RFC 8252 section 7.1)"
        )


def loopback_host(netloc: str) -> str | None:
    """The host of an RFC 8252 §7.3 loopback authority (`127.0.0.1` or `[::1]`, with an
    optional port 1-65535), else None."""
    for host in LOOPBACK_HOSTS:
        if netloc == host:
            return host
        if netloc.startswith(host + ":"):
            port = netloc[len(host) + 1 :]
            if port.isdigit() and len(port) <= 5 and 0 < int(port) <= 65535:
                return host
    return None


def _invalid(description: str) -> FieldInvalid:
    return FieldInvalid("redirect_uris", description)
