"""Wrong-secret flood beside a good client (issue #8 item 2): the good client's p99 with and
without the flood, and their ratio (target ≤ 2×).

    sudo apt-get install wrk
    python bench/flood.py              # 15 s per phase, 16 connections each, 2 workers

Same setup as bench/load.py (scratch PostgreSQL database `--database-url`, default
postgresql://postgres@127.0.0.1:5432/oauth2_bench_flood; `oauth2-server serve --workers 2`
on a free loopback port; wrk with the same Lua script). Phase 1: the good client alone
(client_credentials, HTTP Basic, correct secret). Phase 2: the same load while a second wrk
sends wrong secrets for the SAME client id, each request from another X-Forwarded-For IP
(the server trusts 127.0.0.1 as a proxy), as the attacker in the issue did. Prints both
phases, the p99 ratio, how many good requests were refused (must be 0), and the audit rows
the flood wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import requests
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import (  # noqa: E402
    WRK_SCRIPT,
    basic,
    run_wrk,
    start_bench_server,
    wait_ready,
)

# Wrong secrets, each request from a new client IP (X-Forwarded-For); counts answers.
FLOOD_SCRIPT = textwrap.dedent(
    """
    wrk.method = "POST"
    wrk.body = os.getenv("BENCH_BODY")
    wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
    wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")
    local n = 0
    local salt = 0
    setup = function(thread) salt = salt + 1; thread:set("salt", salt) end
    init = function(args) n = (salt or 1) * 1000000 end
    request = function()
      n = n + 1
      wrk.headers["X-Forwarded-For"] = string.format("10.%d.%d.%d",
        math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
      return wrk.format()
    end
    done = function(summary, latency, requests)
      io.write(string.format('{"requests":%d,"duration_us":%d,"p99_us":%d}\\n',
        summary.requests, summary.duration, latency:percentile(99)))
    end
    """
)


def audit_counts(engine: object) -> dict[str, int]:
    with engine.connect() as connection:  # type: ignore[attr-defined]
        rows = connection.execute(
            text("SELECT action, count(*) FROM oauth2_token_logs GROUP BY action")
        )
        return {action: count for action, count in rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url", default="postgresql://postgres@127.0.0.1:5432/oauth2_bench_flood"
    )
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")

    bench = start_bench_server(
        args.database_url,
        args.workers,
        "read",
        OAUTH2_FORWARDED_ALLOW_IPS="127.0.0.1",
        OAUTH2_ACCESS_LOG="false",
    )
    server, engine, base_url = bench.process, bench.engine, bench.base_url
    body = "grant_type=client_credentials&scope=read"
    good_auth = basic(bench.client_id, bench.secret)
    url = base_url + "/oauth2/token"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench.lua"
        script.write_text(WRK_SCRIPT)
        flood_script = Path(tmp) / "flood.lua"
        flood_script.write_text(FLOOD_SCRIPT)
        try:
            wait_ready(base_url + "/healthz", server)
            for _ in range(50):  # warm the client cache and the connection pools
                response = requests.post(
                    url,
                    data=body,
                    headers={
                        "Authorization": good_auth,
                        "Content-Type": "application/x-www-form-urlencoded",
                    },
                    timeout=30,
                )
                assert response.status_code == 200, response.text
            alone = run_wrk(
                "good client alone", url, body, good_auth, args.seconds, args.connections, script
            )
            print(alone.line(), flush=True)
            before = audit_counts(engine)
            flood = subprocess.Popen(
                [
                    "wrk",
                    "-t1",
                    f"-c{args.connections}",
                    f"-d{args.seconds + 4}s",
                    "-s",
                    str(flood_script),
                    url,
                ],
                env={
                    **os.environ,
                    "BENCH_BODY": body,
                    "BENCH_AUTH": basic(bench.client_id, "wrong-" + bench.secret),
                },
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(2)  # the flood is in full swing before measuring
            flooded = run_wrk(
                "good client beside flood",
                url,
                body,
                good_auth,
                args.seconds,
                args.connections,
                script,
            )
            out, _ = flood.communicate(timeout=args.seconds + 60)
            print(flooded.line(), flush=True)
            stats = json.loads(out.strip().splitlines()[-1])
            rate = stats["requests"] / (stats["duration_us"] / 1e6)
            print(
                f"{'wrong-secret flood':<28} {rate:>9,.0f} req/s"
                f"   p99 {stats['p99_us'] / 1000:6.2f} ms   (every request a new IP)"
            )
            time.sleep(2)  # let the audit buffers flush
            after = audit_counts(engine)
        finally:
            bench.stop()
    ratio = flooded.p99_ms / alone.p99_ms if alone.p99_ms else float("inf")
    print(f"good client p99 ratio with/without flood: {ratio:.2f}x (target <= 2x)")
    print(f"good requests refused or failed: {alone.errors + flooded.errors} (must be 0)")
    written = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    print(
        "audit rows written during the flood: "
        + ", ".join(f"{k} {v}" for k, v in sorted(written.items()) if v and k != "issued")
    )
    engine.dispose()


if __name__ == "__main__":
    main()
