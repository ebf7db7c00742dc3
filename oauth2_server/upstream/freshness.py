"""When a stored upstream access token is due for a refresh (DESIGN.md "Upstream
brokering" 3; README "Upstream provider faults").

A token is handed out while it has at least OAUTH2_UPSTREAM_MIN_TTL seconds left. When
the provider's own lifetime is shorter than that (or not much longer), no refresh could
meet the promise, and refreshing on every exchange would only hammer the provider: then
the token is handed out with its true remaining life, and refreshed once half of its
lifetime is spent. So a grant is refreshed at most once per half-lifetime, never once
per exchange, and what is handed out has at least min(MIN_TTL, lifetime / 2) left.

The proactive refresh worker (`upstream.worker`; issue #14 item 1) applies the same rule
with OAUTH2_UPSTREAM_REFRESH_AHEAD in place of MIN_TTL (`worker_due_at`), and after a
failed refresh waits `retry_delay` before trying that grant again: the interval doubled
per failure in a row, capped, ±20 % so that grants failing together spread out.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

JITTER = 0.2  # ± share of a wait (worker interval, backoff) drawn at random


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


def jittered(seconds: float, rand: random.Random | None = None) -> float:
    """`seconds` ± JITTER (20 %), drawn uniformly."""
    return seconds * (1 + (rand or random).uniform(-JITTER, JITTER))


def retry_delay(failures: int, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Seconds the refresh worker waits before retrying a grant after its `failures`-th
    failed refresh in a row (≥ 1): min(`cap`, `base` · 2^(failures - 1)) ± 20 %."""
    exponent = min(max(failures, 1) - 1, 32)  # bounded: 2^32 · base is past any cap
    return jittered(min(cap, base * 2**exponent), rand)


def worker_due_at(
    ahead: int,
    expires_at: datetime,
    issued_at: datetime | None,
    retry_at: datetime | None,
) -> datetime:
    """When the refresh worker next refreshes a grant (UTC): once less than
    `required_life(ahead, …)` is left, and not before its backoff `retry_at`."""
    due = expires_at - required_life(ahead, expires_at, issued_at)
    return max(due, retry_at) if retry_at is not None else due
