"""The data directory of the embedded default (README "Data directory")."""

from __future__ import annotations

import os

from oauth2_server.config.errors import ConfigError


def default_data_dir() -> str:
    """The per-user data directory: `$XDG_DATA_HOME/oauth2-server`, else
    `~/.local/share/oauth2-server` on Linux (platformdirs' `user_data_dir` elsewhere)."""
    import platformdirs

    return platformdirs.user_data_dir("oauth2-server", appauthor=False)


def ensure_data_dir(path: str) -> None:
    """Create the data directory `path` (and its parents) with mode 0700 if it is missing.

    Raises ConfigError naming OAUTH2_DATA_DIR when it cannot be created."""
    if os.path.isdir(path):
        return
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ConfigError(
            f"OAUTH2_DATA_DIR={path[:200]!r} cannot be created ({exc.strerror}): choose a "
            "writable directory, or set OAUTH2_DATABASE_URL and OAUTH2_DEV_KEY_FILE"
        ) from None
