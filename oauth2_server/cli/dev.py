"""`oauth2-server dev fake-provider google|microsoft`: the stand-in provider on loopback.

A development tool: it runs `oauth2_server.dev.fake_provider.FakeGoogle` (the same
stand-in the test suite uses) on 127.0.0.1, prints the `OAUTH2_UPSTREAM_<PROVIDER>_*`
settings that point this server at it as `export VAR=value` lines on stdout, and serves
until Ctrl-C (SIGINT) or SIGTERM. `serve` never starts it. The fake module is imported
only when the command runs.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from typing import Any

from oauth2_server.cli.support import EXIT_CONFLICT, CommandFailed
from oauth2_server.config import Settings

PROVIDERS = ("google", "microsoft")


def export_lines(env: dict[str, str]) -> list[str]:
    """`export VAR=value` lines (values shell-quoted) for a POSIX shell to evaluate."""
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


def cmd_fake_provider(settings: Settings, args: argparse.Namespace) -> None:
    """Run the stand-in provider on 127.0.0.1:`--port` (0: a free port) until stopped.

    Raises CommandFailed (exit status 4, conflict) when the port cannot be bound (in use,
    or privileged)."""
    from oauth2_server.dev.fake_provider import LOOPBACK, FakeGoogle

    fake = FakeGoogle()
    fake.rotate_refresh_tokens = args.provider == "microsoft"  # Microsoft rotates on use
    try:
        fake.start(port=args.port)
    except OSError as exc:
        raise CommandFailed(
            f"--port: cannot listen on {LOOPBACK}:{args.port} ({exc.strerror or exc}); "
            "choose another port, or --port 0 for a free one",
            EXIT_CONFLICT,
        ) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"# stand-in {args.provider} provider (development only) at {fake.base_url}")
    print("# export these, then (re)start `oauth2-server serve` in the same shell:")
    print("\n".join(export_lines(fake.env(args.provider))), flush=True)
    print(
        f"fake {args.provider} provider listening on {fake.base_url}; "
        "it signs in anyone as owner@branch.example; Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        fake.stop()


def register(parser: argparse.ArgumentParser) -> None:
    """Add the `dev` subcommands to `oauth2-server dev`'s parser."""
    dev = parser.add_subparsers(dest="dev_command", required=True)
    fake = dev.add_parser(
        "fake-provider",
        help="run a stand-in Google or Microsoft OAuth provider on 127.0.0.1 (development "
        "only) and print the OAUTH2_UPSTREAM_* settings that point this server at it",
    )
    fake.add_argument("provider", choices=PROVIDERS, help="which provider's settings to print")
    fake.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 to listen on (default: a free one)"
    )
    fake.set_defaults(func=cmd_fake_provider)
