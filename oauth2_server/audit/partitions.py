"""Monthly partitions of `oauth2_token_logs` on PostgreSQL (created by migration 0003).

Partitions are named `oauth2_token_logs_pYYYYMM` and cover one UTC month; the DEFAULT
partition `oauth2_token_logs_default` catches rows of a month without a partition, so a
janitor that did not run never makes an insert fail. Every DDL statement here runs with
a short `lock_timeout` and under a transaction-level advisory lock, so two janitors never
do the same work and a busy table makes the janitor retry later instead of queueing
token issuance behind it:

- `ensure_month` creates a month's partition as a plain table, moves that month's rows
  out of the default partition in one statement, and ATTACHes it (SHARE UPDATE
  EXCLUSIVE on the parent: inserts and queries continue);
- `drop_months` drops months past retention once the hash chain has sealed all of them
  and they are the start of the chain, with a signed retention record moving the chain's
  anchor to their last row, in one transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from oauth2_server.audit.chain import lock_chain
from oauth2_server.audit.retention import Policy, Removal, record_removal

TABLE = "oauth2_token_logs"
DEFAULT_PARTITION = f"{TABLE}_default"
NAME = re.compile(rf"^{TABLE}_p(\d{{4}})(\d{{2}})$")
ADVISORY_KEY = 0x6F61757468  # "oauth" in ASCII: partition maintenance of this table
LOCK_TIMEOUT = "5s"


def month_start(moment: datetime) -> datetime:
    """The first instant (UTC) of the month containing `moment`."""
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def add_months(month: datetime, count: int) -> datetime:
    """`month` (a month start) shifted by `count` months."""
    index = month.year * 12 + month.month - 1 + count
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(month: datetime) -> str:
    return f"{TABLE}_p{month:%Y%m}"


@dataclass(frozen=True)
class Partition:
    """An attached monthly partition: rows with `start` ≤ created_at < `end` (UTC)."""

    name: str
    start: datetime

    @property
    def end(self) -> datetime:
        """The start of the next month: the partition's exclusive upper bound."""
        return add_months(self.start, 1)


def monthly_partitions(session: Session) -> list[Partition]:
    """Attached monthly partitions, oldest first (the default partition excluded)."""
    names = session.scalars(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": TABLE},
    ).all()
    found = []
    for name in names:
        match = NAME.match(name)
        if match:
            start = datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)
            found.append(Partition(name, start))
    return sorted(found, key=lambda p: p.start)


def try_lock(session: Session) -> bool:
    """The transaction-level advisory lock for partition work (False: another janitor)."""
    session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    return bool(
        session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": ADVISORY_KEY})
    )


def months_in_default(session: Session) -> list[datetime]:
    """Months that have rows waiting in the default partition."""
    rows = session.scalars(
        text(
            f"SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC') "  # noqa: S608
            f"FROM {DEFAULT_PARTITION}"
        )
    ).all()
    return sorted(value.replace(tzinfo=UTC) for value in rows)


def ensure_month(session: Session, month: datetime) -> int:
    """Create and attach the partition of `month` (a month start) unless it exists,
    moving its rows out of the default partition. Returns rows moved (-1: existed)."""
    name = partition_name(month)
    if session.scalar(text("SELECT to_regclass(:name)"), {"name": name}) is not None:
        return -1
    bounds = {"lo": month, "hi": add_months(month, 1)}
    session.execute(text(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS)"))
    moved = session.execute(
        text(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} "  # noqa: S608
            "WHERE created_at >= :lo AND created_at < :hi RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved"
        ),
        bounds,
    ).rowcount
    lo, hi = (bounds[k].isoformat() for k in ("lo", "hi"))
    # a matching CHECK constraint lets ATTACH skip scanning the new table
    session.execute(
        text(
            f"ALTER TABLE {name} ADD CONSTRAINT {name}_bounds "
            f"CHECK (created_at >= '{lo}' AND created_at < '{hi}')"
        )
    )
    session.execute(
        text(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM ('{lo}') TO ('{hi}')")
    )
    session.execute(text(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bounds"))
    return max(moved, 0)


NOT_A_PREFIX = -1  # `drop_months`: the rows are not the start of the chain on their own


def _summary(session: Session, partitions: list[Partition]) -> Any:
    """Rows, sealed rows, seq range and time range of `partitions` together."""
    union = " UNION ALL ".join(
        f"SELECT seal_seq, created_at FROM {p.name}"  # noqa: S608
        for p in partitions
    )
    return session.execute(
        text(
            "SELECT count(*) AS total, count(seal_seq) AS sealed, min(seal_seq) AS first_seq, "  # noqa: S608
            "max(seal_seq) AS last_seq, min(created_at) AS from_at, max(created_at) AS to_at "
            f"FROM ({union}) AS expired"
        )
    ).one()


def drop_months(
    session: Session, partitions: list[Partition], policy: Policy, made: list[dict[str, Any]]
) -> int | None:
    """Drop `partitions` (consecutive months past retention) in one transaction, with a
    signed retention record (`audit.retention`, appended to `made` as JSON) moving the
    chain's anchor to their last row. Only a prefix of the chain goes: every row
    sealed, seqs exactly anchor+1..L.
    Returns rows dropped; None when a row is not sealed yet or another sealer holds the
    chain (try later); `NOT_A_PREFIX` when later months hold seqs in between (a
    straggler sealed late): try again with the next month included."""
    state = lock_chain(session)
    if state is None:
        return None
    summary = _summary(session, partitions)
    total = int(summary.total)
    if summary.sealed != total:
        return None
    if total and (
        summary.first_seq != state.anchor_seq + 1 or summary.last_seq - state.anchor_seq != total
    ):
        return NOT_A_PREFIX
    if total:
        union = " UNION ALL ".join(
            f"SELECT seal_seq, row_hash, created_at, id FROM {p.name} "  # noqa: S608
            "WHERE seal_seq = :last"
            for p in partitions
        )
        last = session.execute(text(union), {"last": summary.last_seq}).one()
        removal = Removal(
            int(summary.first_seq),
            int(summary.last_seq),
            total,
            summary.from_at,
            summary.to_at,
            last,
            [p.name for p in partitions],
        )
        made.append(record_removal(session, state, removal, policy))
    for partition in partitions:
        session.execute(text(f"DROP TABLE {partition.name}"))
    return total
