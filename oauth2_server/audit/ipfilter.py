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

A network with host bits set (`10.0.0.1/8`) is refused rather than widened, so a typo
cannot silently match a whole /8. An IPv4 network never matches an IPv6 address
(IPv4-mapped ones included), as in PostgreSQL.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import func, literal_column
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
