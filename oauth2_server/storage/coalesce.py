"""Coalescing concurrent hot-path statements on PostgreSQL (DESIGN.md "Performance facts").

At most `limit` statements of one kind in flight per worker; work that arrives meanwhile
waits and goes out together in the next statement (at most `MAX_BATCH` items). No waiting
when idle. Every caller gets its own answer, or the exception of the statement its work
was in.

Each statement is measured: requests it carried in `oauth2_db_batch_size{statement}`, its
time (pool wait included; for an issue write, the commit) in
`oauth2_db_statement_seconds{statement}`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from oauth2_server import metrics

K = TypeVar("K")
V = TypeVar("V")

# Requests per coalesced statement (well under PostgreSQL's 32767 bind parameters).
MAX_BATCH = 64


class Coalescer(Generic[K, V]):
    """Batches concurrent keyed calls: at most `limit` `run_many` calls in flight per
    process; keys that arrive meanwhile wait and go together in the next call (at most
    `MAX_BATCH`). `run_many(keys)` returns {key: value} (missing keys answer None); when
    it raises, every caller of that batch gets the exception. Equal keys share one
    entry (reads); a write's key is an object hashed by identity, so each is its own.
    `name` labels the statement's metrics; default `run_many`'s name without leading
    underscores and a `_many` suffix (`_write_many` → `write`).
    """

    def __init__(
        self,
        run_many: Callable[[list[K]], Awaitable[dict[K, V]]],
        limit: int,
        name: str | None = None,
    ) -> None:
        self.run_many = run_many
        self.limit = limit
        self.name = name or statement_name(run_many)
        self._batch_size = metrics.DB_BATCH_SIZE.labels(self.name)
        self._seconds = metrics.DB_STATEMENT.labels(self.name)
        self._waiting: list[tuple[K, asyncio.Future[V | None]]] = []
        self._running = 0

    async def get(self, key: K) -> V | None:
        """`key`'s value from the batch it joined (None if `run_many` returned none);
        raises what that batch's `run_many` raised."""
        found: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, found))
        if self._running < self.limit:
            self._running += 1
            try:
                await self._drain()
            finally:
                self._running -= 1
        return await found

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            self._batch_size.observe(len(batch))
            started = time.perf_counter()
            try:
                values = await self.run_many(list(dict.fromkeys(key for key, _ in batch)))
            except Exception as exc:  # every caller of the batch fails with it
                self._seconds.observe(time.perf_counter() - started)
                for _, found in batch:
                    if not found.done():
                        found.set_exception(exc)
                continue
            self._seconds.observe(time.perf_counter() - started)
            for key, found in batch:
                if not found.done():
                    found.set_result(values.get(key))


def statement_name(run_many: Callable[..., object]) -> str:
    """`_write_many` → `write`: a metric label from a batch function's name."""
    name = getattr(run_many, "__name__", "") or "statement"
    return name.strip("_").removesuffix("_many") or "statement"
