"""The settings as rows: README's configuration table and `oauth2-server settings`."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic.fields import FieldInfo

from oauth2_server.config.settings import Settings, env_name
from oauth2_server.config.values import is_secret


@dataclass(frozen=True)
class Setting:
    """One environment variable as documented: its name, the `Settings` attribute, its
    default as an operator would write it (empty: derived or unset), its README line and
    whether its value is secret."""

    env: str
    attr: str
    default: str
    doc: str
    secret: bool


def _default_text(field: FieldInfo) -> str:
    """The default as the variable's text: `true`, `8000`, `5` (for 5.0), `0.5`."""
    value = field.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _one_line(field: FieldInfo) -> str:
    """The field's documentation (its docstring, wrapped in the source) on one line."""
    return " ".join((field.description or "").split())


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(env_name(attr), attr, _default_text(field), _one_line(field), is_secret(field))
    for attr, field in Settings.model_fields.items()
)


def settings_table_markdown() -> str:
    """README's configuration table (between its `settings-table` markers), from SETTINGS."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(empty)"
        rows.append(f"| `{s.env}` | {default} | {s.doc} |")
    return "\n".join(rows)
