"""Memory bound of `oauth2-server audit export`: peak RSS does not grow with the rows.

    python bench/audit_export_memory.py                       # SQLite scratch file
    python bench/audit_export_memory.py --database-url postgresql://postgres@127.0.0.1:5432/oauth2_bench_audit_export

It fills a scratch database (a temporary SQLite file, or the PostgreSQL database named,
which is DROPPED and recreated) with `--rows` audit rows (default 100,000) in batches,
then runs the export CLI in a fresh process for 10 % of the rows and for all of them, in
both formats, writing to a temporary file, and reads each process's peak RSS
(`ru_maxrss`). The export reads keyset batches of 1,000 rows, so the two peaks should
differ by a few MB at most. Exits 1 if any peak exceeds `--bound-mb` (default 150) or the
full export's peak exceeds the small one's by more than `--growth-mb` (default 20).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from oauth2_server.audit.log import AuditEvent, RequestContext  # noqa: E402
from oauth2_server.crypto.keyring import generate_key_spec  # noqa: E402
from oauth2_server.db.models import TokenLog  # noqa: E402

RUN_EXPORT = (
    "import resource, sys\n"
    "from oauth2_server.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def sync_url(url: str) -> str:
    parsed = make_url(url)
    driver = "sqlite" if parsed.drivername.startswith("sqlite") else "postgresql+psycopg"
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def prepare(url: str, env: dict[str, str]) -> None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        admin = create_engine(
            sync_url(url.rsplit("/", 1)[0] + "/postgres"), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{parsed.database}"'))
        admin.dispose()
    subprocess.run(
        [sys.executable, "-m", "oauth2_server", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        cwd=ROOT,
    )


def fill(url: str, start: int, stop: int) -> None:
    """Insert rows numbered start..stop-1, one millisecond apart, in batches of 5,000."""
    engine = create_engine(sync_url(url))
    base = datetime.now(UTC) - timedelta(days=1)
    context = RequestContext(ip="10.0.0.1", user_agent="bench/1.0 " + "x" * 60, request_id="r" * 32)
    for first in range(start, stop, 5000):
        events = [
            AuditEvent(
                "issued",
                context,
                client_id=f"client-{n % 100}",
                subject=f"user-{n}",
                grant_type="client_credentials",
                token_id=f"{n:036d}",
                details={"scope": "read write", "n": n},
                created_at=base + timedelta(milliseconds=n),
            ).row()
            for n in range(first, min(stop, first + 5000))
        ]
        with engine.begin() as connection:
            connection.execute(insert(TokenLog), events)
    engine.dispose()


def export_peak(env: dict[str, str], fmt: str, output: Path) -> tuple[float, int, float]:
    """Export every row in a fresh process: (peak RSS in MB, rows written, seconds)."""
    args = ["audit", "export", "--format", fmt, "--output", str(output)]
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", RUN_EXPORT, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.monotonic() - began
    peak_kb = next(
        int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("MAXRSS_KB")
    )
    written = json.loads(next(line for line in result.stderr.splitlines() if line.startswith("{")))[
        "rows"
    ]
    return peak_kb / 1024, written, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", help="default: a temporary SQLite file")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bound-mb", type=float, default=150.0)
    parser.add_argument("--growth-mb", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{tmp}/export.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH2_")}
        env.update(
            OAUTH2_DATABASE_URL=url,
            OAUTH2_ENCRYPTION_KEYS=generate_key_spec("bench"),
            OAUTH2_LOG_LEVEL="warning",
        )
        prepare(url, env)
        small = max(1, args.rows // 10)
        print(f"filling {small:,} rows, then {args.rows:,}", flush=True)
        results = {}
        fill(url, 0, small)
        for fmt in ("csv", "jsonl"):
            results[(fmt, small)] = export_peak(env, fmt, Path(tmp) / f"small.{fmt}")
        fill(url, small, args.rows)
        for fmt in ("csv", "jsonl"):
            results[(fmt, args.rows)] = export_peak(env, fmt, Path(tmp) / f"all.{fmt}")
        failed = False
        for fmt in ("csv", "jsonl"):
            low, low_rows, low_s = results[(fmt, small)]
            high, high_rows, high_s = results[(fmt, args.rows)]
            size = (Path(tmp) / f"all.{fmt}").stat().st_size / 2**20
            print(
                f"{fmt:5}: {low_rows:>9,} rows → peak {low:6.1f} MB ({low_s:4.1f} s); "
                f"{high_rows:>9,} rows ({size:.0f} MB written) → "
                f"peak {high:6.1f} MB ({high_s:4.1f} s); "
                f"growth {high - low:+.1f} MB"
            )
            failed |= high > args.bound_mb or high - low > args.growth_mb or high_rows != args.rows
        print("OK: memory stays bounded" if not failed else "FAILED: memory grows with the export")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
