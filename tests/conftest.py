"""Live-server fixtures: the real `oauth2-server serve` on 127.0.0.1, real databases.

Every test runs against SQLite, and also against PostgreSQL when `TEST_DATABASE_URL`
is set (e.g. `postgresql://postgres@127.0.0.1:5432/oauth2_server_test`); that database's
`public` schema is dropped and re-migrated at the start of the session. If
`TEST_DATABASE_URL` is set but unreachable the session fails; it is never skipped.

Tests set up clients and users with the project's own storage functions over a plain
synchronous SQLAlchemy connection, and read tables directly to check what changed.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from oauth2_server.crypto.hashing import hash_secret
from oauth2_server.crypto.keyring import generate_key_spec
from oauth2_server.storage.clients import create_client
from oauth2_server.storage.users import insert_user

# Loopback http is what the live test server speaks; oauthlib insists on https otherwise.
os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")
# The suite starts hundreds of `python -m oauth2_server` processes (servers, their workers,
# the CLI): let them keep the project's compiled bytecode, outside the tree, instead of
# compiling every module again in each one when the environment says not to write it.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    os.environ.setdefault(
        "PYTHONPYCACHEPREFIX",
        str(Path(tempfile.gettempdir()) / f"oauth2_server-test-pycache-{os.getuid()}"),
    )

BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("TEST_DATABASE_URL") else [])
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sync_url(url: str) -> str:
    """The synchronous driver URL tests use to inspect the same database."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def worker_database(url: str) -> str:
    """Under pytest-xdist each worker gets its own database, `<name>_<worker>`, created on
    the same server (the suite wipes its schema, so workers must not share one)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    parsed = make_url(url)
    name = f"{parsed.database}_{worker}"
    admin = create_engine(sync_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:  # fails loudly if PostgreSQL is unreachable
        exists = connection.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).scalar()
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


def run_oauth2_cli(
    *args: str, env: dict[str, str], cwd: Path | str | None = None, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m oauth2_server ARGS` in a subprocess with exactly `env`; output captured as
    text. The one way tests run the command line."""
    return subprocess.run(
        [sys.executable, "-m", "oauth2_server", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@functools.cache
def password_hash(password: str) -> str:
    """`hash_secret(password)`, computed once per password and process: test users share
    the hash of the same password (same argon2id parameters, so logging in costs the
    server what it costs in production; only the tests' own hashing is saved)."""
    return hash_secret(password)


@dataclass
class Database:
    """One test database: the URL the server uses and a sync engine for the tests."""

    backend: str
    url: str
    engine: Engine
    keys: str

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A committed-on-exit session (the project's storage functions take Sessions)."""
        with Session(self.engine) as session, session.begin():
            yield session

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params))

    def rows_eventually(self, sql: str, timeout: float = 10.0, **params: Any) -> list[Any]:
        """`rows(sql)` once it returns any (or whatever it returns after `timeout` s):
        for rows written in batches (OAUTH2_AUDIT_FLUSH_INTERVAL), without a fixed wait."""
        deadline = time.monotonic() + timeout
        while not (found := self.rows(sql, **params)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return found

    def count(self, table: str, where: str = "1=1", **params: Any) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {table} WHERE {where}", **params))  # noqa: S608

    def dump(self) -> str:
        """Every value of every table as one text blob (bytes also as hex and base64): what
        a reader of a database backup sees, for "nothing stored in clear" checks."""
        parts: list[str] = []
        with self.engine.connect() as connection:
            for table in inspect(connection).get_table_names():
                for row in connection.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608
                    for value in row:
                        if isinstance(value, bytes | memoryview):
                            raw = bytes(value)
                            parts += [
                                raw.decode("latin-1"),
                                raw.hex(),
                                base64.b64encode(raw).decode(),
                            ]
                        else:
                            parts.append(json.dumps(value, default=str))
        return "\n".join(parts)

    def create_client(self, **kwargs: Any) -> tuple[str, str | None]:
        """Register a client through `storage.clients.create_client`; (client_id, secret)."""
        kwargs.setdefault("name", "test client")
        kwargs.setdefault("grant_types", ["client_credentials"])
        kwargs.setdefault("redirect_uris", [])
        kwargs.setdefault("scope", "read write")
        with self.session() as session:
            record, secret = create_client(session, **kwargs)
        return record.client_id, secret

    def create_user(self, username: str, password: str = "correct horse battery") -> Any:  # noqa: S107
        with self.session() as session:
            return insert_user(session, username, password_hash(password))


@pytest.fixture(scope="session", params=BACKENDS)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    backend = request.param
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "oauth2.db"
        url = f"sqlite+aiosqlite:///{path}"
    else:
        url = worker_database(os.environ["TEST_DATABASE_URL"])
    engine = create_engine(sync_url(url))
    if backend == "postgresql":
        with engine.begin() as connection:  # fails loudly if PostgreSQL is unreachable
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    keys = generate_key_spec("test-1")
    env = server_env(url, keys, free_port())
    subprocess.run(
        [sys.executable, "-m", "oauth2_server", "migrate"],
        env=env,
        check=True,
        capture_output=True,
    )
    yield Database(backend, url, engine, keys)
    engine.dispose()


def server_env(url: str, keys: str, port: int, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH2_")}
    env.update(
        OAUTH2_DATABASE_URL=url,
        OAUTH2_ENCRYPTION_KEYS=keys,
        OAUTH2_ISSUER=f"http://127.0.0.1:{port}",
        OAUTH2_PORT=str(port),
        OAUTH2_BOOTSTRAP_ADMIN="false",
        # DEBUG with the access log on, so "never logged" tests can see a leak
        OAUTH2_LOG_LEVEL="debug",
        OAUTH2_ACCESS_LOG="true",
        OAUTH2_AUDIT_FLUSH_INTERVAL="0.2",
        # The failure limiter is shared through the database: every server on one test
        # database counts 127.0.0.1 together. Throttling tests set their own limit and IPs.
        OAUTH2_CLIENT_AUTH_FAILURE_LIMIT="1000",
    )
    env.update(overrides)
    return env


@dataclass
class LiveServer:
    """A running `oauth2-server serve` process."""

    base_url: str
    process: subprocess.Popen[bytes]
    db: Database
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None

    def url(self, path: str) -> str:
        return self.base_url + path

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.url(path), timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url(path), timeout=30, **kwargs)

    def client_credentials_token(self, client_id: str, secret: str, **data: str) -> str:
        response = self.post(
            "/oauth2/token",
            auth=(client_id, secret),
            data={"grant_type": "client_credentials", **data},
        )
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def stop(self) -> None:
        stop_servers([self])


def stop_servers(servers: Iterable[LiveServer]) -> None:
    """Ask every server to shut down at once, then wait for each (killed after 15 s):
    their graceful shutdowns overlap instead of running one after another."""
    servers = list(servers)
    for live in servers:
        if live.process.poll() is None:
            live.process.terminate()
    for live in servers:
        try:
            live.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            live.process.kill()


def start_live_server(db: Database, log_dir: Path, **overrides: str) -> LiveServer:
    """Start `python -m oauth2_server serve` on a free port and wait for /readyz."""
    port = free_port()
    env = server_env(db.url, db.keys, port, **overrides)
    log_path = log_dir / f"server-{port}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "oauth2_server", "serve"],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=log_dir,
    )
    server = LiveServer(f"http://127.0.0.1:{port}", process, db, env, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if requests.get(server.url("/readyz"), timeout=1).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become ready:\n{server.log()}")


@pytest.fixture(scope="session")
def server(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The shared live server for this backend (default settings)."""
    live = start_live_server(database, tmp_path_factory.mktemp("server"))
    yield live
    live.stop()


@pytest.fixture
def start_server(database: Database, tmp_path: Path) -> Iterator[Any]:
    """Factory for extra live servers with settings overridden (stopped after the test)."""
    started: list[LiveServer] = []

    def start(**overrides: str) -> LiveServer:
        live = start_live_server(database, tmp_path, **overrides)
        started.append(live)
        return live

    yield start
    stop_servers(started)


def start_deployment_instances(
    database: Database, log_dir: Path, started: list[LiveServer], **overrides: str
) -> tuple[LiveServer, LiveServer]:
    """Two server instances of one deployment (2 workers each by default, one issuer) on
    `database`, each appended to `started` as soon as it runs (the caller stops them)."""
    overrides.setdefault("OAUTH2_WORKERS", "2")
    # One deployment, one issuer (`iss` of every token): without it each instance
    # names itself by its port and refuses the other's tokens at introspection.
    overrides.setdefault("OAUTH2_ISSUER", f"http://127.0.0.1:{free_port()}")
    for _ in range(2):
        live = start_live_server(database, log_dir, **overrides)
        started.append(live)
        # /readyz answered by one worker: wait until a run of answers shows both are up
        for _ in range(20):
            requests.get(live.url("/readyz"), timeout=10).raise_for_status()
    return started[-2], started[-1]


def skip_unless_postgresql(database: Database) -> None:
    if database.backend != "postgresql":
        pytest.skip("two instances share one PostgreSQL database; SQLite is single-instance")


@pytest.fixture
def start_instances(database: Database, tmp_path: Path) -> Iterator[Any]:
    """Factory for one deployment of two server instances: separate processes with 2 workers
    each, on the same PostgreSQL database (DESIGN.md invariant 9). Skips on SQLite, whose
    embedded default serves a single instance. Stopped after the test.

    `start_instances(**overrides)` → (instance_a, instance_b).
    """
    skip_unless_postgresql(database)
    started: list[LiveServer] = []

    def start(**overrides: str) -> tuple[LiveServer, LiveServer]:
        return start_deployment_instances(database, tmp_path, started, **overrides)

    yield start
    stop_servers(started)


@pytest.fixture(scope="module")
def module_server(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`module_server(**overrides)` → a live server with these settings, started on first
    use and reused by the module's later tests asking for the same settings (stopped
    after the module). Only for tests whose checks read nothing but what their own
    clients and users did (no log counting, no server-wide state)."""
    servers: dict[tuple[tuple[str, str], ...], LiveServer] = {}
    log_dir = tmp_path_factory.mktemp("module-server")

    def get(**overrides: str) -> LiveServer:
        key = tuple(sorted(overrides.items()))
        if key not in servers:
            servers[key] = start_live_server(database, log_dir, **overrides)
        return servers[key]

    yield get
    stop_servers(servers.values())


@pytest.fixture(scope="module")
def module_instances(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`module_instances(**overrides)` → (instance_a, instance_b) as `start_instances`,
    started on first use and reused by the module's later tests asking for the same
    settings (stopped after the module; same limits as `module_server`). Skips on
    SQLite."""
    deployments: dict[tuple[tuple[str, str], ...], tuple[LiveServer, LiveServer]] = {}
    started: list[LiveServer] = []
    log_dir = tmp_path_factory.mktemp("module-instances")

    def get(**overrides: str) -> tuple[LiveServer, LiveServer]:
        skip_unless_postgresql(database)
        key = tuple(sorted(overrides.items()))
        if key not in deployments:
            deployments[key] = start_deployment_instances(database, log_dir, started, **overrides)
        return deployments[key]

    yield get
    stop_servers(started)


@pytest.fixture
def db(database: Database) -> Database:
    return database


_counter = iter(range(1_000_000))


@pytest.fixture
def unique() -> Any:
    """unique("alice") → "alice-<n>-<pid>": names that never collide across tests."""
    return lambda prefix: f"{prefix}-{next(_counter)}-{os.getpid()}"


@pytest.fixture(scope="module")
def google() -> Iterator[Any]:
    """The stand-in Google (and Microsoft) provider on 127.0.0.1, the same one
    `oauth2-server dev fake-provider` runs (oauth2_server/dev/fake_provider.py)."""
    from oauth2_server.dev.fake_provider import FakeGoogle

    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _reset_fake_google(request: pytest.FixtureRequest) -> None:
    """Each test starts with the fake provider's default behaviour and zeroed counters."""
    if "google" in request.fixturenames:
        request.getfixturevalue("google").reset()


@pytest.fixture(scope="module")
def upstream(
    request: pytest.FixtureRequest,
    database: Database,
    google: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    """A live server whose upstream providers point at the fake. A test module may set
    `UPSTREAM_ENV` (extra settings; its "PROVIDERS" entry lists the providers to configure,
    default google only)."""
    extra = dict(getattr(request.module, "UPSTREAM_ENV", {}))
    providers = extra.pop("PROVIDERS", ("google",))
    env: dict[str, str] = {}
    for provider in providers:
        env.update(google.env(provider))
    env.update(extra)
    live = start_live_server(database, tmp_path_factory.mktemp(request.module.__name__), **env)
    yield live
    live.stop()
