"""The configuration error and how a setting's value appears in its message."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; the message names the variable.

    `problems` lists every problem found (the message joins them on one line)."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        if len(problems) == 1:
            message = problems[0]
        else:
            message = f"{len(problems)} configuration problems: " + "; ".join(problems)
        super().__init__(message)


def shown(env: str, raw: str, *, secret: bool = False) -> str:
    """`NAME='value'` for a message: at most 60 characters of the value; only `NAME` when
    the setting is secret (it holds a password or a key)."""
    if secret:
        return env
    value = raw if len(raw) <= 60 else raw[:60] + "…"
    return f"{env}={value!r}"
