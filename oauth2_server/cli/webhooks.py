"""`oauth2-server webhooks generate-secret`: a new OAUTH2_WEBHOOK_SECRET (Standard
Webhooks `whsec_` form, 32 random bytes). Needs no configuration."""

from __future__ import annotations

import argparse
import json

from oauth2_server.cli.support import add_json
from oauth2_server.config import Settings
from oauth2_server.config.webhook import generate_webhook_secret


def cmd_generate_secret(settings: Settings | None, args: argparse.Namespace) -> None:
    secret = generate_webhook_secret()
    print(json.dumps({"secret": secret}) if args.json else secret, flush=True)


def register(webhooks: argparse.ArgumentParser) -> None:
    """Add the `webhooks …` subcommands to `oauth2-server webhooks`'s parser."""
    commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    gen = commands.add_parser(
        "generate-secret", help="print a new OAUTH2_WEBHOOK_SECRET (no config)"
    )
    add_json(gen)
    gen.set_defaults(func=cmd_generate_secret, needs_settings=False)
