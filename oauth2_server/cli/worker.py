"""`oauth2-server worker`: the proactive upstream refresh worker (`upstream.worker`;
issue #14 item 1) as its own process, until SIGTERM or SIGINT; `--once` runs one cycle
and prints its outcomes. Any number of worker processes (and `serve` processes with
OAUTH2_UPSTREAM_REFRESH_WORKER=true) may run against one PostgreSQL database. Beside it
runs the webhook delivery loop (`notify.delivery.run_delivery`) when OAUTH2_WEBHOOK_URL
is set, so the events the refresh worker enqueues go out even where no `serve` runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal

from oauth2_server.cli.support import add_json, prepare_database
from oauth2_server.config import Settings
from oauth2_server.crypto.keyring import load_keyring
from oauth2_server.db import migrate
from oauth2_server.db.engine import create_engine, create_sessionmaker
from oauth2_server.notify.delivery import run_delivery
from oauth2_server.upstream.service import UpstreamService
from oauth2_server.upstream.worker import RefreshWorker, publish_health

log = logging.getLogger(__name__)


async def _work(settings: Settings, once: bool) -> dict[str, int]:
    """Open the database (SQLite migrated, PostgreSQL at head), then cycle (once, or until
    a stop signal); in-flight refreshes finish before the process ends."""
    engine = create_engine(
        settings.database_url, settings.upstream_refresh_concurrency + 2, settings.db_timeout
    )
    try:
        if settings.is_sqlite:
            await migrate.upgrade(engine)
        else:
            await migrate.require_head(engine)
        service = UpstreamService(settings, create_sessionmaker(engine), load_keyring(settings))
        worker = RefreshWorker(settings, service)
        try:
            if once:
                outcomes = await worker.cycle()
                await publish_health(service.sessionmaker)
                return dict(outcomes)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            log.info(
                "upstream refresh worker: every %gs, %ds ahead, %d at once",
                settings.upstream_refresh_interval,
                settings.upstream_refresh_ahead,
                settings.upstream_refresh_concurrency,
            )
            await asyncio.gather(worker.run(stop), run_delivery(settings, engine, stop))
            return {}
        finally:
            await service.aclose()
    finally:
        await engine.dispose()


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    """Run the refresh worker; `--once`: one cycle, its outcomes printed
    (`ok`/`needs_consent`/`failed` counts; JSON with --json)."""
    prepare_database(settings)
    with contextlib.suppress(KeyboardInterrupt):
        outcomes = asyncio.run(_work(settings, args.once))
        if args.once:
            counts = {key: outcomes.get(key, 0) for key in ("ok", "needs_consent", "failed")}
            print(
                json.dumps({"refreshed": counts})
                if args.json
                else " ".join(f"{k}={v}" for k, v in counts.items())
            )


def register(worker: argparse.ArgumentParser) -> None:
    """Add `worker [--once] [--json]`'s options to its parser."""
    worker.add_argument("--once", action="store_true", help="one cycle, then exit")
    add_json(worker)
    worker.set_defaults(func=cmd_worker)
