"""Standard Webhooks signatures (https://www.standardwebhooks.com, "Signature scheme").

A message is signed with HMAC-SHA256 under the key of the `whsec_<base64>` secret over
`{webhook-id}.{webhook-timestamp}.{body}` (the timestamp in integer seconds since the
epoch, UTC; the body exactly as sent); `webhook-signature` is `v1,<base64 signature>`.
A receiver recomputes it, compares in constant time, and refuses timestamps too far from
its clock (replay protection).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from oauth2_server.config.webhook import parse_webhook_secret


def sign(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value (`v1,<base64>`) of `body` sent as `event_id` at
    `timestamp` (seconds since the epoch) under the HMAC `key` (24-64 bytes)."""
    content = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_headers(key: bytes, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery: `webhook-id`, `webhook-timestamp`, `webhook-signature`
    and `content-type: application/json`."""
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, event_id, timestamp, body),
    }


class Signer:
    """Signs deliveries with the key of a `whsec_` secret (ValueError if malformed; the
    settings checks refuse such a secret at start-up). The key is never logged or shown."""

    def __init__(self, secret: str) -> None:
        self._key = parse_webhook_secret(secret)

    def __repr__(self) -> str:
        return "Signer(<secret>)"

    def headers(self, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """`webhook_headers` under this signer's key."""
        return webhook_headers(self._key, event_id, timestamp, body)
