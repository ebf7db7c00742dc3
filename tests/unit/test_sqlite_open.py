"""Opening an SQLite database that cannot be opened (`db.engine.open_aiosqlite`): the
error reaches the caller only once aiosqlite's worker thread has stopped, so a caller
that closes its event loop right away (the CLI's `asyncio.run`) gets no "Event loop is
closed" traceback from that thread after its one-line error."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiosqlite.core
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from oauth2_server.db.engine import create_engine


@pytest.fixture
def slow_worker_stop(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """aiosqlite's worker threads, each slow (0.3 s) to run the stop a failed open queues:
    what a busy machine does, made certain. Returns the threads started."""
    started: list[threading.Thread] = []
    original = aiosqlite.core._connection_worker_thread

    class SlowStop:
        def __init__(self, queue: Any) -> None:
            self.queue = queue

        def get(self) -> Any:
            item = self.queue.get()
            if "close_and_stop" in getattr(item[1], "__qualname__", ""):
                time.sleep(0.3)
            return item

    def worker(queue: Any) -> None:
        started.append(threading.current_thread())
        original(SlowStop(queue))

    monkeypatch.setattr(aiosqlite.core, "_connection_worker_thread", worker)
    return started


def test_failed_sqlite_open_leaves_no_thread_posting_to_a_closed_loop(
    tmp_path, slow_worker_stop, monkeypatch
):
    failures: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'no' / 'such' / 'x.db'}")

    async def open_and_fail() -> None:
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    with pytest.raises(OperationalError, match="unable to open database file"):
        asyncio.run(open_and_fail())  # closes its loop as soon as the error is raised
    assert slow_worker_stop, "the engine did not open SQLite through aiosqlite"
    for thread in slow_worker_stop:
        thread.join(5)
        assert not thread.is_alive()
    assert failures == []
