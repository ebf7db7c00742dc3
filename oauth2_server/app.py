"""`create_app(settings)`: the whole HTTP surface in one routing table, and its lifespan.

Nothing is global: the engine, the OAuth service and the audit buffer are built here and
hung on `app.state` for the life of the app.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.templating import Jinja2Templates

from oauth2_server import admin
from oauth2_server.audit.log import AuditBuffer
from oauth2_server.config import Settings
from oauth2_server.crypto.keyring import Keyring, load_keyring
from oauth2_server.db import migrate
from oauth2_server.db.engine import create_engine, create_sessionmaker
from oauth2_server.db.models import TokenLog
from oauth2_server.monitor import Monitor
from oauth2_server.notify.delivery import start_delivery, stop_delivery
from oauth2_server.oauth.bridge import Bridge
from oauth2_server.oauth.keys import KeyStore
from oauth2_server.oauth.server import OAuthService
from oauth2_server.storage.client_notify import ClientChangeListener
from oauth2_server.storage.errors import Availability, DatabaseUnavailable
from oauth2_server.storage.fastpath import FastStore, split_pool_size
from oauth2_server.upstream.worker import run_background
from oauth2_server.web import authorize, discovery, errors, health, oauth_endpoints, upstream
from oauth2_server.web.middleware import HttpMiddleware

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"

routes = [
    Route("/.well-known/oauth-authorization-server", discovery.metadata, methods=["GET"]),
    Route(
        "/oauth2/authorize",
        authorize.authorize,
        methods=["GET", "POST"],
        middleware=[Middleware(authorize.LoginSessionMiddleware)],
    ),
    Route("/oauth2/token", oauth_endpoints.token, methods=["GET", "POST"]),
    Route("/oauth2/introspect", oauth_endpoints.introspect, methods=["GET", "POST"]),
    Route("/introspect", oauth_endpoints.introspect, methods=["GET", "POST"]),
    Route("/oauth2/revoke", oauth_endpoints.revoke, methods=["GET", "POST"]),
    Route("/oauth2/par", oauth_endpoints.pushed_authorization_request, methods=["GET", "POST"]),
    Route("/oauth2/jwks", discovery.jwks, methods=["GET"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/metrics", health.metrics, methods=["GET"]),
    Route("/upstream/{provider}/callback", upstream.callback, methods=["GET"]),
    Mount("/admin", routes=admin.routes),
]


KEY_RELOAD_SECONDS = 60


async def _reload_keys(bridge: Bridge, keys: KeyStore) -> None:
    """Pick up keys rotated by another process (`oauth2-server keys rotate`)."""
    while True:
        await asyncio.sleep(KEY_RELOAD_SECONDS)
        try:
            await bridge.write(keys.load)
        except DatabaseUnavailable:
            pass  # the outage is logged once (storage.errors.Availability); try next time
        except Exception:
            log.exception("reloading signing keys failed; keeping the loaded ones")


def app_from_env() -> Starlette:
    """uvicorn factory (`oauth2_server.app:app_from_env`) for multi-worker serving."""
    return create_app(Settings.from_env())


async def _client_listener(
    settings: Settings, engine: AsyncEngine, oauth: OAuthService
) -> ClientChangeListener | None:
    """PostgreSQL: client changes pushed to this worker's cache (`storage.client_notify`),
    listening once started. SQLite (one process): None."""
    if settings.is_sqlite:
        return None
    dsn = make_url(engine.url).set(drivername="postgresql")
    listener = ClientChangeListener(
        dsn.render_as_string(hide_password=False), oauth.clients.invalidate, settings.db_timeout
    )
    await listener.start()
    return listener


def _lifespan(
    settings: Settings, keyring: Keyring, availability: Availability
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """The app's lifespan: opens the database (one connection budget per worker,
    `storage.fastpath.split_pool_size`), builds the OAuth service and its background
    tasks, hangs them on `app.state`, and closes everything at shutdown."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        session_pool, hot_pool = split_pool_size(settings.db_pool_size)
        engine = create_engine(settings.database_url, session_pool, settings.db_timeout)
        try:
            if settings.is_sqlite:
                await migrate.upgrade(engine)
            else:
                await migrate.require_head(engine)
            fast = await FastStore.create(engine, hot_pool, settings.db_timeout, availability)
            bridge = Bridge(create_sessionmaker(engine), fast, availability)
            keys = KeyStore(keyring)
            await bridge.write(keys.ensure)
            audit_buffer = AuditBuffer(
                lambda rows: fast.copy_rows(TokenLog.__table__, rows),
                settings.audit_flush_interval,
                settings.audit_batch_size,
                settings.audit_buffer_max_rows,
            )
            audit_buffer.start()
            reload_task = asyncio.create_task(_reload_keys(bridge, keys))
            app.state.engine = engine
            app.state.oauth = OAuthService(settings, bridge, keys, audit_buffer)
            listener = await _client_listener(settings, engine, app.state.oauth)
            app.state.templates = Jinja2Templates(directory=str(TEMPLATES))
            # What start-up built lives as long as the worker: full collections during
            # requests then only walk what requests allocate (README "Performance").
            gc.collect()
            gc.freeze()
            monitor = Monitor(settings.loop_monitor_interval)  # loop lag, GC pauses
            monitor.start()
            webhooks = start_delivery(settings, engine)  # OAUTH2_WEBHOOK_URL set: the outbox
            # Proactive upstream refresh (OAUTH2_UPSTREAM_REFRESH_WORKER), else the gauge.
            refresher, stop_refresher = run_background(settings, app.state.oauth.upstream)
            yield
            stop_refresher.set()
            await refresher
            await stop_delivery(webhooks)
            await monitor.stop()
            reload_task.cancel()
            if listener is not None:
                await listener.close()
            app.state.oauth.refusals.close_all()  # open refusal windows' summary rows
            await audit_buffer.stop()
            await app.state.oauth.upstream.aclose()
            await fast.close()
        finally:
            await engine.dispose()

    return lifespan


def create_app(settings: Settings) -> Starlette:
    """Build the Starlette app. The database is opened in the lifespan: SQLite is migrated
    there; PostgreSQL must already be at the head revision (else start-up fails with a
    message to run `oauth2-server migrate`). Changes nothing outside the app: no
    environment variable, no class attribute (two apps in one process are independent)."""
    keyring = load_keyring(settings)
    availability = Availability()
    session_settings = {
        "secret_key": keyring.derive(b"oauth2-server session cookie").hex(),
        "session_cookie": "oauth2_session",
        "max_age": settings.session_ttl,
        "same_site": "lax",
        "https_only": settings.production,
    }

    lifespan = _lifespan(settings, keyring, availability)
    middleware = [
        Middleware(HttpMiddleware, access_log=settings.access_log),
        # Anything no handler below took: 500 server_error JSON, one log line.
        Middleware(errors.LastResort, handler=errors.unhandled),
    ]
    # Every error no endpoint answered, in one place (web/errors.py says why each).
    exception_handlers = {
        HTTPException: errors.http_exception,  # 404, 405: JSON, never text/plain
        DatabaseUnavailable: errors.database_unavailable,  # 503 + Retry-After
        Exception: errors.unhandled,  # only what escapes our own middleware
    }
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers=exception_handlers,
    )
    app.state.session_settings = session_settings
    app.state.availability = availability
    app.state.retry_after = max(1, math.ceil(settings.db_timeout))
    return app
