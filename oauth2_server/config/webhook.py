"""Checks of the webhook settings (issue #14 item 3), part of the cross-field checks.

`OAUTH2_WEBHOOK_URL` must be an http(s) URL without credentials or fragment, https when
OAUTH2_ENV=production (events name clients and branches, and the signature does not hide
them); it needs `OAUTH2_WEBHOOK_SECRET` in the Standard Webhooks form `whsec_<base64>`.
A configuration that breaks one of these is refused at start-up (`Settings.from_env`).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from oauth2_server.config.errors import shown

if TYPE_CHECKING:
    from oauth2_server.config.settings import Settings

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's marker, not a secret)
MIN_SECRET_BYTES = 24  # Standard Webhooks: between 24 and 64 bytes
MAX_SECRET_BYTES = 64
MAX_URL = 2000  # characters


def parse_webhook_secret(value: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (Standard Webhooks "Signature scheme"):
    24-64 bytes. Raises ValueError (never showing the value) otherwise."""
    if not value.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"must be {SECRET_PREFIX} followed by base64") from exc
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"must hold {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes")
    return key


def generate_webhook_secret() -> str:
    """A new `whsec_` secret of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_problems(settings: Settings) -> list[str]:
    """Every problem of the webhook settings (empty when none, or when no URL is set)."""
    url = settings.webhook_url
    if not url:
        return []
    found: list[str] = []
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if len(url) > MAX_URL or parts is None or not port_ok:
        return [f"{shown('OAUTH2_WEBHOOK_URL', url)} is not a URL"]
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        found.append(f"{shown('OAUTH2_WEBHOOK_URL', url)} is not an http(s) URL")
    if parts.username or parts.password or parts.fragment:
        found.append("OAUTH2_WEBHOOK_URL must not carry credentials or a fragment")
    if settings.production and parts.scheme != "https":
        found.append("OAUTH2_WEBHOOK_URL must be https when OAUTH2_ENV=production")
    if not settings.webhook_secret:
        found.append(
            "OAUTH2_WEBHOOK_SECRET is required with OAUTH2_WEBHOOK_URL "
            "(`oauth2-server webhooks generate-secret` makes one)"
        )
    else:
        try:
            parse_webhook_secret(settings.webhook_secret)
        except ValueError as exc:
            found.append(f"OAUTH2_WEBHOOK_SECRET {exc}")
    return found
