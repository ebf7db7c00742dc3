"""Cross-field checks of a configuration, production's refusals included."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from oauth2_server.config.errors import ConfigError, shown
from oauth2_server.config.webhook import webhook_problems

if TYPE_CHECKING:
    from oauth2_server.config.settings import Settings


def cross_field_problems(settings: Settings) -> list[str]:
    """Every problem that no single variable shows (empty when there is none), in order:
    the issuer (RFC 8414 §2: an http(s) URL without query or fragment), the code lifetime
    (≤ 60 s, RFC 6749 §4.1.2), the upstream refresh cap (≥ the upstream timeout), the
    keyring, then production's refusals (configured keys, an https issuer, PostgreSQL)."""
    found: list[str] = []
    issuer = urlsplit(settings.issuer)
    if issuer.scheme not in {"http", "https"} or not issuer.netloc:
        found.append(f"{shown('OAUTH2_ISSUER', settings.issuer)} is not an http(s) URL")
    if issuer.query or issuer.fragment:
        found.append("OAUTH2_ISSUER must not have a query or fragment (RFC 8414 §2)")
    if settings.authorization_code_ttl > 60:
        found.append("OAUTH2_AUTHORIZATION_CODE_TTL must be at most 60 seconds")
    if settings.upstream_refresh_cap < settings.upstream_timeout:
        found.append("OAUTH2_UPSTREAM_REFRESH_CAP must be at least OAUTH2_UPSTREAM_TIMEOUT")
    if settings.encryption_keys:
        from oauth2_server.crypto.keyring import parse_keyring  # it imports this package

        try:
            parse_keyring(settings.encryption_keys, settings.encryption_primary_key)
        except ConfigError as exc:
            found.extend(exc.problems)
    found.extend(webhook_problems(settings))
    if settings.production:
        if not settings.encryption_keys:
            found.append(
                "OAUTH2_ENCRYPTION_KEYS is required when OAUTH2_ENV=production "
                "(`oauth2-server keys generate-encryption-key` makes one)"
            )
        if issuer.scheme != "https":
            found.append("OAUTH2_ISSUER must be https when OAUTH2_ENV=production")
        if settings.is_sqlite:
            found.append("OAUTH2_DATABASE_URL must be PostgreSQL when OAUTH2_ENV=production")
    return found
