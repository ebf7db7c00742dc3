"""The `ip` filter of audit queries (issue #11 item 4): an address, or a network in CIDR
notation, on PostgreSQL and SQLite.

`oauth2_token_logs.ip` is text: the address as the server saw it (uvicorn's client host,
after trusted proxies), normally an address, but nothing guarantees it. So:

- an address (or a /32, /128) is an exact match on the text, in its compressed form,
  using the (`ip`, `created_at`, `id`) index;
- on PostgreSQL a network is `oauth2_inet(ip) <<= network`: `oauth2_inet` (migration
  0013) is the text as an `inet` host address (NULL when it is not one), under a B-tree
  index (`ix_oauth2_token_logs_inet`, whose statistics size the range), which PostgreSQL
  scans as one range for `<<=`. A text range would not do: IPv6 text is compressed, and
  IPv4 text ranges depend on the collation;
- on SQLite a network is the Python function `oauth2_ip_in(ip, network)`, registered on
  the connection by `prepare` before a query: a scan, fine at SQLite's sizes.

A page of a network filter on PostgreSQL (`network_page`): left to itself, the planner
either walks `created_at` in page order testing each row (fast when matches come often,
the whole table when they do not: 51 s at 10M rows for a /16 holding nothing), or reads
every row of the network through the inet index and sorts them (a heap page per row:
PostgreSQL cannot answer from an expression index alone). It picks by its estimate of
the network's size, which the histogram can get wrong by 10,000x. So a page is read in
time windows from where it starts, each expected (at the table's average rate) to hold 8
times as many rows as the one before, from 2,000, until the page is full or the range
ends. A narrow window is left to the planner: even a walk through it is short. A wide
one is read unordered (a MATERIALIZED CTE, sorted after), so no walk can stop early and
the inet index (`created_at`, its second column, checked in the index) wins: it reads
the network's index entries and one heap page per matching row in the window. A dense
network fills the first window; a sparse one costs a few index ranges. The rows and
their order are those of the plain query.

A network with host bits set (`10.0.0.1/8`) is refused rather than widened, so a typo
cannot silently match a whole /8. An IPv4 network never matches an IPv6 address
(IPv4-mapped ones included), as in PostgreSQL.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, literal_column, text
from sqlalchemy.orm import Session

from oauth2_server.audit.errors import AuditQueryError
from oauth2_server.db.models import TokenLog


def parse_ip(ip: str | None) -> str | None:
    """The `ip` filter: an address in its stored (compressed) form, or a network
    `addr/len` whose host bits are zero (`10.0.0.0/8`, `2001:db8::/32`; a /32 or /128 is
    its address). Raises AuditQueryError naming `ip`."""
    if ip is None:
        return None
    if len(ip) > 64:
        raise AuditQueryError("ip", "ip must be an IP address or a CIDR network")
    if "/" not in ip:
        try:
            return str(ipaddress.ip_address(ip))
        except ValueError:
            raise AuditQueryError("ip", f"ip {ip!r} is not an IP address") from None
    try:
        network = ipaddress.ip_network(ip)
    except ValueError:
        try:
            loose = ipaddress.ip_network(ip, strict=False)
        except ValueError:
            raise AuditQueryError("ip", f"ip {ip!r} is not an IP address or CIDR network") from None
        raise AuditQueryError(
            "ip", f"ip {ip!r} has host bits set: the network is {loose.with_prefixlen}"
        ) from None
    if network.num_addresses == 1:
        return str(network.network_address)
    return network.with_prefixlen


# SQLite: the function that tests an `ip` text against a network (registered on each
# connection that queries, `prepare`).
SQLITE_IP_IN = "oauth2_ip_in"


def ip_condition(dialect: str, ip: str) -> Any:
    """`ip` equal to an address, or inside a network (`a.b.c.d/n`, IPv6 too; an IPv4
    network never matches an IPv6 address, IPv4-mapped ones included)."""
    if "/" not in ip:
        return TokenLog.ip == ip
    if dialect == "postgresql":
        # The network as a constant, not a bind parameter: a prepared statement's generic
        # plan cannot tell a /24 from a /8 and walks the whole table for a narrow one.
        # Safe to inline: `parse_ip` normalized it (hex digits, '.', ':' and '/' only).
        network = str(ipaddress.ip_network(ip))
        if not set(network) <= _NETWORK_CHARACTERS:  # never: parse_ip normalized it
            raise AuditQueryError("ip", "ip must be an IP address or a CIDR network")
        return func.oauth2_inet(TokenLog.ip).op("<<=")(literal_column(f"'{network}'::inet"))
    return func.oauth2_ip_in(TokenLog.ip, ip) == 1


_NETWORK_CHARACTERS = set("0123456789abcdef.:/")

# The windows of a network page (`network_page`): the first is expected to hold
# FIRST_WINDOW_ROWS rows of the table (at the table's average rate), each next one
# WINDOW_GROWTH times as many; a window expected to hold at most WALK_ROWS rows is left
# to the planner (a walk in page order through it reads at most those), a wider one is
# read unordered (`unordered` of `read`), so that only the inet index can answer it cheaply.
FIRST_WINDOW_ROWS = 2_000
WINDOW_GROWTH = 8
WALK_ROWS = 20_000
TICK = timedelta(microseconds=1)  # PostgreSQL's timestamp resolution

Window = tuple[datetime, datetime]
# read(window, n, unordered): the first n rows of the page inside the window, in order
WindowReader = Callable[[Window, int, bool], Sequence[Any]]

# The table's oldest and newest `created_at` (index probes) and its estimated row count
# (ANALYZE statistics of its partitions, or of the table itself when it has none, which
# size the windows: never exact, never a table scan), in one round trip.
_TABLE_FACTS = text(
    "SELECT (SELECT min(created_at) FROM oauth2_token_logs),"
    " (SELECT max(created_at) FROM oauth2_token_logs),"
    " greatest("
    "  (SELECT coalesce(sum(reltuples) FILTER (WHERE reltuples > 0), 0) FROM pg_class"
    "   WHERE oid IN (SELECT inhrelid FROM pg_inherits"
    "    WHERE inhparent = 'oauth2_token_logs'::regclass)),"
    "  (SELECT greatest(reltuples, 0) FROM pg_class"
    "   WHERE oid = 'oauth2_token_logs'::regclass))"
)


def is_network(ip: str | None) -> bool:
    """True when the (parsed) `ip` filter is a network rather than one address."""
    return ip is not None and "/" in ip


def window_conditions(window: Window) -> list[Any]:
    """`created_at` inside [start, end), both as constants (custom plans: a generic plan
    of a prepared statement cannot tell an hour from a year). Safe to inline: ISO 8601
    text of datetimes."""
    start, end = (literal_column(f"'{moment.isoformat()}'::timestamptz") for moment in window)
    return [TokenLog.created_at >= start, TokenLog.created_at < end]


@dataclass(frozen=True)
class Span:
    """Where a page's rows can be: [start, end) of `created_at`, and the table's average
    rows per second (an estimate; 0 when unknown)."""

    start: datetime
    end: datetime
    rate: float


def network_page(span: Span | None, descending: bool, limit: int, read: WindowReader) -> list[Any]:
    """One page of a network filter on PostgreSQL, read in time windows (see the module
    docstring and FIRST_WINDOW_ROWS): `span` from `table_span`, narrowed to the keyset
    position (None: no row can be on the page). Returns at most `limit` rows, in page
    order."""
    rows: list[Any] = []
    if span is None:
        return rows
    start, end = span.start, span.end
    expected = float(FIRST_WINDOW_ROWS)
    while start < end and len(rows) < limit:
        seconds = expected / span.rate if span.rate > 0 else (end - start).total_seconds()
        width = timedelta(seconds=max(seconds, 1.0))
        if descending:
            window = (max(start, end - width), end)
            end = window[0]
        else:
            window = (start, min(end, start + width))
            start = window[1]
        unordered = span.rate <= 0 or expected > WALK_ROWS
        rows += read(window, limit - len(rows), unordered)
        expected *= WINDOW_GROWTH
    return rows


def table_span(session: Session, since: datetime | None, until: datetime | None) -> Span | None:
    """The `Span` holding every row's `created_at` within since / until: the table's
    oldest and newest narrowed by them, and its average rate; None when no row can
    match."""
    oldest, newest, rows = session.execute(_TABLE_FACTS).one()
    if oldest is None:
        return None
    start = max(oldest, since) if since else oldest
    end = min(newest + TICK, until) if until else newest + TICK
    if start >= end:
        return None
    seconds = max((newest - oldest).total_seconds(), 1.0)
    return Span(start, end, float(rows or 0) / seconds)


def _ip_in(value: str | None, network: str) -> int:
    if value is None:
        return 0
    try:
        return int(ipaddress.ip_address(value) in ipaddress.ip_network(network))
    except ValueError:  # not an address (another IP version is simply not inside)
        return 0


def prepare(session: Session) -> str:
    """The session's dialect name; on SQLite, also registers `oauth2_ip_in(ip, network)`
    (1 when the text `ip` is an address inside `network`) on its connection, which
    `ip_condition` uses. Call before running `conditions` on a session."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        raw = session.connection().connection.dbapi_connection
        raw.create_function(SQLITE_IP_IN, 2, _ip_in, deterministic=True)
    return dialect
