"""The hot path's storage rules, without a server (issue #10 "One path per row")."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from oauth2_server.audit.log import AuditEvent
from oauth2_server.db.models import AccessToken, TokenLog
from oauth2_server.storage.coalesce import Coalescer
from oauth2_server.storage.fastpath import split_pool_size
from oauth2_server.storage.fastpath_pg import pg_values
from oauth2_server.storage.protocols import IssueBatch
from oauth2_server.storage.tokens import (
    ACCESS_TOKEN_COLUMNS,
    AccessTokenRecord,
    access_token_values,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _record(**changes: object) -> AccessTokenRecord:
    values: dict[str, object] = {
        "jti": "j1",
        "client_id": "c1",
        "subject": "c1",
        "user_id": None,
        "scope": "read",
        "grant_type": "client_credentials",
        "family_id": None,
        "issued_at": NOW,
        "expires_at": NOW + timedelta(seconds=300),
        "revoked_at": None,
    }
    values.update(changes)
    return AccessTokenRecord(**values)  # type: ignore[arg-type]


def test_asyncpg_values_refuse_a_naive_datetime_like_utc_datetime() -> None:
    row = access_token_values(_record(expires_at=datetime(2026, 1, 2, 3, 4, 5)))  # noqa: DTZ001
    with pytest.raises(ValueError, match="naive datetime"):
        pg_values(AccessToken.__table__, row, list(row))


def test_asyncpg_values_are_utc_and_json_as_text() -> None:
    paris = timezone(timedelta(hours=1))
    row = access_token_values(_record(issued_at=NOW.astimezone(paris)))
    values = dict(zip(row, pg_values(AccessToken.__table__, row, list(row)), strict=True))
    assert values["issued_at"] == NOW and values["issued_at"].utcoffset() == timedelta(0)
    audit = AuditEvent("issued", details={"scope": "read"}, created_at=NOW).row()
    logged = dict(zip(audit, pg_values(TokenLog.__table__, audit, list(audit)), strict=True))
    assert logged["details"] == '{"scope": "read"}'
    assert logged["flags"] == "[]"


def test_access_token_row_is_defined_once() -> None:
    """Every writer binds the same columns every reader selects."""
    assert list(access_token_values(_record())) == [c.name for c in ACCESS_TOKEN_COLUMNS]


@pytest.mark.parametrize("pool_size", [1, 2, 3, 10, 11, 40])
def test_one_connection_budget_per_worker(pool_size: int) -> None:
    sessions, hot = split_pool_size(pool_size)
    assert sessions >= 1 and hot >= 1
    assert sessions + hot == max(2, pool_size)


def test_issue_batch_replays_its_rows_in_order() -> None:
    batch = IssueBatch()
    assert not batch
    batch.insert_access_token(_record())
    batch.record(AuditEvent("issued"), AuditEvent("issued"))
    seen: list[object] = []

    class Writer:
        def insert_access_token(self, record: AccessTokenRecord) -> None:
            seen.append(record.jti)

        def record(self, *events: AuditEvent) -> None:
            seen.extend(event.action for event in events)

    batch.write_to(Writer())
    assert seen == ["j1", "issued", "issued"]


def test_coalescer_batches_concurrent_keys_and_fails_the_whole_batch() -> None:
    calls: list[list[int]] = []

    async def run_many(keys: list[int]) -> dict[int, int]:
        calls.append(keys)
        await asyncio.sleep(0)
        if 13 in keys:
            raise RuntimeError("statement failed")
        return {key: key * 2 for key in keys}

    async def scenario() -> tuple[list[object], list[list[int]]]:
        coalescer: Coalescer[int, int] = Coalescer(run_many, 1)
        answers = await asyncio.gather(
            *(coalescer.get(key) for key in (1, 2, 2, 3)), return_exceptions=True
        )
        failed = await asyncio.gather(coalescer.get(12), coalescer.get(13), return_exceptions=True)
        return [*answers, *failed], calls

    answers, calls = asyncio.run(scenario())
    assert answers[:4] == [2, 4, 4, 6]
    assert calls[:2] == [[1], [2, 3]]  # the first alone, the rest together, 2 once
    assert answers[4] == 24  # its own batch succeeded
    assert isinstance(answers[5], RuntimeError)  # the failed statement's caller hears it
