"""Audit query benchmark on a large `oauth2_token_logs` (PostgreSQL): one client's day,
and the first page of every filter of issue #11 item 4 and the watermark of item 7.

    python bench/audit_query.py --rows 10000000      # the issue's target: p95 < 200 ms
    python bench/audit_query.py --rows 200000        # a quick check that it works

It (re)creates a scratch database (`--database-url`, default
postgresql://postgres@127.0.0.1:5432/oauth2_bench_audit; it is DROPPED first), migrates
it to head (monthly partitions), creates the partitions of the last `--days` days the
way the janitor does, drops the table's secondary indexes, bulk-loads `--rows` rows with
`generate_series` in chunks (rows spread at random over `--days` days and `--clients`
clients, so a client-day holds rows / (clients × days) rows in random physical order),
rebuilds the indexes, ANALYZEs, and then times the admin API's query path
(`audit_query.query_rows` over asyncpg, exactly what GET /admin/audit runs) for
`--samples` random (client, day) pairs: the first page (limit 100) and the whole day
(keyset pages of 1000). Then, for `--samples` random values each, the first page (limit
100) of each filter alone: `client_id`, `target_client_id` (1 row in 100 is an admin
change), `target_subject` (200 rows per user), `target_branch_id` (5,000 per branch),
`family_id`, `token_id`, `request_id` (1 row each), `ip` as an IPv4 /24 (~180 rows) and
/16 (~40,000; the 1 in 10 with a%10=0 holds none: those rows are IPv6), a /16 holding
nothing, a /12 (~640,000), 10.0.0.0/8 (~9M) and an IPv6 /48 (~240), `since=-1h`
(~4,600), the watermark `after=SEQ`
(`seal_seq` is loaded as the row number: the rows are not really sealed), and
`summary group_by=action,ip,client_id since=-1h`. Prints p50 / p95 / max in ms per
case and the plan of one CIDR query, and exits 1 when a p95 is above `--target-ms`
(default 200).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import indexes_rebuilt  # noqa: E402
from oauth2_server.audit import partitions as audit_partitions  # noqa: E402
from oauth2_server.audit.query import AuditFilter, query_rows  # noqa: E402
from oauth2_server.audit.summary import summarize  # noqa: E402
from oauth2_server.audit.watermark import watermark_rows  # noqa: E402
from oauth2_server.crypto.keyring import generate_key_spec  # noqa: E402
from oauth2_server.db.engine import create_engine as create_async  # noqa: E402
from oauth2_server.db.engine import create_sessionmaker  # noqa: E402

LOAD = """
INSERT INTO oauth2_token_logs (created_at, action, client_id, subject, branch_id, grant_type,
    token_id, ip, user_agent, request_id, risk_score, flags, details, family_id, seal_seq)
SELECT :now - random() * make_interval(days => :days),
       CASE WHEN g % 100 = 0 THEN 'admin_client_updated'
            ELSE (ARRAY['issued', 'refreshed', 'introspected', 'revoked'])[1 + g % 4] END,
       'client-' || lpad((floor(random() * :clients))::int::text, 5, '0'),
       'user-' || (g % 50000),
       'branch-' || (g % 2000),
       'client_credentials',
       md5(g::text),
       CASE WHEN g % 10 = 0 THEN '2001:db8:' || to_hex(g % 4096) || '::' || to_hex(g % 97 + 1)
            ELSE '10.' || (g % 250) || '.' || (g % 199) || '.1' END,
       'bench/1.0',
       md5((g * 7)::text),
       CASE WHEN g % 997 = 0 THEN 0.4 ELSE 0 END,
       CAST(CASE WHEN g % 997 = 0 THEN '["new_ip"]' ELSE '[]' END AS json),
       CASE WHEN g % 100 = 0
            THEN json_build_object('target_client_id',
                              'client-' || lpad(((g / 100) % :clients)::text, 5, '0'))
            ELSE CAST('{}' AS json) END,
       CASE WHEN g % 3 = 0 THEN md5((g / 3)::text) END,
       g
FROM generate_series(:start, :stop) AS g
"""


def sync_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def recreate_database(url: str) -> None:
    target = make_url(url)
    admin = create_engine(
        sync_url(url.rsplit("/", 1)[0] + "/postgres"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()


def migrate(url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH2_")}
    env.update(OAUTH2_DATABASE_URL=url, OAUTH2_ENCRYPTION_KEYS=generate_key_spec("bench"))
    subprocess.run(
        [sys.executable, "-m", "oauth2_server", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        cwd=ROOT,
    )


def load(url: str, rows: int, days: int, clients: int, now: datetime) -> None:
    engine = create_engine(sync_url(url))
    with Session(engine) as session, session.begin():
        month = audit_partitions.month_start(now - timedelta(days=days))
        while month <= now:
            audit_partitions.ensure_month(session, month)
            month = audit_partitions.add_months(month, 1)
    chunk = 1_000_000
    started = time.monotonic()
    with indexes_rebuilt(engine, "oauth2_token_logs", name_like="ix_%"):
        for start in range(1, rows + 1, chunk):
            stop = min(rows, start + chunk - 1)
            with engine.begin() as connection:
                connection.execute(
                    text(LOAD),
                    {"now": now, "days": days, "clients": clients, "start": start, "stop": stop},
                )
            print(f"  loaded {stop:,} rows ({time.monotonic() - started:.0f} s)", flush=True)
    engine.dispose()


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {statistics.median(ordered):6.1f} ms  p95 {p95:6.1f} ms  max {ordered[-1]:6.1f} ms"


async def measure(
    url: str, days: int, clients: int, samples: int, now: datetime
) -> tuple[list[float], list[float], list[int]]:
    engine = create_async(url, 2)
    sessions = create_sessionmaker(engine)
    first_page, whole_day, sizes = [], [], []
    rng = random.Random(7)
    try:
        for i in range(samples + 1):
            client = f"client-{rng.randrange(clients):05d}"
            day = (now - timedelta(days=rng.randrange(1, days))).replace(
                hour=0, minute=0, second=0, microsecond=0
            )
            f = AuditFilter(since=day, until=day + timedelta(days=1), client_id=client)
            async with sessions() as session:
                began = time.perf_counter()
                await session.run_sync(query_rows, f, None, 100)
                first = (time.perf_counter() - began) * 1000
                began, after, count = time.perf_counter(), None, 0
                while True:
                    rows = await session.run_sync(query_rows, f, after, 1000)
                    count += len(rows)
                    if len(rows) < 1000:
                        break
                    after = (rows[-1].created_at, rows[-1].id)
                whole = (time.perf_counter() - began) * 1000
            if i:  # the first pair warms the connection and the catalog caches
                first_page.append(first)
                whole_day.append(whole)
                sizes.append(count)
    finally:
        await engine.dispose()
    return first_page, whole_day, sizes


def _md5(value: int) -> str:
    return hashlib.md5(str(value).encode()).hexdigest()  # noqa: S324 (PostgreSQL's md5() of the load)


Case = Callable[[random.Random], tuple[str, Any]]


def filter_cases(rows: int, clients: int) -> dict[str, Case]:
    """Issue #11 item 4's filters (and item 7's watermark), each a maker of one random
    sample: ("query", AuditFilter), ("after", seq) or ("summary", AuditFilter). Values
    follow `LOAD`'s distribution."""

    def query(**values: Any) -> tuple[str, Any]:
        return "query", AuditFilter(**values)

    def hour_ago() -> datetime:
        return datetime.now(UTC) - timedelta(hours=1)

    def client(r: random.Random) -> str:
        return f"client-{r.randrange(clients):05d}"

    return {
        "client_id": lambda r: query(client_id=client(r)),
        "target_client_id": lambda r: query(target_client_id=client(r)),
        "target_subject": lambda r: query(target_subject=f"user-{r.randrange(50000)}"),
        "target_branch_id": lambda r: query(target_branch_id=f"branch-{r.randrange(2000)}"),
        "family_id": lambda r: query(family_id=_md5(r.randrange(1, rows // 3))),
        "token_id": lambda r: query(token_id=_md5(r.randrange(1, rows))),
        "request_id": lambda r: query(request_id=_md5(7 * r.randrange(1, rows))),
        "ip=10.a.b.0/24": lambda r: query(ip=f"10.{r.randrange(250)}.{r.randrange(199)}.0/24"),
        "ip=10.a.0.0/16": lambda r: query(ip=f"10.{r.randrange(250)}.0.0/16"),
        "ip=10.a.0.0/16 (a%10=0: no row)": lambda r: query(ip=f"10.{10 * r.randrange(25)}.0.0/16"),
        "ip=10.b.0.0/12 (~640,000)": lambda r: query(ip=f"10.{16 * r.randrange(15)}.0.0/12"),
        "ip=10.0.0.0/8 (~9,000,000)": lambda r: query(ip="10.0.0.0/8"),
        "ip=2001:db8:x::/48": lambda r: query(ip=f"2001:db8:{2 * r.randrange(2048):x}::/48"),
        "since=-1h": lambda r: query(since=hour_ago()),
        "after=SEQ": lambda r: ("after", r.randrange(rows)),
        "summary action,ip,client_id since=-1h": lambda r: (
            "summary",
            AuditFilter(since=hour_ago()),
        ),
    }


def _run_case(session: Any, kind: str, value: Any) -> None:
    if kind == "query":
        query_rows(session, value, None, 100)
    elif kind == "after":
        watermark_rows(session, AuditFilter(), value, 100)
    else:
        summarize(session, value, ("action", "ip", "client_id"))


async def measure_filters(
    url: str, rows: int, clients: int, samples: int
) -> dict[str, list[float]]:
    """Milliseconds of the first page (limit 100) of each case, `samples` each (after
    one warm-up sample)."""
    engine = create_async(url, 2)
    sessions = create_sessionmaker(engine)
    timings: dict[str, list[float]] = {}
    rng = random.Random(11)
    try:
        for name, make in filter_cases(rows, clients).items():
            timings[name] = []
            for i in range(samples + 1):
                kind, value = make(rng)
                async with sessions() as session:
                    began = time.perf_counter()
                    await session.run_sync(_run_case, kind, value)
                    if i:
                        timings[name].append((time.perf_counter() - began) * 1000)
    finally:
        await engine.dispose()
    return timings


def explain_cidr(url: str) -> str:
    engine = create_engine(sync_url(url))
    with engine.connect() as connection:
        plan = connection.execute(
            text(
                "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM oauth2_token_logs"
                " WHERE oauth2_inet(ip) <<= CAST('10.7.0.0/16' AS inet)"
                " ORDER BY created_at, id LIMIT 100"
            )
        ).all()
    engine.dispose()
    return "\n".join(f"    {row[0]}" for row in plan)


def explain(url: str, now: datetime, clients: int) -> str:
    engine = create_engine(sync_url(url))
    day = (now - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    with engine.connect() as connection:
        plan = connection.execute(
            text(
                "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM oauth2_token_logs WHERE client_id = :c "
                "AND created_at >= :a AND created_at < :b ORDER BY created_at, id LIMIT 100"
            ),
            {"c": f"client-{clients // 2:05d}", "a": day, "b": day + timedelta(days=1)},
        ).all()
    engine.dispose()
    return "\n".join(f"    {row[0]}" for row in plan)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url", default="postgresql://postgres@127.0.0.1:5432/oauth2_bench_audit"
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--target-ms", type=float, default=200.0)
    parser.add_argument(
        "--reuse", action="store_true", help="skip creating and loading the database"
    )
    args = parser.parse_args()
    now = datetime.now(UTC)
    if not args.reuse:
        print(
            f"creating {make_url(args.database_url).database} with {args.rows:,} rows", flush=True
        )
        recreate_database(args.database_url)
        migrate(args.database_url)
        load(args.database_url, args.rows, args.days, args.clients, now)
    first, whole, sizes = asyncio.run(
        measure(args.database_url, args.days, args.clients, args.samples, now)
    )
    print(f"rows {args.rows:,}; one client × one day ≈ {statistics.mean(sizes):.0f} rows")
    print(f"first page (limit 100): {percentiles(first)}")
    print(f"whole day (pages of 1000): {percentiles(whole)}")
    print("plan of one first-page query:\n" + explain(args.database_url, now, args.clients))
    rows = args.rows if not args.reuse else count_rows(args.database_url)
    timings = asyncio.run(measure_filters(args.database_url, rows, args.clients, args.samples))
    slow = [name for name, samples in timings.items() if p95_of(samples) >= args.target_ms]
    print(f"first page (limit 100) of each filter alone, {args.samples} samples each:")
    for name, samples in timings.items():
        print(f"  {name:40} {percentiles(samples)}")
    print("plan of one /16 query:\n" + explain_cidr(args.database_url))
    slow += ["client × day"] if p95_of(first) >= args.target_ms else []
    print("OK" if not slow else f"SLOW (p95 ≥ {args.target_ms} ms): {', '.join(slow)}")
    return 0 if not slow else 1


def p95_of(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def count_rows(url: str) -> int:
    engine = create_engine(sync_url(url))
    with engine.connect() as connection:
        total = int(
            connection.execute(text("SELECT max(seal_seq) FROM oauth2_token_logs")).scalar()
        )
    engine.dispose()
    return int(total or 0)


if __name__ == "__main__":
    sys.exit(main())
