"""Soak benchmark (issue #13 item 4): client_credentials at full speed for `--minutes`
minutes on PostgreSQL with the janitor running, to see whether throughput, the tail and
the tables hold as rows pile up.

    sudo apt-get install wrk
    python bench/soak.py                         # 10 minutes, access tokens live 60 s
    python bench/soak.py --preload 50000000      # the same after loading 50M expired rows

It resets a scratch database (`--database-url`, default
postgresql://postgres@127.0.0.1:5432/oauth2_bench_soak; DROPPED first), starts
`oauth2-server serve` with `--workers` workers and `OAUTH2_ACCESS_TOKEN_TTL=--access-ttl`
(short, so tokens expire during the run and the janitor has the creation rate to keep up
with), optionally bulk-loads `--preload` expired access-token rows, and runs
`oauth2-server janitor` every `--janitor-interval` seconds in the background, as the
compose janitor service does (hourly there). wrk then runs one minute at a time. After each
minute it prints throughput, p50 and p99, the rows and size of `oauth2_access_tokens` and
of the audit log (all partitions), their dead tuples (pg_stat_user_tables), and what the
janitor runs of that minute deleted and how long they took.

The last lines check the issue's soak targets: the last minute's throughput against the
first's (≥ 90 %), every minute's p99 (≤ 15 ms), and the access-token table against its
bound: TTL × rate plus one janitor interval of tokens (rows that expired since the last run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import (  # noqa: E402
    WRK_SCRIPT,
    Result,
    client_credentials,
    indexes_rebuilt,
    postgres_backends,
    run_wrk,
    start_bench_server,
    wait_ready,
    warm_up,
)

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/oauth2_bench_soak"
PRELOAD_CHUNK = 1_000_000


@dataclass
class JanitorRuns:
    """`oauth2-server janitor` in a loop (a thread): one entry per run, with its wall time
    (seconds), rows deleted per table, and the time it ended (monotonic)."""

    env: dict[str, str]
    interval: float
    runs: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    current: subprocess.Popen[str] | None = None

    def loop(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            self.current = subprocess.Popen(
                [sys.executable, "-m", "oauth2_server", "janitor"],
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            out, err = self.current.communicate()
            ok = self.current.returncode == 0
            report = json.loads(out) if ok else {"error": err[-500:], "deleted": {}}
            self.runs.append(
                {"ended": time.monotonic(), "seconds": time.monotonic() - started, **report}
            )
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def halt(self) -> None:
        """Stop the loop and the run in progress (SIGTERM: its committed batches stay
        deleted; a backlog of millions of rows can take longer than the soak)."""
        self.stop.set()
        if self.current is not None and self.current.poll() is None:
            self.current.terminate()

    def since(self, moment: float) -> list[dict[str, Any]]:
        return [run for run in self.runs if run["ended"] >= moment]


def preload(engine: Any, rows: int, client_id: str) -> float:
    """Insert `rows` access-token rows that expired within the last day (what a busy day
    leaves behind), in chunks of PRELOAD_CHUNK, with the table's indexes and primary key
    dropped and built again after it (`bench.load.indexes_rebuilt`). Returns seconds taken."""
    started = time.monotonic()
    with indexes_rebuilt(engine, "oauth2_access_tokens", primary_key=True):
        for offset in range(0, rows, PRELOAD_CHUNK):
            count = min(PRELOAD_CHUNK, rows - offset)
            with engine.begin() as connection:
                connection.execute(
                    text(
                        """
                        INSERT INTO oauth2_access_tokens
                            (jti, client_id, subject, scope, grant_type, issued_at, expires_at)
                        SELECT md5(CAST(:offset AS text) || '-' || n), :client, :client, 'read',
                               'client_credentials',
                               now() - interval '1 day' * random() - interval '1 hour',
                               now() - interval '1 day' * random()
                        FROM generate_series(1, :count) AS n
                        """
                    ),
                    {"offset": offset, "client": client_id, "count": count},
                )
            if (offset + count) % (10 * PRELOAD_CHUNK) == 0 or offset + count == rows:
                print(f"  preloaded {offset + count:,} rows", flush=True)
    return time.monotonic() - started


def table_stats(engine: Any) -> dict[str, tuple[int, int, int]]:
    """(live rows, dead rows, bytes) of the access-token table and of the audit log (its
    partitions summed), from pg_stat_user_tables and pg_total_relation_size."""
    query = text(
        """
        SELECT CASE WHEN relname LIKE 'oauth2_token_logs%' THEN 'oauth2_token_logs'
                    ELSE relname END AS name,
               sum(n_live_tup), sum(n_dead_tup), sum(pg_total_relation_size(relid))
        FROM pg_stat_user_tables
        WHERE relname = 'oauth2_access_tokens' OR relname LIKE 'oauth2_token_logs%'
        GROUP BY 1
        """
    )
    with engine.connect() as connection:
        return {
            row[0]: (int(row[1]), int(row[2]), int(row[3])) for row in connection.execute(query)
        }


def minute_line(
    index: int, result: Result, stats: dict[str, tuple[int, int, int]], runs: list[dict[str, Any]]
) -> str:
    tokens = stats.get("oauth2_access_tokens", (0, 0, 0))
    logs = stats.get("oauth2_token_logs", (0, 0, 0))
    deleted = sum(run.get("deleted", {}).get("oauth2_access_tokens", 0) for run in runs)
    longest = max((run["seconds"] for run in runs), default=0.0)
    return (
        f"minute {index:>2}  {result.requests_per_second:>7,.0f} req/s  "
        f"p50 {result.p50_ms:5.2f} ms  p99 {result.p99_ms:6.2f} ms  errors {result.errors}  "
        f"tokens {tokens[0]:>10,} live {tokens[1]:>9,} dead {tokens[2] / 2**20:7.1f} MiB  "
        f"audit {logs[0]:>10,} rows {logs[2] / 2**20:7.1f} MiB  "
        f"janitor {len(runs)} runs, {deleted:,} tokens deleted, longest {longest:.1f} s"
    )


def verdict(
    results: list[Result], stats: dict[str, tuple[int, int, int]], args: argparse.Namespace
) -> list[str]:
    """The issue's soak targets, each with the measured figure."""
    first, last = results[0].requests_per_second, results[-1].requests_per_second
    worst = max(result.p99_ms for result in results)
    rate = sum(r.requests_per_second for r in results) / len(results)
    bound = rate * (args.access_ttl + args.janitor_interval)
    live = stats.get("oauth2_access_tokens", (0, 0, 0))[0]
    mark = {True: "met", False: "NOT met"}
    return [
        f"last minute / first: {last:,.0f} / {first:,.0f} = {last / first:.2f} "
        f"(target ≥ 0.90: {mark[last / first >= 0.9]})",
        f"worst minute p99: {worst:.2f} ms (target ≤ 15 ms: {mark[worst <= 15]})",
        f"access-token rows at the end: {live:,}; bound (TTL {args.access_ttl} s + janitor "
        f"interval {args.janitor_interval:.0f} s) × {rate:,.0f} req/s = {bound:,.0f} "
        f"(target: within the bound: {mark[live <= bound]})",
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--access-ttl", type=int, default=60, help="seconds (default 60)")
    parser.add_argument("--janitor-interval", type=float, default=10.0, help="seconds")
    parser.add_argument("--preload", type=int, default=0, help="expired token rows to load")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    server = start_bench_server(
        args.database_url,
        args.workers,
        "read",
        OAUTH2_ACCESS_TOKEN_TTL=str(args.access_ttl),
        OAUTH2_AUDIT_SEAL_DELAY="5",
    )
    janitor = JanitorRuns(server.env, args.janitor_interval)
    thread = threading.Thread(target=janitor.loop, daemon=True)
    try:
        wait_ready(server.base_url + "/readyz", server.process)
        with server.engine.connect() as connection:
            autovacuum = connection.scalar(text("SHOW autovacuum"))
        print(f"PostgreSQL autovacuum: {autovacuum} (the janitor VACUUMs the token tables)")
        if args.preload:
            seconds = preload(server.engine, args.preload, server.client_id)
            print(f"preloaded {args.preload:,} expired rows in {seconds:.0f} s", flush=True)
        path, body, auth = client_credentials(_Context(server))
        warm_up(server.base_url + path, body, auth)
        database = postgres_backends(server.engine, server.database)
        thread.start()
        results: list[Result] = []
        with tempfile.TemporaryDirectory() as scratch:
            script = Path(scratch) / "post.lua"
            script.write_text(WRK_SCRIPT)
            for minute in range(1, args.minutes + 1):
                started = time.monotonic()
                result = run_wrk(
                    f"minute {minute}",
                    server.base_url + path,
                    body,
                    auth,
                    60,
                    args.connections,
                    script,
                    server.process.pid,
                    database,
                )
                results.append(result)
                print(
                    minute_line(minute, result, table_stats(server.engine), janitor.since(started)),
                    flush=True,
                )
        janitor.halt()
        thread.join(timeout=60)
        print("\n".join(verdict(results, table_stats(server.engine), args)))
    finally:
        janitor.halt()
        server.stop()


@dataclass
class _Context:
    """What `bench.load.client_credentials` reads: the registered client."""

    server: Any

    @property
    def client_id(self) -> str:
        return self.server.client_id

    @property
    def secret(self) -> str:
        return self.server.secret


if __name__ == "__main__":
    main()
