"""The settings as rows: README's configuration table and `oauth2-server settings`."""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from functools import cache

from pydantic.fields import FieldInfo

from oauth2_server.config.settings import Settings, _Settings, env_name
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


def attribute_docstrings(cls: type) -> dict[str, str]:
    """{attribute: docstring} for each annotated attribute of `cls`'s body that a string
    literal follows (PEP 257's attribute docstrings), read from its source with `ast`.

    Only the table reads them, so importing the settings parses no source: pydantic's
    `use_attribute_docstrings` did that in every process (about 70 ms of each start-up)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, str] = {}
    for node, following in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = following.value.value
    return docs


def _one_line(text: str | None) -> str:
    """A field's documentation (its docstring, wrapped in the source) on one line."""
    return " ".join((text or "").split())


@cache
def settings_rows() -> tuple[Setting, ...]:
    """Every setting as a row, in `Settings` order (built once, on first use)."""
    docs = attribute_docstrings(_Settings)
    return tuple(
        Setting(
            env_name(attr),
            attr,
            _default_text(field),
            _one_line(field.description or docs.get(attr)),
            is_secret(field),
        )
        for attr, field in Settings.model_fields.items()
    )


def settings_table_markdown() -> str:
    """README's configuration table (between its `settings-table` markers), from
    `settings_rows()`."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in settings_rows():
        default = f"`{s.default}`" if s.default else "(empty)"
        rows.append(f"| `{s.env}` | {default} | {s.doc} |")
    return "\n".join(rows)
