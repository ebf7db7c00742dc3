"""Statistics benchmark (issue #14 item 4): GET /admin/stats on 10M audit rows (PostgreSQL).

    python bench/stats.py                  # the issue's target: p95 < 200 ms at 10M rows
    python bench/stats.py --rows 200000    # a quick check that it works

It (re)creates a scratch database (`--database-url`, default
postgresql://postgres@127.0.0.1:5432/oauth2_bench_stats; DROPPED first, and dropped
again at the end unless `--keep`), migrates it (monthly partitions, created for the last
`--days` days the way the janitor does), drops the audit table's secondary indexes,
bulk-loads `--rows` audit rows with `generate_series` (spread at random over `--days`
days and `--clients` clients; a token-server mix: 40 % issued, 20 % refreshed, 20 %
introspected, 5 % each exchanged, token_revoked, client_auth_failed and other), rebuilds
the indexes, loads `--tokens` live access tokens and as many current refresh tokens
(with 4 rotated rows each, as the table keeps them until their family expires), VACUUM
ANALYZEs, then times `registry.stats.collect_stats` over asyncpg, each call in a committed
transaction (exactly what GET /admin/stats and `oauth2-server stats` run): once (it fills
the hourly rollup of the settled hours, as the first call after an upgrade does; later
each hour is rolled up once when it settles), then `--samples` times. Prints p50 / p95 / max
and the plan of the live part of the hourly query; exits 1 when p95 ≥ `--target-ms` (default 200).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.audit_query import migrate, percentiles, recreate_database, sync_url  # noqa: E402
from oauth2_server.audit import partitions as audit_partitions  # noqa: E402
from oauth2_server.db.engine import create_engine as create_async  # noqa: E402
from oauth2_server.db.engine import create_sessionmaker  # noqa: E402
from oauth2_server.registry.stats import collect_stats  # noqa: E402

LOAD_LOGS = """
INSERT INTO oauth2_token_logs (created_at, action, client_id, grant_type, token_id,
    risk_score, flags, details)
SELECT :now - random() * make_interval(days => :days),
       (ARRAY['issued', 'issued', 'issued', 'issued', 'issued', 'issued', 'issued', 'issued',
              'refreshed', 'refreshed', 'refreshed', 'refreshed',
              'introspected', 'introspected', 'introspected', 'introspected',
              'exchanged', 'token_revoked', 'client_auth_failed', 'signed_in'])[1 + g % 20],
       'client-' || lpad((floor(random() * :clients))::int::text, 5, '0'),
       'client_credentials',
       md5(g::text),
       0,
       CAST('[]' AS json),
       CAST('{}' AS json)
FROM generate_series(:start, :stop) AS g
"""

LOAD_ACCESS = """
INSERT INTO oauth2_access_tokens (jti, client_id, subject, scope, grant_type, issued_at,
    expires_at)
SELECT md5(g::text), 'client-' || lpad((g % :clients)::text, 5, '0'), 'sub-' || g, 'read',
       (ARRAY['client_credentials', 'authorization_code', 'refresh_token'])[1 + g % 3],
       :now, :now + interval '1 hour'
FROM generate_series(1, :tokens) AS g
"""

# Each family has rotated a few times: 4 rotated rows (kept until the family expires)
# for each current one.
LOAD_REFRESH = """
INSERT INTO oauth2_refresh_tokens (token_hash, family_id, client_id, user_id, scope,
    issued_at, expires_at, rotated_at)
SELECT md5(g::text), md5((g / 5)::text)::uuid::text, 'client-' || lpad(((g / 5) % :clients)::text,
       5, '0'), g / 5, 'read', :now, :now + interval '30 days',
       CASE WHEN g % 5 <> 0 THEN :now END
FROM generate_series(1, 5 * :tokens) AS g
"""


def _indexes(connection) -> list[tuple[str, str]]:
    return list(
        connection.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'oauth2_token_logs' "
                "AND indexname LIKE 'ix_%'"
            )
        ).all()
    )


def load(url: str, args: argparse.Namespace, now: datetime) -> None:
    engine = create_engine(sync_url(url))
    with Session(engine) as session, session.begin():
        month = audit_partitions.month_start(now - timedelta(days=args.days))
        while month <= now:
            audit_partitions.ensure_month(session, month)
            month = audit_partitions.add_months(month, 1)
    with engine.begin() as connection:
        indexes = _indexes(connection)
        for name, _ in indexes:
            connection.execute(text(f"DROP INDEX {name}"))
    started, chunk = time.monotonic(), 1_000_000
    params = {"now": now, "days": args.days, "clients": args.clients}
    for start in range(1, args.rows + 1, chunk):
        stop = min(args.rows, start + chunk - 1)
        with engine.begin() as connection:
            connection.execute(text(LOAD_LOGS), {**params, "start": start, "stop": stop})
        print(f"  loaded {stop:,} rows ({time.monotonic() - started:.0f} s)", flush=True)
    with engine.begin() as connection:
        for name, definition in indexes:
            began = time.monotonic()
            connection.execute(text(definition.replace(" ON ONLY ", " ON ")))
            print(f"  index {name}: {time.monotonic() - began:.0f} s", flush=True)
        tokens = {"now": now, "clients": args.clients, "tokens": args.tokens}
        connection.execute(text(LOAD_ACCESS), tokens)
        connection.execute(text(LOAD_REFRESH), tokens)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in ("oauth2_token_logs", "oauth2_access_tokens", "oauth2_refresh_tokens"):
            connection.execute(text(f"VACUUM ANALYZE {table}"))
    engine.dispose()


async def measure(url: str, samples: int) -> tuple[float, list[float], dict]:
    """(ms of the first call, which also fills the hourly rollup of the 22 settled hours;
    ms of each later call; the last answer). Each call commits, as the API's does."""
    engine = create_async(url, 2)
    sessions = create_sessionmaker(engine)
    timings: list[float] = []
    last: dict = {}
    try:
        for _ in range(samples + 1):
            began = time.perf_counter()
            async with sessions() as session, session.begin():
                last = await session.run_sync(collect_stats)
            timings.append((time.perf_counter() - began) * 1000)
    finally:
        await engine.dispose()
    return timings[0], timings[1:], last


def explain(url: str, now: datetime) -> str:
    engine = create_engine(sync_url(url))
    since = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    with engine.connect() as connection:
        plan = connection.execute(
            text(
                "EXPLAIN (ANALYZE, BUFFERS) SELECT action, to_char(timezone('UTC', created_at),"
                " 'YYYY-MM-DD HH24') AS hour, count(*) FROM oauth2_token_logs WHERE action IN"
                " ('issued', 'refreshed', 'exchanged', 'token_revoked') AND created_at >= :a"
                " AND created_at < :b GROUP BY action, hour"
            ),
            {"a": since, "b": since + timedelta(hours=2)},
        ).all()
    engine.dispose()
    return "\n".join(f"    {row[0]}" for row in plan)


def drop_database(url: str) -> None:
    target = make_url(url)
    admin = create_engine(
        sync_url(url.rsplit("/", 1)[0] + "/postgres"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url", default="postgresql://postgres@127.0.0.1:5432/oauth2_bench_stats"
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--target-ms", type=float, default=200.0)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    now = datetime.now(UTC)
    url = args.database_url
    print(f"creating {make_url(url).database} with {args.rows:,} audit rows", flush=True)
    recreate_database(url)
    try:
        migrate(url)
        load(url, args, now)
        first, timings, last = asyncio.run(measure(url, args.samples))
        per_day = args.rows / args.days
        print(f"audit rows {args.rows:,} over {args.days} days (≈ {per_day:,.0f} a day); ")
        print(f"live access tokens {last['live_tokens']['access']['total']:,}")
        print(f"first collect_stats (fills the hourly rollup): {first:.1f} ms")
        print(f"collect_stats: {percentiles(timings)}")
        print("plan of counting the two unsettled hours:\n" + explain(url, now))
    finally:
        if not args.keep:
            drop_database(url)
    p95 = sorted(timings)[min(len(timings) - 1, int(len(timings) * 0.95))]
    print("OK" if p95 < args.target_ms else f"SLOW: p95 {p95:.1f} ms ≥ {args.target_ms} ms")
    return 0 if p95 < args.target_ms else 1


if __name__ == "__main__":
    sys.exit(main())
