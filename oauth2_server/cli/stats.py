"""`oauth2-server stats [--json]`: the statistics of GET /admin/stats (issue #14 item 4),
from the same service (`registry.stats.collect_stats`), as text or JSON."""

from __future__ import annotations

import argparse
from typing import Any

from oauth2_server.cli.support import Sessions, add_json, print_json, run_async
from oauth2_server.config import Settings
from oauth2_server.registry.stats import collect_stats


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[str]:
    """Rows as aligned text lines under a header of `columns`."""
    cells = [[str(row.get(c) if row.get(c) is not None else "-") for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return ["  " + line.rstrip() for line in lines]


def render_text(stats: dict[str, Any]) -> str:
    """The statistics as text for a terminal: one section per figure."""
    live = stats["live_tokens"]
    failed = stats["failed_client_auth"]
    branches = stats["branches_needing_consent"]
    lines = [f"statistics at {stats['generated_at']}", ""]
    lines.append(f"live access tokens: {live['access']['total']}")
    lines += _table(live["access"]["groups"], ("client_id", "grant_type", "count"))
    lines.append(f"live refresh tokens: {live['refresh']['total']}")
    lines += _table(live["refresh"]["groups"], ("client_id", "count"))
    lines += ["", f"per hour since {stats['hourly']['since']} (UTC)"]
    lines += _table(
        stats["hourly"]["hours"], ("hour", "issued", "refreshed", "exchanged", "revoked")
    )
    lines += ["", f"failed client authentications (24 h): {failed['total']}"]
    lines += _table(failed["groups"], ("client_id", "count"))
    lines += ["", "upstream grants"]
    lines += _table(stats["upstream_grants"], ("provider", "state", "count"))
    lines += ["", f"branches needing consent: {branches['total']}"]
    lines += _table(branches["items"], ("branch_id", "provider", "reason"))
    return "\n".join(lines)


def cmd_stats(settings: Settings, args: argparse.Namespace) -> None:
    async def go(sessions: Sessions) -> Any:
        async with sessions() as session, session.begin():  # may store rollup rows
            return await session.run_sync(collect_stats)

    stats = run_async(settings, go)
    if args.json:
        print_json(stats)
    else:
        print(render_text(stats), flush=True)


def register(parser: argparse.ArgumentParser) -> None:
    """Add `stats`'s options to its parser."""
    add_json(parser)
    parser.set_defaults(func=cmd_stats)
