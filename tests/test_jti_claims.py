"""Single-use `jti` claims through the hot path (`storage.protocols.JtiClaims`; RFC 9449
§11.1, RFC 7523 §3 item 7), against the real database of each backend: `PgFastStore`'s
coalesced statement on PostgreSQL, `FastStore`'s session on SQLite.

The live-server cases (a replayed proof or assertion, one proof sent in parallel, replay
across instances) are in tests/test_dpop.py, tests/test_private_key_jwt.py and
tests/test_hostile_par_dpop.py; this module drives the store directly so that many claims
of one key are certain to share one coalesced statement (PostgreSQL: two statements in
flight per process, the rest wait and go out together in the next one).
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import create_async_engine

from oauth2_server.storage.errors import DatabaseUnavailable
from oauth2_server.storage.fastpath import FastStore
from oauth2_server.storage.used_jtis import jti_digest
from tests.conftest import free_port, skip_unless_postgresql

CONCURRENT = 16


async def _claims(url: str, keys: list[str], expires_at: datetime) -> tuple[str, list[bool]]:
    """Claim every key of `keys` at once (concurrent tasks); the store's class name and
    the answers, in order."""
    engine = create_async_engine(url)
    store = await FastStore.create(engine, 2, timeout=10)
    try:
        answers = await asyncio.gather(*(store.claim_jti(key, expires_at) for key in keys))
    finally:
        await store.close()
        await engine.dispose()
    return type(store).__name__, list(answers)


def _count(db: Any, key: str) -> int:
    return db.count("oauth2_used_jtis", "jti_hash = :h", h=jti_digest(key))


@pytest.mark.parametrize("shared_first", [True, False], ids=["in-flight", "queued"])
def test_one_key_claimed_at_once_many_times_is_won_once(db, shared_first):
    """16 concurrent claims of one key and 16 of distinct keys: exactly one True for the
    shared key, True for each distinct one; each recorded row is there for another
    connection (committed) and a later claim of any of them is a replay.

    On PostgreSQL the first two claims go out alone (two statements in flight) and the
    rest wait and go out together in one statement. `in-flight`: the shared key is among
    the first two, so its queued copies meet the row in the database. `queued`: the
    first two are distinct keys, so all 16 copies of the shared key are in one statement
    where none is recorded yet: only the store's own de-duplication keeps 15 of them
    from winning too."""
    shared = [f"dpop:jkt:{secrets.token_hex(8)}"] * CONCURRENT
    distinct = [f"client_assertion:c:{secrets.token_hex(8)}" for _ in range(CONCURRENT)]
    keys = shared + distinct if shared_first else distinct + shared
    expires_at = datetime.now(UTC) + timedelta(minutes=5)
    store, answers = asyncio.run(_claims(db.url, keys, expires_at))
    assert store == ("PgFastStore" if db.backend == "postgresql" else "FastStore")
    won = dict(zip(keys, answers, strict=True))
    assert [answer for key, answer in zip(keys, answers, strict=True) if key == shared[0]].count(
        True
    ) == 1, answers
    assert all(won[key] for key in distinct), answers
    assert all(_count(db, key) == 1 for key in [shared[0], *distinct])
    _, again = asyncio.run(_claims(db.url, [shared[0], distinct[0]], expires_at))
    assert again == [False, False]


def test_a_naive_expiry_is_refused_before_anything_is_written(db):
    """As `UTCDateTime` refuses it (SQLAlchemy wraps the ValueError on SQLite)."""
    key = f"dpop:jkt:{secrets.token_hex(8)}"
    naive = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=5)
    with pytest.raises((ValueError, StatementError), match="naive datetime"):
        asyncio.run(_claims(db.url, [key], naive))
    assert _count(db, key) == 0


def test_an_unreachable_database_is_database_unavailable(database):
    """A claim that cannot reach PostgreSQL raises DatabaseUnavailable (the token endpoint
    answers 503 temporarily_unavailable), never a replay's False nor a True."""
    skip_unless_postgresql(database)
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(_claims(url, [f"dpop:jkt:{secrets.token_hex(8)}"], datetime.now(UTC)))
