"""Token exchange latency with warm upstream tokens (the refresh worker ran) against cold
ones (each exchange has to refresh at the provider first): issue #14 item 1.

    python bench/upstream_warm.py                      # SQLite scratch file
    python bench/upstream_warm.py --database-url postgresql://postgres@127.0.0.1:5432/oauth2_bench_upstream_warm

It starts the stand-in provider (`oauth2_server.dev.fake_provider`) on loopback with
`--provider-latency` seconds per refresh (default 0.15: a Google token call), a server
(`oauth2-server serve`, its own refresh worker off) on a scratch database (a temporary
SQLite file, or the PostgreSQL database named, which is DROPPED and recreated), and seeds
`--branches` branches (default 100), each with its own grant known to the stand-in. Then:

- cold: every grant's access token has 2 minutes left (below OAUTH2_UPSTREAM_MIN_TTL), so
  the first exchange of each branch refreshes at the provider;
- warm: the same grants made stale again, `oauth2-server worker --once` run, then one
  exchange per branch finds a fresh token.

Prints each phase's p50, p99 and max in milliseconds and its provider calls, then one JSON
line. Exchanges are sent one at a time (latency, not throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from oauth2_server.crypto.keyring import generate_key_spec, parse_keyring  # noqa: E402
from oauth2_server.db.models import UpstreamCredential  # noqa: E402
from oauth2_server.dev.fake_provider import Account, FakeGoogle, Grant  # noqa: E402
from oauth2_server.storage import upstream as upstream_storage  # noqa: E402
from oauth2_server.storage import utcnow  # noqa: E402
from oauth2_server.storage.branches import create_branch, grant_branch  # noqa: E402
from oauth2_server.storage.clients import create_client  # noqa: E402
from oauth2_server.upstream.sealing import seal_tokens  # noqa: E402

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SCOPES = "openid email https://www.googleapis.com/auth/business.manage"


def sync_url(url: str) -> str:
    parsed = make_url(url)
    driver = "sqlite" if parsed.drivername.startswith("sqlite") else "postgresql+psycopg"
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def recreate(url: str) -> None:
    """Drop and create the PostgreSQL database `url` names (SQLite: nothing to do)."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        return
    admin = create_engine(
        sync_url(url.rsplit("/", 1)[0] + "/postgres"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


def seed(engine: Any, keys: str, fake: FakeGoogle, branches: int) -> tuple[str, str, list[str]]:
    """Branches with grants the stand-in knows, one exchanging client granted them all.
    Returns (client_id, secret, branch ids)."""
    keyring = parse_keyring(keys)
    ids = [f"warm-{n:04d}" for n in range(branches)]
    with Session(engine) as session, session.begin():
        client, secret = create_client(
            session,
            name="bench upstream_warm",
            grant_types=["client_credentials", TOKEN_EXCHANGE],
            redirect_uris=[],
            scope="upstream:google",
        )
        for n, branch_id in enumerate(ids):
            create_branch(session, branch_id=branch_id, name=branch_id)
            account = Account(f"3{n:020d}", f"{branch_id}@branch.example")
            refresh_token = "1//bench-" + secrets.token_urlsafe(32)
            grant = Grant(account, SCOPES)
            grant.refresh_tokens.append(refresh_token)
            fake.grants[refresh_token] = grant
            credential_id = str(uuid.uuid4())
            sealed = seal_tokens(
                keyring,
                credential_id=credential_id,
                provider="google",
                account_sub=account.sub,
                access_token="ya29.bench-" + secrets.token_urlsafe(40),
                refresh_token=refresh_token,
            )
            now = utcnow()
            upstream_storage.insert_credential(
                session,
                credential_id=credential_id,
                provider="google",
                account_sub=account.sub,
                account_email=account.email,
                scope=SCOPES,
                sealed=sealed,
                access_expires_at=now + timedelta(hours=1),
                now=now,
            )
            upstream_storage.link_branch(session, branch_id, "google", credential_id, now)
            grant_branch(session, client.client_id, branch_id)
    assert secret is not None
    return client.client_id, secret, ids


def make_stale(engine: Any) -> None:
    """Every grant's access token: 2 minutes left of an hour (due for a refresh)."""
    expires = utcnow() + timedelta(minutes=2)
    with Session(engine) as session, session.begin():
        session.execute(
            update(UpstreamCredential).values(
                access_expires_at=expires, access_issued_at=expires - timedelta(hours=1)
            )
        )


def exchanges(base: str, client: tuple[str, str], branches: list[str]) -> list[float]:
    """One exchange per branch, one at a time; each one's latency in milliseconds."""
    latencies = []
    with httpx.Client(base_url=base, auth=client, timeout=30) as http:
        subject = http.post(
            "/oauth2/token", data={"grant_type": "client_credentials", "scope": "upstream:google"}
        ).json()["access_token"]
        for branch_id in branches:
            started = time.perf_counter()
            answer = http.post(
                "/oauth2/token",
                data={
                    "grant_type": TOKEN_EXCHANGE,
                    "subject_token": subject,
                    "subject_token_type": ACCESS_TOKEN_TYPE,
                    "audience": "google",
                    "branch_id": branch_id,
                },
            )
            latencies.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
    return latencies


def summary(latencies: list[float], calls: int) -> dict[str, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(ordered[-1], 1),
        "provider_calls": calls,
    }


def start_server(env: dict[str, str], base: str, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "oauth2_server", "serve"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(300):
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.terminate()
    raise SystemExit(f"server did not start:\n{log.read_text()}")


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    url = args.database_url or f"sqlite+aiosqlite:///{scratch / 'bench.db'}"
    recreate(url)
    fake = FakeGoogle().start()
    fake.refresh_delay = args.provider_latency
    port = 18000 + os.getpid() % 1000
    base = f"http://127.0.0.1:{port}"
    keys = generate_key_spec("bench-1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH2_")}
    env.update(fake.env())
    env.update(
        OAUTH2_DATABASE_URL=url,
        OAUTH2_ENCRYPTION_KEYS=keys,
        OAUTH2_ISSUER=base,
        OAUTH2_PORT=str(port),
        OAUTH2_BOOTSTRAP_ADMIN="false",
        OAUTH2_DATA_DIR=str(scratch),
        OAUTH2_LOG_LEVEL="warning",
        OAUTH2_UPSTREAM_REFRESH_WORKER="false",
    )
    subprocess.run([sys.executable, "-m", "oauth2_server", "migrate"], env=env, check=True)
    engine = create_engine(sync_url(url))
    client_id, secret, branches = seed(engine, keys, fake, args.branches)
    server = start_server(env, base, scratch / "server.log")
    try:
        make_stale(engine)
        fake.refresh_calls = 0
        cold = summary(exchanges(base, (client_id, secret), branches), fake.refresh_calls)
        make_stale(engine)
        fake.refresh_calls = 0
        worker = [sys.executable, "-m", "oauth2_server", "worker", "--once", "--json"]
        subprocess.run(worker, env=env, check=True, capture_output=True)
        refreshed = fake.refresh_calls
        warm = summary(
            exchanges(base, (client_id, secret), branches), fake.refresh_calls - refreshed
        )
    finally:
        server.terminate()
        server.wait(timeout=15)
        fake.stop()
        engine.dispose()
    backend = "postgresql" if args.database_url else "sqlite"
    return {"backend": backend, "branches": args.branches, "cold": cold, "warm": warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL database to DROP and use")
    parser.add_argument("--branches", type=int, default=100, help="branches (exchanges per phase)")
    parser.add_argument(
        "--provider-latency", type=float, default=0.15, help="seconds per provider refresh"
    )
    args = parser.parse_args()
    if not 1 <= args.branches <= 10000 or not 0 <= args.provider_latency <= 5:
        parser.error("--branches 1-10000, --provider-latency 0-5 s")
    with tempfile.TemporaryDirectory(prefix="bench-upstream-warm-") as scratch:
        result = run(args, Path(scratch))
    for phase in ("cold", "warm"):
        figures = result[phase]
        print(
            f"{phase:5}: p50 {figures['p50_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms  "
            f"max {figures['max_ms']:7.1f} ms  provider calls during exchanges "
            f"{figures['provider_calls']}"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
