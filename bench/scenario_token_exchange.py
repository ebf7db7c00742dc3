"""Benchmark scenario `token_exchange`: RFC 8693 token exchange for a connected branch
whose Google token is fresh (the hot path: no provider call; one read, one audit insert).

`setup_token_exchange(base_url, database_url, encryption_keys)` seeds what the exchange
needs straight into the database: a branch, an upstream grant holding a stand-in Google
token that stays fresh for a day (sealed under the server's keyring, exactly as a real
connection stores it), a confidential client registered for token exchange with scope
`upstream:google` and granted the branch; then it fetches that client's subject token
from the server. No provider is contacted, so no upstream settings are needed.

bench/load.py imports `bench.scenario_*` modules; this one registers itself in
`SCENARIOS` (of `bench.load`, or of `__main__` when load.py runs as a script) as
`token_exchange`. It can also be used directly:

    request = asyncio.run(setup_token_exchange(base_url, database_url, keys))
    # POST request.body to base_url + request.path with Authorization: request.authorization
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
from sqlalchemy.orm import Session

from oauth2_server.crypto.keyring import parse_keyring
from oauth2_server.db.engine import create_engine, create_sessionmaker
from oauth2_server.storage import upstream as upstream_storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.branches import create_branch, get_branch, grant_branch
from oauth2_server.storage.clients import create_client
from oauth2_server.upstream.sealing import seal_tokens

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SCOPES = "openid email https://www.googleapis.com/auth/business.manage"


@dataclass(frozen=True)
class ExchangeRequest:
    """One ready-to-send token exchange: POST `body` (form) to `path` with `authorization`."""

    path: str
    body: str
    authorization: str
    branch_id: str
    client_id: str


def _seed(
    session: Session, keys: str, primary: str, branch_id: str, fresh_for: int
) -> tuple[str, str]:
    """Branch, fresh upstream grant, exchanging client. Returns (client_id, secret)."""
    if get_branch(session, branch_id) is None:
        create_branch(session, branch_id=branch_id, name="Benchmark branch")
    now = utcnow()
    credential_id = str(uuid.uuid4())
    account_sub = f"bench-{secrets.token_hex(8)}"
    sealed = seal_tokens(
        parse_keyring(keys, primary),
        credential_id=credential_id,
        provider="google",
        account_sub=account_sub,
        access_token="ya29.bench-" + secrets.token_urlsafe(100),
        refresh_token="1//bench-" + secrets.token_urlsafe(64),
    )
    upstream_storage.insert_credential(
        session,
        credential_id=credential_id,
        provider="google",
        account_sub=account_sub,
        account_email="bench@branch.example",
        scope=SCOPES,
        sealed=sealed,
        access_expires_at=now + timedelta(seconds=fresh_for),
        now=now,
    )
    upstream_storage.link_branch(session, branch_id, "google", credential_id, now)
    client, secret = create_client(
        session,
        name="bench token exchange",
        grant_types=["client_credentials", TOKEN_EXCHANGE],
        redirect_uris=[],
        scope="upstream:google",
    )
    grant_branch(session, client.client_id, branch_id)
    assert secret is not None
    return client.client_id, secret


async def setup_token_exchange(
    base_url: str,
    database_url: str,
    encryption_keys: str,
    *,
    primary_key: str = "",
    branch_id: str | None = None,
    fresh_for: int = 86_400,
) -> ExchangeRequest:
    """Seed a connected branch with a fresh Google token and a client allowed to exchange
    for it; return the exchange request. `encryption_keys`/`primary_key`: the server's
    OAUTH2_ENCRYPTION_KEYS / OAUTH2_ENCRYPTION_PRIMARY_KEY. `fresh_for`: seconds the
    stand-in token stays valid (keep it above the run length plus OAUTH2_UPSTREAM_MIN_TTL).
    """
    branch_id = branch_id or f"bench-{secrets.token_hex(4)}"
    engine = create_engine(database_url, 2)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            client_id, secret = await session.run_sync(
                lambda db: _seed(db, encryption_keys, primary_key, branch_id, fresh_for)
            )
    finally:
        await engine.dispose()
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        answer = await http.post(
            "/oauth2/token",
            auth=(client_id, secret),
            data={"grant_type": "client_credentials", "scope": "upstream:google"},
        )
        answer.raise_for_status()
    body = urlencode(
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": answer.json()["access_token"],
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "audience": "google",
            "branch_id": branch_id,
        }
    )
    authorization = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return ExchangeRequest("/oauth2/token", body, authorization, branch_id, client_id)


def token_exchange(ctx: Any) -> tuple[str, str, str]:
    """bench/load.py scenario: (path, body, Authorization header) from a BenchContext."""
    request = asyncio.run(
        setup_token_exchange(
            ctx.base_url,
            ctx.database_url,
            ctx.env["OAUTH2_ENCRYPTION_KEYS"],
            primary_key=ctx.env.get("OAUTH2_ENCRYPTION_PRIMARY_KEY", ""),
        )
    )
    return request.path, request.body, request.authorization


def register(scenarios: dict[str, Any]) -> None:
    """Add `token_exchange` to a SCENARIOS table."""
    scenarios["token_exchange"] = token_exchange


for _name in ("bench.load", "__main__"):
    _module = sys.modules.get(_name)
    if _module is not None and isinstance(getattr(_module, "SCENARIOS", None), dict):
        register(_module.SCENARIOS)
