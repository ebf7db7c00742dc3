"""Helpers of the refresh worker and grant health tests (issue #14 items 1-2): provider
calls per account, typed reads and writes of a branch's grant, outbox events."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from oauth2_server.db.models import UpstreamCredential
from tests.fake_google import credential_of


def refreshes_by_account(google: Any) -> Counter[str]:
    """Access tokens the stand-in issued per account `sub`, less the connection's own."""
    issued = Counter(account.sub for account in google.access_tokens.values())
    return Counter({sub: n - 1 for sub, n in issued.items()})


def wait_for(check: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `check()` every 0.1 s until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def set_grant(db: Any, branch_id: str, provider: str = "google", **values: Any) -> None:
    """Set columns of the branch's grant directly (typed, as the server stores them)."""
    with db.session() as session:
        session.execute(
            update(UpstreamCredential)
            .where(UpstreamCredential.id == credential_of(db, branch_id, provider)["id"])
            .values(**values)
        )


def grant(db: Any, branch_id: str, provider: str = "google") -> Any:
    """The branch's grant row, typed (times are aware datetimes on both backends)."""
    with db.session() as session:
        row = session.execute(
            select(UpstreamCredential).where(
                UpstreamCredential.id == credential_of(db, branch_id, provider)["id"]
            )
        ).scalar_one()
        session.expunge(row)  # loaded, kept readable after the session ends
        return row


def make_due(db: Any, branch_id: str, seconds_left: int = 300, provider: str = "google") -> None:
    """Let the branch's stored access token expire in `seconds_left` (issued an hour
    before its expiry, so it looks old rather than short-lived)."""
    expires = datetime.now(UTC) + timedelta(seconds=seconds_left)
    set_grant(
        db,
        branch_id,
        provider,
        access_expires_at=expires,
        access_issued_at=expires - timedelta(seconds=3599),
    )


def outbox_events(db: Any, subject: str) -> list[str]:
    rows = db.rows(
        "SELECT event_type FROM oauth2_webhook_outbox WHERE subject = :s ORDER BY created_at",
        s=subject,
    )
    return [row[0] for row in rows]
