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
- `drop_month` drops a month past retention once the hash chain has sealed all of it,
  moving the chain's anchor to its last sealed row, in one transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from oauth2_server.audit.chain import lock_chain, move_anchor

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


def drop_month(session: Session, partition: Partition) -> int | None:
    """Drop a partition whose rows are all sealed, moving the chain's anchor to its last
    sealed row. Returns rows dropped, or None when the chain is not sealed through the
    partition yet or another sealer holds the chain (try again later)."""
    state = lock_chain(session)
    if state is None or state.head_position is None:
        return None
    pending = session.execute(
        text(
            f"SELECT 1 FROM {partition.name} "  # noqa: S608
            "WHERE (created_at, id) > (:created, :id) LIMIT 1"
        ),
        {"created": state.head_position[0], "id": state.head_position[1]},
    ).first()
    if pending is not None:
        return None
    last = session.execute(
        text(
            f"SELECT seal_seq, row_hash, created_at, id FROM {partition.name} "  # noqa: S608
            "WHERE seal_seq IS NOT NULL ORDER BY created_at DESC, id DESC LIMIT 1"
        )
    ).first()
    count = int(session.scalar(text(f"SELECT count(*) FROM {partition.name}")) or 0)  # noqa: S608
    if last is not None:
        move_anchor(session, state, last)
    session.execute(text(f"DROP TABLE {partition.name}"))
    return count
