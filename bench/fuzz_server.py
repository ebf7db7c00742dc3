"""A scratch live server for the fuzz runs (bench/fuzz_oauth.py, bench/fuzz_admin.py).

`scratch_server(database_url)` migrates a scratch database (a temporary SQLite file by
default; a PostgreSQL URL has its `public` schema dropped and re-created first, so never
point it at a database you care about), starts `oauth2-server serve` on a free loopback port
with the tests' fixtures (tests/conftest.py) and stops it afterwards. The server logs at
INFO into a file the caller can read (`LiveServer.log()`).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from oauth2_server.crypto.keyring import generate_key_spec  # noqa: E402
from tests.conftest import (  # noqa: E402
    Database,
    LiveServer,
    free_port,
    server_env,
    start_live_server,
    sync_url,
)


@contextmanager
def scratch_server(database_url: str | None = None, **env: str) -> Iterator[LiveServer]:
    """A migrated scratch database and a live server on it (`env`: extra settings)."""
    workdir = Path(tempfile.mkdtemp(prefix="oauth2-fuzz-"))
    url = database_url or f"sqlite+aiosqlite:///{workdir / 'fuzz.db'}"
    engine = create_engine(sync_url(url))
    if not url.startswith("sqlite"):
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    keys = generate_key_spec("fuzz-1")
    subprocess.run(
        [sys.executable, "-m", "oauth2_server", "migrate"],
        env=server_env(url, keys, free_port()),
        check=True,
        capture_output=True,
    )
    db = Database("postgresql" if url.startswith("postgres") else "sqlite", url, engine, keys)
    live = start_live_server(db, workdir, **{"OAUTH2_LOG_LEVEL": "info", **env})
    try:
        yield live
    finally:
        live.stop()
        engine.dispose()
