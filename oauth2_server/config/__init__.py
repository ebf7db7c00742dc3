"""Settings from the environment: one name, one default, one line of documentation each.

`Settings` (a pydantic-settings model, `config/settings.py`) defines every setting once;
`SETTINGS` and README's configuration table are generated from it (`oauth2-server
settings` prints it). `Settings.from_env()` reads and validates them and raises
`ConfigError` naming every unknown or invalid variable at once.

Modules: `values` (value types and their parsers), `upstream` (the provider settings),
`settings` (the model), `checks` (cross-field and production checks), `table` (rows and
README table), `datadir` (the embedded default's data directory), `errors`.
"""

from __future__ import annotations

from oauth2_server.config.datadir import default_data_dir, ensure_data_dir
from oauth2_server.config.errors import ConfigError
from oauth2_server.config.settings import RETIRED, Settings
from oauth2_server.config.table import SETTINGS, Setting, settings_table_markdown
from oauth2_server.config.values import (
    BUILTIN_SCOPE_DESCRIPTIONS,
    MAX_SCOPE_DESCRIPTION_LENGTH,
    MAX_SCOPE_DESCRIPTIONS,
)

__all__ = [
    "BUILTIN_SCOPE_DESCRIPTIONS",
    "MAX_SCOPE_DESCRIPTIONS",
    "MAX_SCOPE_DESCRIPTION_LENGTH",
    "RETIRED",
    "SETTINGS",
    "ConfigError",
    "Setting",
    "Settings",
    "default_data_dir",
    "ensure_data_dir",
    "settings_table_markdown",
]
