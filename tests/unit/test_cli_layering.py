"""DESIGN.md layout: `cli/` holds the whole command line and imports no HTTP module, so
the command works (and starts fast) without the admin API or the web pages."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import importlib, json, pkgutil, sys
import oauth2_server.cli as cli
for module in pkgutil.iter_modules(cli.__path__):
    importlib.import_module("oauth2_server.cli." + module.name)
print(json.dumps(sorted(sys.modules)))
"""


def test_cli_modules_import_nothing_from_the_http_layer():
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(done.stdout)
    assert "oauth2_server.cli.main" in loaded and "oauth2_server.registry.clients" in loaded
    http = [
        name
        for name in loaded
        if name.startswith(("oauth2_server.admin", "oauth2_server.web", "oauth2_server.app"))
    ]
    assert http == []
