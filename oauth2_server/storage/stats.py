"""The queries behind the statistics (issue #14 item 4), each on an index, none a scan of
the whole audit trail:

- `live_access_tokens`, `live_refresh_tokens`: unexpired, unrevoked token rows (the
  `expires_at` indexes; the janitor deletes expired rows) grouped by client (and grant
  type), the largest groups first;
- `hourly_counts`: audit rows of some actions per UTC hour: settled hours from the rollup
  table `oauth2_stats_hourly` (each counted once, from the `(action, created_at, id)`
  index, then stored), the last hour or two from that index (index-only on PostgreSQL);
- `failed_client_auth`: `client_auth_failed` rows per registered client (others under
  null), settled hours from the same rollup, the rest from the same index range;
- `branches_needing_consent`: branches linked to a grant marked `needs_consent`.

Every list is cut at `limit` groups and says whether it was (`truncated`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from oauth2_server.db.models import (
    AccessToken,
    BranchUpstreamLink,
    Client,
    RefreshToken,
    StatsHourly,
    TokenLog,
    UpstreamCredential,
)

HOUR = timedelta(hours=1)
# Seconds after its end an hour's audit rows are taken as complete and rolled up: well
# past OAUTH2_AUDIT_SEAL_DELAY's default (60 s), the bound on a row's commit after its
# timestamp that sealing relies on too.
SETTLE = 600
KEEP = timedelta(days=7)  # rollup rows older than the window by more than this go
FAILED = "client_auth_failed"
ROLLED_UP = ("issued", "refreshed", "exchanged", "token_revoked", FAILED)
ALL_CLIENTS = ""  # the rollup's `client_id` of a row counting every client
UNKNOWN_CLIENT = "?"  # ... of failures whose claimed id names no registered client


def _top_groups(
    session: Session, columns: tuple[Any, ...], where: tuple[Any, ...], limit: int
) -> dict[str, Any]:
    """Rows matching `where` grouped by `columns`: `{"groups": [{name: value, …, "count":
    n}], "truncated": bool, "total": n}` with the `limit` largest groups (count
    descending, then the values) and the total over all groups. One statement and one
    pass over the rows: the total comes with each group as a window sum, so only
    `limit + 1` rows leave the database, however many groups there are."""
    count = func.count().label("count")
    total = func.sum(func.count()).over().label("total")
    rows = session.execute(
        select(*columns, count, total)
        .where(*where)
        .group_by(*columns)
        .order_by(count.desc(), *columns)
        .limit(limit + 1)
    ).all()
    names = tuple(column.key for column in columns)
    items = [{**dict(zip(names, row[:-2], strict=True)), "count": int(row[-2])} for row in rows]
    return {
        "groups": items[:limit],
        "truncated": len(items) > limit,
        "total": int(rows[0][-1]) if rows else 0,
    }


def live_access_tokens(session: Session, now: datetime, limit: int) -> dict[str, Any]:
    """Live access tokens (not expired at `now`, not revoked) per (client_id,
    grant_type), the `limit` largest groups, and `total`: one pass over the live rows
    (the janitor deletes expired ones)."""
    return _top_groups(
        session,
        (AccessToken.client_id, AccessToken.grant_type),
        (AccessToken.expires_at > now, AccessToken.revoked_at.is_(None)),
        limit,
    )


def live_refresh_tokens(session: Session, now: datetime, limit: int) -> dict[str, Any]:
    """Live refresh tokens (current in their family: not rotated, not revoked, not
    expired at `now`) per client_id, the `limit` largest groups, and `total`."""
    live = (
        RefreshToken.expires_at > now,
        RefreshToken.rotated_at.is_(None),
        RefreshToken.revoked_at.is_(None),
    )
    return _top_groups(session, (RefreshToken.client_id,), live, limit)


def _hour_of(session: Session) -> Any:
    """`created_at` truncated to its UTC hour as text `YYYY-MM-DD HH`, per dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(
            func.timezone("UTC", TokenLog.created_at), literal_column("'YYYY-MM-DD HH24'")
        )
    return func.strftime("%Y-%m-%d %H", TokenLog.created_at)


def _hour_start(bucket: str) -> datetime:
    return datetime.strptime(bucket, "%Y-%m-%d %H").replace(tzinfo=UTC)


def _in_range(since: datetime, until: datetime) -> tuple[Any, ...]:
    return (TokenLog.created_at >= since, TokenLog.created_at < until)


def _counted(
    session: Session, actions: tuple[str, ...], since: datetime, until: datetime
) -> dict[tuple[str, datetime], int]:
    """Audit rows of `actions` created in [`since`, `until`) per (action, UTC hour
    start), from the `(action, created_at, id)` index; hours without rows absent."""
    hour = _hour_of(session).label("hour")
    rows = session.execute(
        select(TokenLog.action, hour, func.count())
        .where(TokenLog.action.in_(actions), *_in_range(since, until))
        .group_by(TokenLog.action, hour)
    ).all()
    return {(action, _hour_start(bucket)): int(n) for action, bucket, n in rows}


def _failures_by_client(
    session: Session, since: datetime, until: datetime
) -> dict[tuple[str, datetime], int]:
    """`client_auth_failed` rows created in [`since`, `until`) per (client, UTC hour
    start): the client id when it names a registered client, else UNKNOWN_CLIENT (an
    unknown or unreadable id: the caller's text, never a group of its own)."""
    hour = _hour_of(session).label("hour")
    client = func.coalesce(Client.client_id, UNKNOWN_CLIENT).label("client")
    rows = session.execute(
        select(client, hour, func.count())
        .select_from(TokenLog)
        .outerjoin(Client, Client.client_id == TokenLog.client_id)
        .where(TokenLog.action == FAILED, *_in_range(since, until))
        .group_by(client, hour)
    ).all()
    return {(client_id, _hour_start(bucket)): int(n) for client_id, bucket, n in rows}


def _settled(since: datetime, until: datetime, now: datetime) -> tuple[list[datetime], datetime]:
    """The hour starts in [`since`, `until`) that ended SETTLE seconds before `now`, and
    where the unsettled rest begins."""
    hours = [since + i * HOUR for i in range(int((until - since) / HOUR))]
    settled = [h for h in hours if h + HOUR <= now - timedelta(seconds=SETTLE)]
    return settled, (settled[-1] + HOUR if settled else since)


def _fill(session: Session, hours: list[datetime]) -> None:
    """Store the rollup of `hours` (settled hour starts) not stored yet, counted once from
    the audit rows: per action of ROLLED_UP one `client_id = ''` row (zeros included, it
    also marks the hour as stored), and failed client authentications per client.
    `INSERT … ON CONFLICT DO NOTHING`, so concurrent readers store the same rows once."""
    stored = set(
        session.scalars(
            select(StatsHourly.hour).where(
                StatsHourly.hour >= hours[0],
                StatsHourly.hour <= hours[-1],
                StatsHourly.action == FAILED,
                StatsHourly.client_id == ALL_CLIENTS,
            )
        )
    )
    missing = [h for h in hours if h not in stored]
    if not missing:
        return
    since, until = missing[0], missing[-1] + HOUR
    counts = _counted(session, ROLLED_UP, since, until)
    failures = _failures_by_client(session, since, until)
    values = [
        {"hour": h, "action": a, "client_id": ALL_CLIENTS, "count": counts.get((a, h), 0)}
        for h in missing
        for a in ROLLED_UP
    ] + [
        {"hour": h, "action": FAILED, "client_id": c, "count": n}
        for (c, h), n in failures.items()
        if h in missing
    ]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(StatsHourly).values(values).on_conflict_do_nothing())
    session.execute(delete(StatsHourly).where(StatsHourly.hour < hours[0] - KEEP))


def _rolled_up(session: Session, hours: list[datetime], per_client: bool) -> list[Any]:
    """Stored rollup rows (action, client_id, hour, count) of `hours`: the all-clients
    rows, or (`per_client`) the failed client authentications per client."""
    if not hours:
        return []
    client = (
        StatsHourly.client_id != ALL_CLIENTS
        if per_client
        else (StatsHourly.client_id == ALL_CLIENTS)
    )
    return list(
        session.execute(
            select(
                StatsHourly.action, StatsHourly.client_id, StatsHourly.hour, StatsHourly.count
            ).where(StatsHourly.hour >= hours[0], StatsHourly.hour <= hours[-1], client)
        ).all()
    )


def hourly_counts(
    session: Session, since: datetime, until: datetime, now: datetime
) -> dict[tuple[str, datetime], int]:
    """Audit rows of each action of ROLLED_UP per (action, UTC hour start) for the hours
    in [`since`, `until`) (aligned to hours); absent keys are 0.

    Hours that ended more than SETTLE seconds before `now` come from the rollup
    `oauth2_stats_hourly` (stored on first need, `_fill`); the rest, at most the current
    hour and the one before, is counted from the audit rows' `(action, created_at, id)`
    index. Writes rollup rows: run it in a transaction that commits."""
    settled, rest = _settled(since, until, now)
    if settled:
        _fill(session, settled)
    counts = {(a, h): n for a, _, h, n in _rolled_up(session, settled, False)}
    if rest < until:
        counts.update(_counted(session, ROLLED_UP, rest, until))
    return counts


def failed_client_auth(
    session: Session, since: datetime, until: datetime, now: datetime, limit: int
) -> dict[str, Any]:
    """Failed client authentications (`client_auth_failed` rows) in [`since`, `until`)
    (aligned to hours) per client, the `limit` largest groups, and `total`. A claimed id
    that names no registered client, or none, counts under `client_id` null. Settled
    hours from the rollup, the rest from the audit rows (as `hourly_counts`)."""
    settled, rest = _settled(since, until, now)
    if settled:
        _fill(session, settled)
    per_client: dict[str, int] = {}
    for _, client_id, _, n in _rolled_up(session, settled, True):
        per_client[client_id] = per_client.get(client_id, 0) + n
    if rest < until:
        for (client_id, _), n in _failures_by_client(session, rest, until).items():
            per_client[client_id] = per_client.get(client_id, 0) + n
    ordered = sorted(per_client.items(), key=lambda item: (-item[1], item[0]))
    groups = [{"client_id": None if c == UNKNOWN_CLIENT else c, "count": n} for c, n in ordered]
    return {
        "groups": groups[:limit],
        "truncated": len(groups) > limit,
        "total": sum(per_client.values()),
    }


def branches_needing_consent(session: Session, limit: int) -> dict[str, Any]:
    """Branches whose linked grant needs consent: `items` (`branch_id`, `provider`,
    `reason`: the grant's consent error) by branch id, at most `limit`, and `total`."""
    joined = (
        select(BranchUpstreamLink.branch_id, BranchUpstreamLink.provider)
        .join(UpstreamCredential, UpstreamCredential.id == BranchUpstreamLink.credential_id)
        .where(UpstreamCredential.needs_consent.is_(True))
    )
    rows = session.execute(
        joined.add_columns(UpstreamCredential.consent_error)
        .order_by(BranchUpstreamLink.branch_id, BranchUpstreamLink.provider)
        .limit(limit + 1)
    ).all()
    items = [{"branch_id": b, "provider": p, "reason": reason} for b, p, reason in rows]
    total = session.scalar(select(func.count()).select_from(joined.subquery()))
    return {"items": items[:limit], "total": int(total or 0), "truncated": len(items) > limit}
