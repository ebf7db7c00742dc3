"""Start-up and command failures are one line naming the setting or the resource and what
to do, with a distinct exit status (README "Exit statuses"); the embedded default keeps its
state in one data directory (README "Data directory"). Issue #12 items 3 and 8.

Every case runs the real `oauth2-server` in a subprocess with OAUTH2_DATA_DIR in a
temporary directory, so nothing is written to the real home directory.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import requests

from oauth2_server.crypto.keyring import generate_key_spec, parse_keyring
from tests.conftest import free_port, run_oauth2_cli


def base_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a first-time operator: no OAUTH2_* but the data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH2_")}
    env.update(OAUTH2_DATA_DIR=str(data_dir), OAUTH2_LOG_LEVEL="info")
    env.update(overrides)
    return env


def run(*args: str, env: dict[str, str], cwd: Path, timeout: int = 90):
    return run_oauth2_cli(*args, env=env, cwd=cwd, timeout=timeout)


def one_line(result: subprocess.CompletedProcess[str], code: int, *named: str) -> str:
    """Assert exit status `code` and exactly one line on stderr, `oauth2-server: …`,
    without a traceback, naming each of `named`; return that line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = lines[0]
    assert line.startswith("oauth2-server: ")
    for name in named:
        assert name in line, line
    return line


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.mark.parametrize(
    "url",
    ["mysql://operator:s3cret-pw@db.example/oauth2", "not a url at all"],
    ids=["unsupported", "malformed"],
)
def test_bad_database_url_is_one_line_without_the_password(tmp_path, data_dir, url):
    env = base_env(data_dir, OAUTH2_DATABASE_URL=url)
    line = one_line(run("serve", env=env, cwd=tmp_path), 2, "OAUTH2_DATABASE_URL")
    assert "s3cret-pw" not in line and "postgresql://" in line
    assert not data_dir.exists()


def test_postgresql_unreachable_is_one_line_exit_5(tmp_path, data_dir):
    port = free_port()  # nothing listens there
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/oauth2"
    env = base_env(data_dir, OAUTH2_DATABASE_URL=url, OAUTH2_ENCRYPTION_KEYS=generate_key_spec("k"))
    for command in (["serve", "--port", str(free_port())], ["migrate"], ["clients", "list"]):
        line = one_line(
            run(*command, env=env, cwd=tmp_path),
            5,
            "OAUTH2_DATABASE_URL",
            f"127.0.0.1:{port}",
            "unreachable",
        )
        assert "s3cret-pw" not in line


def test_debug_log_level_shows_the_traceback_then_the_line(tmp_path, data_dir):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/oauth2"
    env = base_env(data_dir, OAUTH2_DATABASE_URL=url, OAUTH2_LOG_LEVEL="debug")
    result = run("migrate", env=env, cwd=tmp_path)
    assert result.returncode == 5
    assert "Traceback" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("oauth2-server: ") and "unreachable" in last


@pytest.mark.skipif(
    not os.environ.get("TEST_DATABASE_URL"), reason="needs a PostgreSQL server to ask"
)
def test_missing_postgresql_database_is_one_line(tmp_path, data_dir):
    base = os.environ["TEST_DATABASE_URL"].rsplit("/", 1)[0]
    env = base_env(data_dir, OAUTH2_DATABASE_URL=f"{base}/oauth2_no_such_database")
    one_line(
        run("migrate", env=env, cwd=tmp_path),
        2,
        "'oauth2_no_such_database' does not exist",
        "OAUTH2_DATABASE_URL",
        "createdb",
    )


@pytest.mark.parametrize(
    ("setting", "value", "path", "command"),
    [
        pytest.param(
            "OAUTH2_DATABASE_URL",
            "sqlite+aiosqlite:///{path}",
            "no/such/dir/x.db",
            "migrate",
            id="sqlite-file-in-a-missing-directory",
        ),
        pytest.param(
            "OAUTH2_DATA_DIR", "{path}/data", "a-file", "migrate", id="data-dir-below-a-file"
        ),
        pytest.param(
            "OAUTH2_DEV_KEY_FILE",
            "{path}",
            "missing-dir/keys.json",
            "serve",
            id="key-file-in-a-missing-directory",
        ),
    ],
)
def test_path_that_cannot_be_created_is_one_line(tmp_path, data_dir, setting, value, path, command):
    """A file or directory the server must create, where it cannot: exit 2, one line naming
    the setting and the path (`a-file` is a plain file, in the way of a directory)."""
    (tmp_path / "a-file").write_text("")
    where = tmp_path / path
    env = base_env(data_dir, **{setting: value.format(path=where)})
    args = ("serve", "--port", str(free_port())) if command == "serve" else (command,)
    one_line(run(*args, env=env, cwd=tmp_path), 2, setting, str(where))


def test_invalid_integer_names_the_setting_in_words(tmp_path, data_dir):
    env = base_env(data_dir, OAUTH2_PORT="abc")
    line = one_line(run("serve", env=env, cwd=tmp_path), 2)
    assert line == "oauth2-server: OAUTH2_PORT='abc' is invalid: expected an integer"


@pytest.mark.parametrize(
    ("key", "says"),
    [("!" * 43, "is not base64url"), ("A" * 42, "must be 32 bytes")],
    ids=["bad-characters", "wrong-length"],
)
def test_bad_encryption_key_says_what_is_wrong_with_it(tmp_path, data_dir, key, says):
    """A key with characters outside base64url is "not base64url"; a base64url key of the
    wrong length "must be 32 bytes" (they were swapped). Refused before anything is written."""
    env = base_env(data_dir, OAUTH2_ENCRYPTION_KEYS=f"k1:{key}")
    one_line(run("serve", env=env, cwd=tmp_path), 2, "OAUTH2_ENCRYPTION_KEYS", says)
    assert not data_dir.exists()


def test_production_refusals_are_reported_together(tmp_path, data_dir):
    env = base_env(data_dir, OAUTH2_ENV="production", OAUTH2_ISSUER="http://auth.example.com")
    line = one_line(
        run("serve", env=env, cwd=tmp_path),
        2,
        "3 configuration problems",
        "OAUTH2_ENCRYPTION_KEYS",
        "OAUTH2_ISSUER",
        "OAUTH2_DATABASE_URL",
    )
    assert "keys generate-encryption-key" in line  # what to do
    assert not data_dir.exists()


def test_key_generation_and_settings_work_in_production(tmp_path, data_dir):
    """The command that makes the key must not demand the key."""
    env = base_env(data_dir, OAUTH2_ENV="production")
    generated = run("keys", "generate-encryption-key", "--kid", "prod-1", env=env, cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert parse_keyring(generated.stdout.strip()).primary == "prod-1"
    as_json = run("keys", "generate-encryption-key", "--json", env=env, cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    entry = json.loads(as_json.stdout)
    assert parse_keyring(entry["entry"]).primary == entry["kid"] == "k1"
    table = run("settings", env=env, cwd=tmp_path)
    assert table.returncode == 0 and "`OAUTH2_DATA_DIR`" in table.stdout, table.stderr
    rows = json.loads(run("settings", "--json", env=env, cwd=tmp_path).stdout)["settings"]
    assert {"variable": "OAUTH2_PORT", "default": "8000"}.items() <= next(
        row for row in rows if row["variable"] == "OAUTH2_PORT"
    ).items()
    assert not data_dir.exists()


def test_port_in_use_is_refused_before_anything_is_written_or_printed(tmp_path, data_dir):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = base_env(data_dir, OAUTH2_PORT=str(port))  # bootstrap admin on by default
        result = run("serve", env=env, cwd=tmp_path)
    one_line(result, 4, f"127.0.0.1:{port}", "already in use", "OAUTH2_PORT")
    assert result.stdout == ""  # no bootstrap secret
    assert not data_dir.exists()  # no SQLite file, no keyring
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_version_and_no_alembic_info_lines_unless_asked(tmp_path, data_dir):
    version = run("--version", env=base_env(data_dir), cwd=tmp_path)
    assert version.stdout.strip() == f"oauth2-server {metadata.version('oauth2-server')}"
    quiet = run("migrate", env=base_env(data_dir), cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert quiet.stdout.startswith("database at revision ")
    verbose = run("--verbose", "migrate", env=base_env(tmp_path / "other"), cwd=tmp_path)
    assert verbose.returncode == 0 and "Running upgrade" in verbose.stderr


def test_every_option_has_help_and_every_data_command_takes_json():
    import argparse

    from oauth2_server.cli.main import build_parser

    missing_help: list[str] = []
    missing_json: list[str] = []
    # long-running or streaming commands: serve, the stand-in provider, audit export
    # (its format is --format csv|jsonl), audit tail (--jsonl), and audit verify-export,
    # whose report is always JSON
    no_json = {"serve", "dev fake-provider", "audit export", "audit tail", "audit verify-export"}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in parser._actions:
            if action in subcommands or isinstance(
                action, argparse._HelpAction | argparse._VersionAction
            ):
                continue
            if not action.help:
                missing_help.append(f"{path} {action.option_strings or action.dest}")
        for group in subcommands:
            for name, child in group.choices.items():
                walk(child, f"{path} {name}".strip())
        takes_json = any("--json" in a.option_strings for a in parser._actions)
        if not subcommands and path not in no_json and not takes_json:
            missing_json.append(path)

    walk(build_parser(), "")
    assert missing_help == []
    assert missing_json == []


def test_data_dir_keeps_one_server_whatever_the_working_directory(tmp_path, data_dir):
    """A client created from one folder is served by `serve` started from another: same
    database, same keyring, both in OAUTH2_DATA_DIR (0700), nothing in either folder."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    port = free_port()
    env = base_env(data_dir, OAUTH2_PORT=str(port), OAUTH2_ISSUER=f"http://127.0.0.1:{port}")
    created = run("clients", "create", "--name", "svc", "--json", env=env, cwd=first)
    assert created.returncode == 0, created.stderr
    client = json.loads(created.stdout)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert (data_dir / "oauth2_server.db").exists()
    shown = run("clients", "show", client["client_id"], env=env, cwd=second)
    assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "svc", shown.stderr
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "oauth2_server", "serve"],
            env=env,
            cwd=second,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert process.poll() is None, log_path.read_text()
        token = requests.post(
            f"http://127.0.0.1:{port}/oauth2/token",
            auth=(client["client_id"], client["client_secret"]),
            data={"grant_type": "client_credentials"},
            timeout=30,
        )
        assert token.status_code == 200, token.text
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert "client_secret" not in log_path.read_text()  # not an empty database: no bootstrap
    key_file = data_dir / "oauth2_server.dev-keys.json"  # made by serve's signing key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert list(first.iterdir()) == [] and list(second.iterdir()) == []


def test_default_data_dir_is_the_per_user_data_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAUTH2_", "XDG_"))}
    env.update(HOME=str(tmp_path), OAUTH2_LOG_LEVEL="info")
    result = run("migrate", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data_dir = tmp_path / ".local" / "share" / "oauth2-server"
    assert (data_dir / "oauth2_server.db").exists()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_lost_or_replaced_key_file_is_one_line_and_rotate_refuses(tmp_path, data_dir):
    env = base_env(data_dir)
    first = run("keys", "rotate", "--json", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    key_file = data_dir / "oauth2_server.dev-keys.json"
    original = key_file.read_text()
    key_file.unlink()  # lost
    for command in (("keys", "rotate"), ("serve", "--port", str(free_port()))):
        one_line(run(*command, env=env, cwd=tmp_path), 2, str(key_file), "is missing", "restore")
    assert not key_file.exists()  # not silently replaced by a new keyring
    key_file.write_text(json.dumps({"OAUTH2_ENCRYPTION_KEYS": generate_key_spec("dev-1")}))
    for command in (("keys", "rotate"), ("serve", "--port", str(free_port()))):
        one_line(run(*command, env=env, cwd=tmp_path), 2, str(key_file), "cannot decrypt")
    key_file.write_text(original)  # restored
    again = run("keys", "rotate", "--json", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["kid"] != json.loads(first.stdout)["kid"]
