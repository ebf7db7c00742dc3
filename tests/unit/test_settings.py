"""Settings from the environment, without a server: defaults, each value type's refusals,
every problem reported at once, secrets never shown, retired names, production's rules and
README's configuration table (README "Configuration", "Start-up errors and exit statuses").
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from oauth2_server.config import (
    BUILTIN_SCOPE_DESCRIPTIONS,
    RETIRED,
    SETTINGS,
    ConfigError,
    Settings,
    settings_table_markdown,
)

README = Path(__file__).resolve().parents[2] / "README.md"
KEY = "k1:" + "A" * 43  # a well-formed 32-byte keyring entry
PRODUCTION = {
    "OAUTH2_ENV": "production",
    "OAUTH2_ISSUER": "https://auth.example.com",
    "OAUTH2_ENCRYPTION_KEYS": KEY,
    "OAUTH2_DATABASE_URL": "postgresql://oauth2:pw@db.example/oauth2",
}


NOT_HTTP = "expected an absolute http(s) URL, or empty"
BAD_DESCRIPTION = "the description of 'read' must be 1-200 printable characters"


def scope_descriptions(count: int) -> str:
    """OAUTH2_SCOPE_DESCRIPTIONS with `count` scopes."""
    return "{" + ",".join(f'"s{i}": "x"' for i in range(count)) + "}"


def refusal(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ)
    return str(caught.value)


# -- defaults ----------------------------------------------------------------------------


def test_defaults_are_the_documented_ones(tmp_path):
    settings = Settings.from_env({"OAUTH2_DATA_DIR": str(tmp_path)})
    assert (settings.env, settings.issuer, settings.host) == (
        "development",
        "http://127.0.0.1:8000",
        "127.0.0.1",
    )
    assert (settings.port, settings.workers, settings.db_pool_size) == (8000, 1, 10)
    assert (settings.access_token_ttl, settings.refresh_token_ttl) == (3600, 2592000)
    assert (settings.refresh_family_max_age, settings.authorization_code_ttl) == (7776000, 60)
    assert settings.refresh_reuse_grace == 0.0 and isinstance(settings.refresh_reuse_grace, float)
    assert settings.db_timeout == 5.0 and settings.audit_flush_interval == 1.0
    assert settings.access_log is True and settings.bootstrap_admin is True
    assert (settings.log_level, settings.log_format, settings.effective_log_format) == (
        "info",
        "auto",
        "text",
    )
    assert settings.upstream_google_token_endpoint == "https://oauth2.googleapis.com/token"
    assert settings.upstream_microsoft_revocation_endpoint == ""
    assert dict(settings.scope_descriptions) == BUILTIN_SCOPE_DESCRIPTIONS
    assert settings.audience == settings.issuer_url == "http://127.0.0.1:8000"


def test_every_row_default_is_what_an_unset_variable_gives(tmp_path):
    """SETTINGS (README's table) and the values agree: setting each variable to its
    documented default changes nothing."""
    base = {"OAUTH2_DATA_DIR": str(tmp_path)}
    unset = Settings.from_env(base)
    spelled_out = {row.env: row.default for row in SETTINGS if row.env != "OAUTH2_DATA_DIR"}
    assert Settings.from_env({**base, **spelled_out}) == unset
    assert {row.env: row.default for row in SETTINGS}["OAUTH2_AUDIT_FLUSH_INTERVAL"] == "1"


def test_empty_paths_derive_from_the_data_directory(tmp_path):
    """README "Data directory": the SQLite file and the development keyring live in it."""
    settings = Settings.from_env({"OAUTH2_DATA_DIR": str(tmp_path / "d")})
    assert settings.data_dir == str(tmp_path / "d")
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path}/d/oauth2_server.db"
    assert settings.dev_key_file == str(tmp_path / "d" / "oauth2_server.dev-keys.json")
    assert settings.is_sqlite
    chosen = Settings.from_env(
        {
            "OAUTH2_DATA_DIR": "~/state",
            "OAUTH2_DATABASE_URL": "postgresql://db.example/o",
            "OAUTH2_DEV_KEY_FILE": "/k.json",
        }
    )
    assert chosen.data_dir == os.path.expanduser("~/state")
    assert (chosen.database_url, chosen.dev_key_file) == ("postgresql://db.example/o", "/k.json")
    assert not chosen.is_sqlite


def test_values_are_parsed_from_text():
    settings = Settings.from_env(
        {
            "OAUTH2_PORT": " 9000 ",
            "OAUTH2_ACCESS_LOG": "Off",
            "OAUTH2_BOOTSTRAP_ADMIN": "no",
            "OAUTH2_CLIENT_CACHE_TTL": "0.5",
            "OAUTH2_REFRESH_REUSE_GRACE": "300",
            "OAUTH2_LOG_FORMAT": "json",
            "OAUTH2_ISSUER": "https://auth.example.com/",
            "OAUTH2_SCOPE_DESCRIPTIONS": '{"read": "Read your orders", "x:y": "X"}',
        }
    )
    assert (settings.port, settings.access_log, settings.bootstrap_admin) == (9000, False, False)
    assert (settings.client_cache_ttl, settings.refresh_reuse_grace) == (0.5, 300.0)
    assert settings.effective_log_format == "json"
    assert settings.issuer_url == "https://auth.example.com"
    descriptions = dict(settings.scope_descriptions)
    assert descriptions["read"] == "Read your orders" and descriptions["x:y"] == "X"
    assert descriptions["write"] == BUILTIN_SCOPE_DESCRIPTIONS["write"]


def test_settings_are_immutable_and_hashable():
    settings = Settings.from_env({})
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1
    assert hash(settings) == hash(Settings.from_env({}))


def test_from_env_reads_the_process_environment_only_by_default(monkeypatch):
    monkeypatch.setenv("OAUTH2_PORT", "8123")
    monkeypatch.setenv("OAUTH2_NOT_A_SETTING", "1")
    assert Settings.from_env({}).port == 8000  # a given mapping is the whole environment
    assert Settings.from_env({"OAUTH2_PORT": "8124"}).port == 8124
    monkeypatch.delenv("OAUTH2_NOT_A_SETTING")
    assert Settings.from_env().port == 8123


# -- each type's refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "reason"),
    [
        ("OAUTH2_PORT", "abc", "expected an integer"),
        ("OAUTH2_PORT", "", "expected an integer"),
        ("OAUTH2_PORT", "80.5", "expected an integer"),
        ("OAUTH2_PORT", "0", "expected a positive integer"),
        ("OAUTH2_WORKERS", "-2", "expected a positive integer"),
        ("OAUTH2_REFRESH_FAMILY_MAX_AGE", "-1", "expected an integer ≥ 0"),
        ("OAUTH2_ARGON2_QUEUE", "many", "expected an integer"),
        ("OAUTH2_DB_TIMEOUT", "soon", "expected a number"),
        ("OAUTH2_DB_TIMEOUT", "0", "expected a positive number"),
        ("OAUTH2_DB_TIMEOUT", "nan", "expected a positive number"),
        ("OAUTH2_AUDIT_SEAL_DELAY", "-0.5", "expected a number ≥ 0"),
        ("OAUTH2_AUDIT_SEAL_DELAY", "nan", "expected a number ≥ 0"),
        ("OAUTH2_REFRESH_REUSE_GRACE", "300.5", "expected seconds from 0 to 300"),
        ("OAUTH2_REFRESH_REUSE_GRACE", "-1", "expected seconds from 0 to 300"),
        ("OAUTH2_ACCESS_LOG", "maybe", "expected true or false"),
        ("OAUTH2_ENV", "prod", "expected one of development, production"),
        ("OAUTH2_ENV", " production", "expected one of development, production"),
        ("OAUTH2_LOG_LEVEL", "INFO", "expected one of debug, info, warning, error"),
        ("OAUTH2_LOG_FORMAT", "xml", "expected one of auto, text, json"),
        ("OAUTH2_UPSTREAM_GOOGLE_TOKEN_ENDPOINT", "ftp://example.com/token", NOT_HTTP),
        ("OAUTH2_UPSTREAM_MICROSOFT_USERINFO_ENDPOINT", "/relative", NOT_HTTP),
        ("OAUTH2_SCOPE_DESCRIPTIONS", "{", "not JSON (Expecting property name"),
        ("OAUTH2_SCOPE_DESCRIPTIONS", '["read"]', "expected a JSON object such as"),
        (
            "OAUTH2_SCOPE_DESCRIPTIONS",
            '{"a b": "x"}',
            "'a b' is not a scope (RFC 6749 section 3.3)",
        ),
        ("OAUTH2_SCOPE_DESCRIPTIONS", '{"read": ""}', BAD_DESCRIPTION),
        ("OAUTH2_SCOPE_DESCRIPTIONS", '{"read": "line\\nbreak"}', BAD_DESCRIPTION),
        ("OAUTH2_SCOPE_DESCRIPTIONS", '{"read": "' + "x" * 201 + '"}', BAD_DESCRIPTION),
        ("OAUTH2_SCOPE_DESCRIPTIONS", scope_descriptions(1001), "expected at most 1000 scopes"),
    ],
)
def test_invalid_value_is_one_problem_naming_the_variable(name, raw, reason):
    message = refusal({name: raw})
    shown = raw if len(raw) <= 60 else raw[:60] + "…"
    assert message.startswith(f"{name}={shown!r} is invalid: {reason}"), message


def test_scope_descriptions_at_their_limits_are_accepted():
    many = scope_descriptions(1000)
    assert len(Settings.from_env({"OAUTH2_SCOPE_DESCRIPTIONS": many}).scope_descriptions) > 1000
    longest = '{"read": "' + "x" * 200 + '"}'
    settings = Settings.from_env({"OAUTH2_SCOPE_DESCRIPTIONS": longest})
    assert dict(settings.scope_descriptions)["read"] == "x" * 200


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("true", True), ("YES", True), (" on ", True)]
    + [("0", False), ("False", False), ("no", False), ("OFF", False)],
)
def test_flag_spellings(raw, value):
    assert Settings.from_env({"OAUTH2_ACCESS_LOG": raw}).access_log is value


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://operator:s3cret-pw@db.example/oauth2", "unsupported database 'mysql'"),
        ("not a url at all", "not a database URL"),
    ],
)
def test_bad_database_url_never_repeats_the_url(url, says):
    message = refusal({"OAUTH2_DATABASE_URL": url})
    assert message.startswith(f"OAUTH2_DATABASE_URL is invalid: {says}"), message
    assert "s3cret-pw" not in message and "db.example" not in message


# -- several problems at once -----------------------------------------------------------


def test_every_problem_is_reported_at_once_in_order():
    message = refusal(
        {
            "OAUTH2_WORKERS": "x",
            "OAUTH2_PORT": "0",
            "OAUTH2_ACESS_TOKEN_TTL": "60",
            "OAUTH2_LOG_LEVEL": "loud",
        }
    )
    assert message == (
        "4 configuration problems: "
        "unknown setting OAUTH2_ACESS_TOKEN_TTL (see README's configuration table); "
        "OAUTH2_PORT='0' is invalid: expected a positive integer; "
        "OAUTH2_WORKERS='x' is invalid: expected an integer; "
        "OAUTH2_LOG_LEVEL='loud' is invalid: expected one of debug, info, warning, error"
    )


def test_config_error_lists_its_problems():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"OAUTH2_PORT": "a", "OAUTH2_WORKERS": "b"})
    assert caught.value.problems == [
        "OAUTH2_PORT='a' is invalid: expected an integer",
        "OAUTH2_WORKERS='b' is invalid: expected an integer",
    ]
    assert str(ConfigError("only one")) == "only one"


def test_only_exact_oauth2_names_are_settings():
    """Names are case-sensitive: a misspelt case is unknown, other prefixes are not ours."""
    message = refusal({"OAUTH2_Port": "1"})
    assert message == "unknown setting OAUTH2_Port (see README's configuration table)"
    assert Settings.from_env({"oauth2_port": "abc", "PORT": "abc"}).port == 8000


def test_long_values_and_names_are_cut_in_messages():
    message = refusal({"OAUTH2_HOST_" + "X" * 200: "1", "OAUTH2_PORT": "9" * 100 + "x"})
    assert f"unknown setting OAUTH2_HOST_{'X' * 68} (see" in message
    assert f"OAUTH2_PORT='{'9' * 60}…' is invalid: expected an integer" in message
    assert "X" * 69 not in message and "9" * 61 not in message


# -- secrets ----------------------------------------------------------------------------


def test_secret_values_are_never_shown():
    """A bad keyring is refused without its key; repr shows no secret setting."""
    message = refusal({"OAUTH2_ENCRYPTION_KEYS": "k1:" + "B" * 42})
    assert "B" * 10 not in message and "OAUTH2_ENCRYPTION_KEYS" in message
    settings = Settings.from_env(
        {
            **PRODUCTION,
            "OAUTH2_UPSTREAM_GOOGLE_CLIENT_SECRET": "google-secret-value",
            "OAUTH2_UPSTREAM_MICROSOFT_CLIENT_SECRET": "microsoft-secret-value",
        }
    )
    shown = repr(settings)
    for value in ("A" * 43, "pw@", "google-secret-value", "microsoft-secret-value"):
        assert value not in shown
    assert "auth.example.com" in shown  # other values are shown


def test_secret_flags_are_the_settings_that_hold_passwords_or_keys():
    assert {row.env for row in SETTINGS if row.secret} == {
        "OAUTH2_DATABASE_URL",
        "OAUTH2_ENCRYPTION_KEYS",
        "OAUTH2_UPSTREAM_GOOGLE_CLIENT_SECRET",
        "OAUTH2_UPSTREAM_MICROSOFT_CLIENT_SECRET",
        "OAUTH2_WEBHOOK_SECRET",
    }


# -- retired names ----------------------------------------------------------------------


def test_retired_setting_is_warned_about_and_ignored(caplog):
    with caplog.at_level(logging.WARNING, logger="oauth2_server.config"):
        settings = Settings.from_env({"OAUTH2_SECRET_CACHE_TTL": "not even a number"})
    assert settings == Settings.from_env({})
    [record] = [r for r in caplog.records if "OAUTH2_SECRET_CACHE_TTL" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "OAUTH2_SECRET_CACHE_TTL is no longer used and is ignored: "
        + RETIRED["OAUTH2_SECRET_CACHE_TTL"]
    )
    assert "OAUTH2_SECRET_CACHE_TTL" not in {row.env for row in SETTINGS}


# -- cross-field and production rules ---------------------------------------------------


def test_production_refusals_are_reported_together():
    message = refusal({"OAUTH2_ENV": "production", "OAUTH2_ISSUER": "http://auth.example.com"})
    assert message == (
        "3 configuration problems: OAUTH2_ENCRYPTION_KEYS is required when "
        "OAUTH2_ENV=production (`oauth2-server keys generate-encryption-key` makes one); "
        "OAUTH2_ISSUER must be https when OAUTH2_ENV=production; "
        "OAUTH2_DATABASE_URL must be PostgreSQL when OAUTH2_ENV=production"
    )


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"OAUTH2_ENCRYPTION_KEYS": ""}, "OAUTH2_ENCRYPTION_KEYS is required"),
        ({"OAUTH2_ISSUER": "http://auth.example.com"}, "OAUTH2_ISSUER must be https"),
        ({"OAUTH2_DATABASE_URL": ""}, "OAUTH2_DATABASE_URL must be PostgreSQL"),
    ],
    ids=["no-keys", "http-issuer", "sqlite"],
)
def test_production_needs_keys_https_and_postgresql(change, says):
    assert Settings.from_env(PRODUCTION).production
    assert refusal({**PRODUCTION, **change}).startswith(says)


def test_development_accepts_what_production_refuses():
    settings = Settings.from_env({"OAUTH2_ISSUER": "http://auth.example.com"})
    assert not settings.production and settings.problems() == []


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"OAUTH2_ISSUER": "auth.example.com"}, "OAUTH2_ISSUER='auth.example.com' is not an"),
        (
            {"OAUTH2_ISSUER": "https://auth.example.com/?tenant=1"},
            "OAUTH2_ISSUER must not have a query or fragment (RFC 8414 §2)",
        ),
        (
            {"OAUTH2_ISSUER": "https://auth.example.com/#top"},
            "OAUTH2_ISSUER must not have a query or fragment (RFC 8414 §2)",
        ),
        (
            {"OAUTH2_AUTHORIZATION_CODE_TTL": "61"},
            "OAUTH2_AUTHORIZATION_CODE_TTL must be at most 60 seconds",
        ),
        (
            {"OAUTH2_ENCRYPTION_KEYS": KEY, "OAUTH2_ENCRYPTION_PRIMARY_KEY": "k2"},
            "OAUTH2_ENCRYPTION_PRIMARY_KEY='k2' is not in the keyring",
        ),
    ],
    ids=["issuer-not-url", "issuer-query", "issuer-fragment", "code-ttl", "primary-key"],
)
def test_cross_field_problems(environ, problem):
    assert refusal(environ).startswith(problem)


def test_authorization_code_ttl_of_60_seconds_is_accepted():
    """RFC 6749 §4.1.2: a short lifetime, 10 minutes at most; this server allows 60 s."""
    assert Settings.from_env({"OAUTH2_AUTHORIZATION_CODE_TTL": "60"}).authorization_code_ttl == 60


def test_cross_field_checks_wait_for_valid_values():
    """An invalid value is reported alone: no cross-field message about a half-read config."""
    message = refusal({"OAUTH2_ENV": "production", "OAUTH2_PORT": "x"})
    assert message == "OAUTH2_PORT='x' is invalid: expected an integer"


# -- README's table ---------------------------------------------------------------------


def test_readme_configuration_table_is_the_generated_one():
    """README "Configuration" between its settings-table markers is what
    `oauth2-server settings` prints (regenerate it from `settings_table_markdown()`)."""
    readme = README.read_text(encoding="utf-8")
    found = re.search(
        r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", readme, re.S
    )
    assert found, "README has no settings-table markers"
    assert found.group(1) == settings_table_markdown()


def test_table_has_one_row_per_setting_with_its_default():
    lines = settings_table_markdown().splitlines()
    assert lines[:2] == ["| variable | default | meaning |", "|---|---|---|"]
    assert len(lines) == 2 + len(SETTINGS) == 2 + len(Settings.model_fields)
    assert "| `OAUTH2_PORT` | `8000` | Port `serve` listens on. |" in lines
    assert any(line.startswith("| `OAUTH2_DATA_DIR` | (empty) | Directory") for line in lines)
    assert all("\n" not in row.doc and "  " not in row.doc and row.doc for row in SETTINGS)
