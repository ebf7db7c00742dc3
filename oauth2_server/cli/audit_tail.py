"""`oauth2-server audit tail --jsonl [--after SEQ] [--follow] [--interval S]`: every sealed
audit row exactly once, as JSON Lines, for a SIEM (issue #11 item 7).

Rows are read by watermark (`audit.watermark`): sealed rows with `seal_seq` > the last
one printed, in `seal_seq` order, `--batch-size` per read. Each line is a row as
`GET /admin/audit` shows it, its `seal_seq` the watermark to resume after; when the
command ends (all rows printed without `--follow`, Ctrl-C, SIGTERM) it writes
`{"next_after": N, "rows": n}` on stderr. With `--follow` it polls every `--interval`
seconds for rows sealed since (rows are sealed `OAUTH2_AUDIT_SEAL_DELAY` seconds after
they are written, by the janitor). The start of a tail is one `audit_read` row (the
watermark, `tail: true`); the polls are not rows, or a tail would feed on its own reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

from oauth2_server.audit import query as audit_query
from oauth2_server.audit import watermark as audit_watermark
from oauth2_server.audit.log import record
from oauth2_server.audit.rows import row_json
from oauth2_server.cli.support import (
    CommandFailed,
    Sessions,
    cli_actor,
    quiet_broken_pipe,
    run_async,
)
from oauth2_server.config import Settings

MIN_INTERVAL = 0.1  # seconds
MAX_INTERVAL = 3600.0
MAX_BATCH = 10_000


class Tail:
    """The state of one tail: the watermark (`after`, the last `seal_seq` printed) and
    the rows printed; `stop` is set by SIGINT/SIGTERM."""

    def __init__(self, after: int, batch: int, out: Any) -> None:
        self.after = after
        self.batch = batch
        self.out = out
        self.rows = 0
        self.stop = asyncio.Event()

    async def pull(self, sessions: Sessions) -> int:
        """Print the next batch of sealed rows (one short read transaction); returns how
        many. The watermark moves only past rows written and flushed."""
        f = audit_query.AuditFilter()
        async with sessions() as session:
            rows = await session.run_sync(audit_watermark.watermark_rows, f, self.after, self.batch)
        for row in rows:
            line = json.dumps(row_json(row), ensure_ascii=False, separators=(",", ":"))
            self.out.write(line + "\n")
        if rows:
            self.out.flush()
            self.after = rows[-1].seal_seq
            self.rows += len(rows)
        return len(rows)

    async def start(self, sessions: Sessions, follow: bool) -> None:
        """Record the tail as an `audit_read` row, and warn on stderr when rows at or
        below the watermark's next seq were removed by retention (`anchor_seq`)."""
        async with sessions() as session, session.begin():
            anchor, _ = await session.run_sync(audit_watermark.chain_bounds)
            details = {"filters": {}, "after": self.after, "tail": True, "follow": follow}
            event = cli_actor().event(audit_query.AUDIT_READ, details=details)
            await session.run_sync(lambda s: record(s, event))
        if self.after < anchor:
            gone = {"warning": "rows were removed by retention", "anchor_seq": anchor}
            print(json.dumps({**gone, "after": self.after}), file=sys.stderr, flush=True)


def _stop_on_signals(tail: Tail) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, tail.stop.set)


async def run_tail(sessions: Sessions, tail: Tail, follow: bool, interval: float) -> None:
    """Pull batches until none is full (without `follow`), or until `tail.stop`."""
    _stop_on_signals(tail)
    await tail.start(sessions, follow)
    while not tail.stop.is_set():
        if await tail.pull(sessions) == tail.batch:
            continue
        if not follow:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tail.stop.wait(), interval)


def _bounded(value: str, low: float, high: float, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise CommandFailed(f"--{name}: must be a number from {low} to {high}") from None
    if not low <= number <= high:
        raise CommandFailed(f"--{name}: must be a number from {low} to {high}")
    return number


def cmd_audit_tail(settings: Settings, args: Any) -> None:
    """Print every sealed row after `--after` (default 0) as JSON Lines; see the module."""
    try:
        after = audit_watermark.parse_after(args.after) or 0
    except audit_query.AuditQueryError as exc:
        raise CommandFailed(f"--after: {exc.message}") from None
    interval = _bounded(args.interval, MIN_INTERVAL, MAX_INTERVAL, "interval")
    batch = int(_bounded(args.batch_size, 1, MAX_BATCH, "batch-size"))
    if batch != float(args.batch_size):
        raise CommandFailed(f"--batch-size: must be an integer from 1 to {MAX_BATCH}")
    tail = Tail(after, batch, sys.stdout)
    try:
        run_async(settings, lambda sessions: run_tail(sessions, tail, args.follow, interval))
    except BrokenPipeError:  # the reader went away: resume from what the watermark says
        quiet_broken_pipe()
    except KeyboardInterrupt:  # before the signal handlers were set
        pass
    finally:
        resume = {"next_after": tail.after, "rows": tail.rows}
        print(json.dumps(resume), file=sys.stderr, flush=True)


def register(audit_group: Any) -> None:
    """Add `audit tail` to the `audit` command's subparsers (`audit_group`)."""
    a: argparse.ArgumentParser = audit_group.add_parser(
        "tail", help="every sealed audit row once, as JSON Lines (for a SIEM)"
    )
    a.add_argument(
        "--jsonl", action="store_true", required=True, help="JSON Lines (the only format)"
    )
    a.add_argument("--after", help=audit_watermark.AFTER_DOC + " (default 0)")
    a.add_argument("--follow", action="store_true", help="keep polling for newly sealed rows")
    a.add_argument(
        "--interval",
        default="2",
        help=f"seconds between polls with --follow ({MIN_INTERVAL}–{MAX_INTERVAL:.0f}, default 2)",
    )
    a.add_argument(
        "--batch-size", default="1000", help=f"rows per read (1–{MAX_BATCH}, default 1000)"
    )
    a.set_defaults(func=cmd_audit_tail)
