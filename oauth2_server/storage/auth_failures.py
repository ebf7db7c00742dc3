"""Counters of the failure limiter (`oauth2_auth_failures`), one per hashed key.

Each key has a fixed window that starts with its first counted attempt and lasts `window`
seconds; `add` counts one attempt for several keys at once and returns each key's count in
its window. Two implementations of `FailureCounts`:

- `PostgresCounts`: the table, shared by every worker and instance (DESIGN.md invariant
  9). One statement per call over the hot path's asyncpg pool:
  `INSERT … ON CONFLICT (key_hash) DO UPDATE … RETURNING count`, keys in sorted order (so
  concurrent calls lock rows in one order), with PostgreSQL's clock, so instances agree.
- `MemoryCounts`: per process, a `cachetools.TLRUCache` of at most `max_keys` keys (the
  least recently counted go first, ended windows at once); the embedded SQLite default
  uses it, so there each worker counts its own.

The janitor deletes rows whose window has ended (`delete_ended`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from cachetools import TLRUCache
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from oauth2_server.db.models import AuthFailure


@dataclass(frozen=True)
class WindowCount:
    """One key's attempts in its current window: `count` (this one included),
    `remaining` seconds of the window, and `window_start` (what `subtract` matches)."""

    key_hash: str
    count: int
    remaining: float
    window_start: Any


class FailureCounts(Protocol):
    """Counting attempts per hashed key in fixed windows (see the module docstring)."""

    async def add(self, key_hashes: Sequence[str], window: float) -> list[WindowCount]:
        """Count one attempt for each key (distinct); their counts in their windows."""
        ...

    async def subtract(self, counts: Sequence[WindowCount]) -> None:
        """Take back one attempt of each key, if its window is still the same one."""
        ...

    def __len__(self) -> int:
        """Keys held in this process's memory."""
        ...


_ADD_PG = """
INSERT INTO oauth2_auth_failures AS f (key_hash, window_start, count)
SELECT k, now(), 1 FROM unnest($1::varchar[]) AS k ORDER BY k
ON CONFLICT (key_hash) DO UPDATE SET
    count = CASE WHEN f.window_start > now() - make_interval(secs => $2)
                 THEN f.count + 1 ELSE 1 END,
    window_start = CASE WHEN f.window_start > now() - make_interval(secs => $2)
                        THEN f.window_start ELSE now() END
RETURNING key_hash, count,
    extract(epoch FROM f.window_start + make_interval(secs => $2) - now())::float8,
    window_start
"""

_SUBTRACT_PG = """
WITH locked AS (
    SELECT f.key_hash FROM oauth2_auth_failures AS f
    JOIN unnest($1::varchar[], $2::timestamptz[]) AS r(k, ws)
      ON f.key_hash = r.k AND f.window_start = r.ws
    WHERE f.count > 0
    ORDER BY f.key_hash
    FOR UPDATE OF f
)
UPDATE oauth2_auth_failures AS f SET count = f.count - 1
FROM locked WHERE f.key_hash = locked.key_hash
"""


class PostgresCounts:
    """`FailureCounts` in `oauth2_auth_failures`, through an asyncpg pool. `availability`
    (the FastStore's, optional) turns a connection failure into `DatabaseUnavailable`."""

    def __init__(self, pool: Any, availability: Any = None) -> None:
        self.pool = pool
        self.availability = availability

    async def _run(self, method: str, sql: str, *args: Any) -> Any:
        try:
            async with self.pool.acquire() as connection:
                return await getattr(connection, method)(sql, *args)
        except Exception as exc:
            outage = self.availability.translate(exc) if self.availability else None
            if outage is None:
                raise
            raise outage from exc

    async def add(self, key_hashes: Sequence[str], window: float) -> list[WindowCount]:
        rows = await self._run("fetch", _ADD_PG, sorted(set(key_hashes)), float(window))
        return [WindowCount(row[0], row[1], max(0.0, row[2]), row[3]) for row in rows]

    async def subtract(self, counts: Sequence[WindowCount]) -> None:
        if counts:
            await self._run(
                "execute",
                _SUBTRACT_PG,
                [c.key_hash for c in counts],
                [c.window_start for c in counts],
            )

    def __len__(self) -> int:
        return 0


class _Window(NamedTuple):
    """One key's window in `MemoryCounts` (`timer` seconds) and its attempts."""

    start: float
    end: float
    count: int


def _window_end(_key: str, window: _Window, _now: float) -> float:
    return window.end


class MemoryCounts:
    """`FailureCounts` in this process: at most `max_keys` keys, least recently counted
    dropped first; a key's window is gone once it has ended (`timer`: monotonic seconds)."""

    def __init__(self, max_keys: int, timer: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self._rows: TLRUCache[str, _Window] = TLRUCache(max_keys, _window_end, timer)

    async def add(self, key_hashes: Sequence[str], window: float) -> list[WindowCount]:
        now = self._rows.timer()
        found = []
        for key in dict.fromkeys(key_hashes):
            row = self._rows.get(key) or _Window(now, now + window, 0)
            self._rows[key] = row = row._replace(count=row.count + 1)
            found.append(WindowCount(key, row.count, row.end - now, row.start))
        return found

    async def subtract(self, counts: Sequence[WindowCount]) -> None:
        for counted in counts:
            row = self._rows.get(counted.key_hash)
            if row is not None and row.start == counted.window_start and row.count > 0:
                self._rows[counted.key_hash] = row._replace(count=row.count - 1)

    def __len__(self) -> int:
        return len(self._rows)


def delete_ended(session: Session, before: datetime, limit: int) -> int:
    """Delete up to `limit` counters whose window started before `before` (UTC), i.e.
    ended windows when `before` is now minus the longest window. Returns rows deleted."""
    keys = (
        select(AuthFailure.key_hash)
        .where(AuthFailure.window_start < before)
        .limit(limit)
        .scalar_subquery()
    )
    return session.execute(
        delete(AuthFailure)
        .where(AuthFailure.key_hash.in_(keys))
        .execution_options(synchronize_session=False)
    ).rowcount
