"""Risk scores and security flags of audit rows: every rule in one place.

Each `oauth2_token_logs` row carries `risk_score` (0.00–1.00, two decimals) and `flags`
(short identifiers). SECURITY.md ("Risk scores and flags") has these rules as a table;
change both together.

- code replay: an authorization code used a second time (RFC 6749 §4.1.2): 1.00,
  `code_replay`.
- refresh reuse: a rotated refresh token used again (RFC 9700 §4.14.2): 1.00,
  `refresh_reuse`.
- race: the same two actions when the second use comes within `RACE_WINDOW` (1 s) of
  the winning one — a client retrying or firing parallel requests, not a thief: 0.30,
  flag `race` (instead of `code_replay`/`refresh_reuse`; the action stays the same and
  the family is still revoked).
- client authentication failure: with n = failed client authentications and logins from
  the same IP within `OAUTH2_CLIENT_AUTH_FAILURE_WINDOW` seconds (this worker),
  min(0.90, 0.20 + 0.10·(n−1)), `client_auth_failed`, plus `auth_failure_burst` when n ≥ 5.
- login failure: the same rule and count, `login_failed` (+ `auth_failure_burst`).
- throttled: an attempt refused over the failure limit (HTTP 429): 0.80, `throttled`.
- new IP on refresh: a refresh from an IP never seen for its token family: 0.40, `new_ip`.
- refresh grace: a refresh that repeats the use of the most recently rotated refresh token
  within `OAUTH2_REFRESH_REUSE_GRACE` (it superseded the current token, revoked nothing):
  0.10, `refresh_grace` (with `new_ip` the higher score, both flags).
- upstream refresh failed: the provider refused a refresh: 0.30.
- anything else (issue, refresh, exchange, introspection, revocation, `admin_*`): 0.00.

Invariant the audit queries rely on: a row with any flag scores at least 0.01
(`row_score` enforces it), so flagged and risky rows are both found through the
`risk_score > 0` partial index.

Rules are pure functions of what the caller knows. The only state is `AuthFailureWindow`,
a per-process sliding count of failures per IP (it resets when the worker restarts, and
each worker counts its own requests). `ips_seen_for_family` reads the audit trail.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from oauth2_server.db.models import TokenLog

# Fixed scores by action, for rows whose score does not depend on context.
FIXED_SCORES: dict[str, float] = {
    "code_replay": 1.0,
    "refresh_reuse": 1.0,
    "client_auth_failed": 0.2,
    "login_failed": 0.2,
    "client_auth_throttled": 0.8,
    "upstream_refresh_failed": 0.3,
}

BURST_THRESHOLD = 5  # failures from one IP within the window that add `auth_failure_burst`
FAILURE_BASE = 0.2
FAILURE_STEP = 0.1
FAILURE_CAP = 0.9
NEW_IP_SCORE = 0.4
REFRESH_GRACE_SCORE = 0.1
MIN_FLAGGED_SCORE = 0.01
RACE_WINDOW = 1.0  # seconds after the winning use within which a second use is a race
RACE_SCORE = 0.3


@dataclass(frozen=True)
class Assessment:
    """A risk score (0.00–1.00, rounded to two decimals) and the flags that explain it."""

    score: float
    flags: list[str] = field(default_factory=list)


def clamp(score: float) -> float:
    """A score within 0.00–1.00, rounded to the column's two decimals."""
    return round(min(1.0, max(0.0, score)), 2)


def fixed_score(action: str) -> float:
    """The score of an action without context (0.0 for actions with no rule)."""
    return FIXED_SCORES.get(action, 0.0)


def row_score(action: str, score: float | None, flags: list[str]) -> float:
    """The score stored on a row: the explicit `score`, else the action's fixed score;
    at least 0.01 when the row carries flags."""
    value = clamp(fixed_score(action) if score is None else score)
    return max(value, MIN_FLAGGED_SCORE) if flags else value


def auth_failure(kind: str, failures_from_ip: int) -> Assessment:
    """Score of a failed client authentication (`kind="client_auth_failed"`) or login
    (`kind="login_failed"`), given how many failures the same IP made in the window,
    this one included."""
    n = max(1, failures_from_ip)
    flags = [kind]
    if n >= BURST_THRESHOLD:
        flags.append("auth_failure_burst")
    return Assessment(clamp(min(FAILURE_CAP, FAILURE_BASE + FAILURE_STEP * (n - 1))), flags)


def second_use(action: str, first_used_at: datetime | None, now: datetime) -> Assessment:
    """Score of a second use of a single-use credential: `action` is `code_replay`
    (RFC 6749 §4.1.2) or `refresh_reuse` (RFC 9700 §4.14.2); `first_used_at` is when the
    winning use consumed or rotated it, `now` when this attempt arrived (both UTC, aware).

    Within `RACE_WINDOW` seconds it is a concurrent loser (`race`, 0.30); later, or
    with no recorded time, the action's own flag at 1.00.
    """
    if first_used_at is not None and (now - first_used_at).total_seconds() <= RACE_WINDOW:
        return Assessment(RACE_SCORE, ["race"])
    return Assessment(fixed_score(action), [action])


def refresh_from_ip(ip: str | None, seen_ips: set[str], grace: bool = False) -> Assessment:
    """Score of a successful refresh: flagged `new_ip` when the family (grant) was never
    used from this IP before (an unknown IP, or a family with no recorded IP, is not
    flagged), and `refresh_grace` when it was a grace use of the most recently rotated
    token (`storage.tokens.redeem_refresh_token`). The score is the highest rule's."""
    scores: list[float] = [0.0]
    flags: list[str] = []
    if grace:
        scores.append(REFRESH_GRACE_SCORE)
        flags.append("refresh_grace")
    if ip is not None and seen_ips and ip not in seen_ips:
        scores.append(NEW_IP_SCORE)
        flags.append("new_ip")
    return Assessment(clamp(max(scores)), flags)


def ips_seen_for_family(session: Session, family_id: str, limit: int = 50) -> set[str]:
    """IPs of the `issued`/`refreshed` rows of one token family still in the audit trail
    (at most `limit` distinct ones; one indexed read on `family_id`)."""
    rows = session.scalars(
        select(TokenLog.ip)
        .where(
            TokenLog.family_id == family_id,
            TokenLog.action.in_(("issued", "refreshed")),
            TokenLog.ip.is_not(None),
        )
        .distinct()
        .limit(limit)
    )
    return {ip for ip in rows if ip}


class AuthFailureWindow:
    """Failures per IP over the last `window` seconds in this process (bounded memory)."""

    def __init__(
        self, window: float, max_keys: int = 100_000, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.max_keys = max_keys
        self._timer = timer
        self._times: dict[str, deque[float]] = {}

    def add(self, ip: str | None) -> int:
        """Count one failure from `ip`; returns the failures in the window, this one
        included (1 when the IP is unknown)."""
        if ip is None:
            return 1
        now = self._timer()
        times = self._times.setdefault(ip, deque())
        times.append(now)
        while times and times[0] < now - self.window:
            times.popleft()
        if len(self._times) > self.max_keys:
            cutoff = now - self.window
            for key in [k for k, v in self._times.items() if not v or v[-1] < cutoff]:
                del self._times[key]
            while len(self._times) > self.max_keys:
                self._times.pop(next(iter(self._times)))
        return len(times)
