"""Failure limits for client authentication and login, and the audit rows of refusals.

`FailureLimiter.count(keys)` counts one attempt for each named key (e.g. `client`, `ip`)
and says whether any key is now over `OAUTH2_CLIENT_AUTH_FAILURE_LIMIT` attempts in its
`OAUTH2_CLIENT_AUTH_FAILURE_WINDOW`. Callers count BEFORE the expensive or decisive step
(an argon2 verification is reserved, then `release`d on success), so concurrent attempts
cannot overshoot the limit. Keys are held only as HMAC-SHA256 digests (keyring-derived
key), in `storage.auth_failures` (PostgreSQL: shared by every worker and instance;
SQLite: per process). A key known to be over its limit is remembered in this process
until its window ends (`max_keys` of them at most), so a flood against it costs no
database write.

`RefusalLog` audits refusals (HTTP 429, argon2 queue overflow 503) without one row per
refusal: the first refusal for a key in a window writes its row at once; when the window
ends, one summarising row carries `details.refusals`, the number of refusals in the window
(the first included), if there was more than one. At most `max_keys` keys are tracked; the
oldest is summarised early when a new one needs room. Counts of windows still open when
the process stops are lost (at most one window per key).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from cachetools import TLRUCache

from oauth2_server.audit.log import AuditBuffer, AuditEvent
from oauth2_server.storage.auth_failures import FailureCounts, WindowCount


@dataclass(frozen=True)
class Attempt:
    """One counted attempt. `wait` > 0: over the limit, refuse and retry after `wait`
    seconds; `blocked_by` names the key over it. `counts` is each key's count in its
    window (empty when refused from memory); `held` is what `release` gives back."""

    wait: float = 0.0
    blocked_by: str | None = None
    blocked_hash: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    held: tuple[WindowCount, ...] = ()

    @property
    def refused(self) -> bool:
        return self.wait > 0

    @property
    def retry_after(self) -> int:
        """`Retry-After` in whole seconds (at least 1)."""
        return max(1, int(self.wait) + 1)


class FailureLimiter:
    """At most `limit` counted attempts per key per `window` seconds (module docstring).

    `counts` stores the counters; `secret` keys the key digests (bytes, 32). Of the
    `max_keys` this process may hold, a quarter are keys remembered as blocked; build
    `MemoryCounts` with `memory_counter_cap(max_keys)`, the rest.
    """

    def __init__(
        self,
        counts: FailureCounts,
        limit: int,
        window: float,
        secret: bytes,
        max_keys: int,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.counts = counts
        self.limit = limit
        self.window = window
        self.max_blocked = max(1, max_keys // 4)
        self._secret = secret
        # key hash → when its window ends (`timer` seconds); gone once it has ended
        self._blocked: TLRUCache[str, float] = TLRUCache(self.max_blocked, _ends, timer)

    def key_hash(self, key: str) -> str:
        """HMAC-SHA256 hex of a key's text (`kind:value`): what is stored and held."""
        return hmac.new(
            self._secret, key.encode("utf-8", "backslashreplace"), hashlib.sha256
        ).hexdigest()

    def _locally_blocked(self, hashes: Mapping[str, str]) -> Attempt | None:
        if not self._blocked.currsize:
            return None  # the common case: nothing blocked here
        for kind, key in hashes.items():
            end = self._blocked.get(key)
            if end is not None:
                return Attempt(max(end - self._blocked.timer(), 0.001), kind, key)
        return None

    def _block(self, key: str, remaining: float) -> None:
        self._blocked[key] = self._blocked.timer() + remaining

    async def count(self, keys: Mapping[str, str]) -> Attempt:
        """Count one attempt for every key ({kind: "kind:value"}); refused when one of
        them is over the limit (then nothing is counted if this process already knew)."""
        hashes = {kind: self.key_hash(f"{kind}:{value}") for kind, value in keys.items()}
        known = self._locally_blocked(hashes)
        if known is not None:
            return known
        added = await self.counts.add(list(hashes.values()), self.window)
        rows = {row.key_hash: row for row in added}
        attempt = Attempt(
            counts={kind: rows[key].count for kind, key in hashes.items()},
            held=tuple(rows.values()),
        )
        for kind, key in hashes.items():
            row = rows[key]
            if row.count > self.limit:
                self._block(key, row.remaining)
                if row.remaining > attempt.wait:
                    attempt = replace(
                        attempt, wait=max(row.remaining, 0.001), blocked_by=kind, blocked_hash=key
                    )
        return attempt

    async def release(self, attempt: Attempt) -> None:
        """Give back a counted attempt that turned out well (a correct password)."""
        await self.counts.subtract(attempt.held)

    def held_keys(self) -> int:
        """Limiter keys held in this process's memory (counters and blocked keys)."""
        return len(self.counts) + len(self._blocked)


def _ends(_key: str, end: float, _now: float) -> float:
    """A blocked key is held until its window ends."""
    return end


def memory_counter_cap(max_keys: int) -> int:
    """How many counters `MemoryCounts` may hold within a limiter of `max_keys` keys."""
    return max(1, max_keys - max(1, max_keys // 4))


@dataclass
class _Open:
    event: AuditEvent
    refusals: int
    timer: asyncio.TimerHandle | None


class RefusalLog:
    """Audits refusals: one row at once per key and window, one summary when it ends."""

    def __init__(self, audit_buffer: AuditBuffer, max_keys: int) -> None:
        self.audit_buffer = audit_buffer
        self.max_keys = max_keys
        self._open: dict[str, _Open] = {}  # open windows, oldest first (insertion order)

    def refused(self, key: str, window_remaining: float, event: AuditEvent) -> None:
        """Record one refusal for `key` (a limiter key hash or a fixed name) whose window
        ends in `window_remaining` seconds; `event` is the row to write if it is the
        first refusal of the window."""
        entry = self._open.get(key)
        if entry is not None:
            entry.refusals += 1
            return
        self.audit_buffer.add(replace(event, details={**event.details, "refusals": 1}))
        while len(self._open) >= self.max_keys:
            self._close(next(iter(self._open)))
        timer = None
        try:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(max(0.0, window_remaining), self._close, key)
        except RuntimeError:  # no loop (direct calls in scripts): summarised on eviction
            pass
        self._open[key] = _Open(event, 1, timer)

    def _close(self, key: str) -> None:
        entry = self._open.pop(key, None)
        if entry is None:
            return
        if entry.timer is not None:
            entry.timer.cancel()
        if entry.refusals > 1:
            self.audit_buffer.add(
                AuditEvent(
                    entry.event.action,
                    entry.event.context,
                    client_id=entry.event.client_id,
                    subject=entry.event.subject,
                    grant_type=entry.event.grant_type,
                    risk_score=entry.event.risk_score,
                    flags=[*entry.event.flags, "summary"],
                    details={**entry.event.details, "refusals": entry.refusals, "summary": True},
                )
            )

    def close_all(self) -> None:
        """Write the summaries of every open window now (shutdown)."""
        for key in list(self._open):
            self._close(key)

    def __len__(self) -> int:
        return len(self._open)
