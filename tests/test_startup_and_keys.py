"""Start-up contract (configuration, migrations, bootstrap admin), RFC 8414 metadata and
RFC 7517 key rotation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import jwt
import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from oauth2_server.config import Settings
from oauth2_server.crypto.keyring import generate_key_spec
from tests.conftest import free_port, run_oauth2_cli, server_env, start_live_server, sync_url


def run_cli(*args: str, env: dict[str, str], cwd=None, timeout: int = 60):
    return run_oauth2_cli(*args, env=env, cwd=cwd, timeout=timeout)


def test_metadata_lists_endpoints_grants_and_s256_only(server):
    """RFC 8414 §2/§3."""
    body = server.get("/.well-known/oauth-authorization-server").json()
    base = server.base_url
    assert body["issuer"] == base
    assert body["token_endpoint"] == f"{base}/oauth2/token"
    assert body["authorization_endpoint"] == f"{base}/oauth2/authorize"
    assert body["introspection_endpoint"] == f"{base}/oauth2/introspect"
    assert body["revocation_endpoint"] == f"{base}/oauth2/revoke"
    assert body["jwks_uri"] == f"{base}/oauth2/jwks"
    assert body["code_challenge_methods_supported"] == ["S256"]
    assert {"authorization_code", "refresh_token", "client_credentials"} <= set(
        body["grant_types_supported"]
    )
    assert body["authorization_response_iss_parameter_supported"] is True


def test_health_and_readiness(server):
    assert server.get("/healthz").json() == {"status": "ok"}
    assert server.get("/readyz").json()["database"] == "ok"
    metrics = server.get("/metrics")
    assert "oauth2_http_requests_total" in metrics.text


def test_key_rotation_keeps_previous_key_in_jwks(start_server, db):
    """RFC 7517: after rotation new tokens use the new kid; tokens signed with the previous
    key still verify and introspect as active."""
    client_id, secret = db.create_client(scope="introspect")
    issuer = "https://auth.example.test"  # one issuer for both processes, as behind a balancer
    first = start_server(OAUTH2_ISSUER=issuer)
    old_token = first.client_credentials_token(client_id, secret)
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    rotated = run_cli("keys", "rotate", env=first.env)
    assert rotated.returncode == 0, rotated.stderr
    second = start_server(
        OAUTH2_ISSUER=issuer
    )  # a worker started after the rotation loads the new key
    new_token = second.client_credentials_token(client_id, secret)
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid != old_kid
    kids = [k["kid"] for k in second.get("/oauth2/jwks").json()["keys"]]
    assert kids[:2] == [new_kid, old_kid]
    answer = second.post(
        "/oauth2/introspect", auth=(client_id, secret), data={"token": old_token}
    ).json()
    assert answer["active"] is True


def test_retired_setting_is_ignored_with_a_warning(caplog):
    """OAUTH2_SECRET_CACHE_TTL lost its meaning when client secrets became SHA-256: an
    upgraded deployment that still sets it starts, and is told once."""
    with caplog.at_level("WARNING", logger="oauth2_server.config"):
        Settings.from_env({"OAUTH2_SECRET_CACHE_TTL": "300"})
    assert "OAUTH2_SECRET_CACHE_TTL is no longer used" in caplog.text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("OAUTH2_ACESS_TOKEN_TTL", "60", id="unknown-setting"),
        pytest.param("OAUTH2_REFRESH_FAMILY_MAX_AGE", "-1", id="negative-family-max-age"),
        pytest.param("OAUTH2_REFRESH_TOKEN_TTL", "0", id="zero-refresh-token-ttl"),
    ],
)
def test_bad_setting_is_refused_naming_it(tmp_path, name, value):
    """An unknown OAUTH2_* variable (a typo) or an impossible lifetime: exit 2 naming it."""
    env = server_env(f"sqlite+aiosqlite:///{tmp_path}/x.db", "k:" + "A" * 43, free_port())
    env[name] = value
    result = run_cli("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert name in result.stderr
    assert not (tmp_path / "x.db").exists()  # refused before touching the database


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"OAUTH2_ENCRYPTION_KEYS": ""}, "OAUTH2_ENCRYPTION_KEYS"),
        ({"OAUTH2_ISSUER": "http://auth.example.com"}, "OAUTH2_ISSUER"),
        ({}, "OAUTH2_DATABASE_URL"),
    ],
    ids=["no-keys", "http-issuer", "sqlite"],
)
def test_production_mode_refuses_unsafe_configuration(tmp_path, overrides, named):
    env = server_env(
        f"sqlite+aiosqlite:///{tmp_path}/x.db",
        "k1:" + "A" * 43,
        free_port(),
        OAUTH2_ENV="production",
        OAUTH2_ISSUER="https://auth.example.com",
        OAUTH2_DATA_DIR=str(tmp_path / "data"),
    )
    if named != "OAUTH2_DATABASE_URL":
        env["OAUTH2_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:5432/none"
    env.update(overrides)
    result = run_cli("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert named in result.stderr
    assert not (tmp_path / "data").exists()  # no development keyring, no SQLite file


@contextmanager
def serving(env: dict[str, str], cwd: Path) -> Iterator[Iterator[str]]:
    """`oauth2-server serve` in a subprocess; yields its output lines up to and including
    uvicorn's "running" line, failing if the output ends before it (the server did not
    start). Stopped on leaving the block; killed after 90 s, so a silent server never
    hangs the suite."""
    process = subprocess.Popen(
        [sys.executable, "-m", "oauth2_server", "serve"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(90, process.kill)
    watchdog.start()

    def until_running(stdout: IO[str]) -> Iterator[str]:
        seen: list[str] = []
        for line in stdout:
            seen.append(line)
            yield line
            if "Uvicorn running on" in line:
                return
        raise AssertionError("serve ended before uvicorn ran:\n" + "".join(seen)[-3000:])

    try:
        assert process.stdout is not None
        yield until_running(process.stdout)
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(timeout=15)


def test_embedded_default_bootstraps_admin_once_and_it_gets_admin_token(tmp_path):
    """First run on an empty SQLite database: an admin client printed once; README's curl."""
    port = free_port()
    env = server_env(
        f"sqlite+aiosqlite:///{tmp_path}/first.db",
        "",
        port,
        OAUTH2_BOOTSTRAP_ADMIN="true",
        OAUTH2_LOG_LEVEL="info",
        OAUTH2_DATA_DIR=str(tmp_path / "data"),  # the development keyring goes there
    )
    env.pop("OAUTH2_ENCRYPTION_KEYS")
    with serving(env, tmp_path) as startup:
        output = "".join(startup)
        client_id = output.split("client_id:")[1].split()[0]
        secret = output.split("client_secret:")[1].split()[0]
        assert "development keyring" in output  # the warning for generated keys
        assert (tmp_path / "data" / "oauth2_server.dev-keys.json").exists()  # not in cwd
        token = requests.post(
            f"http://127.0.0.1:{port}/oauth2/token",
            auth=(client_id, secret),
            data={"grant_type": "client_credentials", "scope": "admin"},
            timeout=30,
        )
        assert token.status_code == 200 and token.json()["scope"] == "admin"
    # Second start: no new admin client, nothing printed.
    with serving(env, tmp_path) as startup:
        for line in startup:
            assert "client_secret" not in line
    engine = create_engine(sync_url(env["OAUTH2_DATABASE_URL"]))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM oauth2_clients")).scalar() == 1
        audit = connection.execute(
            text("SELECT client_id, details FROM oauth2_token_logs WHERE action = :a"),
            {"a": "admin_client_created"},
        ).all()
    engine.dispose()
    assert len(audit) == 1 and audit[0][0] is None  # the CLI acts as no client
    details = audit[0][1] if isinstance(audit[0][1], dict) else json.loads(audit[0][1])
    assert details["target_client_id"] == client_id
    assert details["bootstrap"] is True and details["via"] == "cli"
    assert secret not in json.dumps(details)


@pytest.mark.skipif(
    not os.environ.get("TEST_DATABASE_URL"),
    reason="PostgreSQL-only rule (SQLite migrates itself); .ci/run sets it",
)
def test_unmigrated_postgresql_is_refused_with_migrate_hint(tmp_path):
    """Issue 2 §3: against PostgreSQL, serve refuses an un-migrated database."""
    base_url = os.environ["TEST_DATABASE_URL"]
    keys = generate_key_spec("t")
    # beside the test database, named after it: runs on other test databases never collide
    name = f"{make_url(base_url).database}_unmigrated"
    url = base_url.rsplit("/", 1)[0] + f"/{name}"
    admin = create_engine(sync_url(base_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        env = server_env(url, keys, free_port())
        result = run_cli("serve", env=env, cwd=tmp_path)
        assert result.returncode == 2
        assert "oauth2-server migrate" in result.stderr
        migrated = run_cli("migrate", env=env, cwd=tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        from tests.conftest import Database

        other = Database("postgresql", url, create_engine(sync_url(url)), keys)
        live = start_live_server(other, tmp_path)
        live.stop()
        other.engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
