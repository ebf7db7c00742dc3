"""When a stored upstream access token is due for a refresh (DESIGN.md "Upstream
brokering" 3; README "Upstream provider faults").

A token is handed out while it has at least OAUTH2_UPSTREAM_MIN_TTL seconds left. When
the provider's own lifetime is shorter than that (or not much longer), no refresh could
meet the promise, and refreshing on every exchange would only hammer the provider: then
the token is handed out with its true remaining life, and refreshed once half of its
lifetime is spent. So a grant is refreshed at most once per half-lifetime, never once
per exchange, and what is handed out has at least min(MIN_TTL, lifetime / 2) left.
"""

from __future__ import annotations

from datetime import datetime, timedelta


def required_life(min_ttl: int, expires_at: datetime, issued_at: datetime | None) -> timedelta:
    """The remaining life below which the token is refreshed: `min_ttl` seconds, or half
    the token's lifetime (`expires_at - issued_at`) when that is less. Without
    `issued_at` (a grant stored before lifetimes were), `min_ttl`."""
    wanted = timedelta(seconds=min_ttl)
    if issued_at is None:
        return wanted
    return min(wanted, (expires_at - issued_at) / 2)


def refresh_due(
    min_ttl: int, expires_at: datetime, issued_at: datetime | None, now: datetime
) -> bool:
    """True when the stored token has less than `required_life` left (or has expired)."""
    remaining = expires_at - now
    return remaining <= timedelta(0) or remaining < required_life(min_ttl, expires_at, issued_at)
