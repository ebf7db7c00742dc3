"""One Alembic history in the top-level `alembic/` beside `alembic.ini` (DESIGN.md layout;
issue #10 item 5), run two ways: `alembic upgrade head` from the repository root, and the
installed `oauth2-server migrate`, whose wheel carries the same scripts.

Real commands in subprocesses, real databases: a fresh SQLite file, and a fresh PostgreSQL
database beside `TEST_DATABASE_URL`'s when it is set. The wheel is built once per session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from oauth2_server.db import migrate
from tests.conftest import BACKENDS, ROOT, sync_url

ALEMBIC_DIR = ROOT / "alembic"


def base_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """No OAUTH2_* from the caller; the data directory in `tmp_path`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH2_")}
    env.pop("PYTHONPATH", None)
    env["OAUTH2_DATA_DIR"] = str(tmp_path / "data")
    env.update(overrides)
    return env


def stored_revision(url: str) -> str | None:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def assert_migrates_to_head(command: list[str], url: str, cwd: Path, env: dict[str, str]) -> None:
    """`python COMMAND` run in `cwd` succeeds and leaves the database at the head revision."""
    result = subprocess.run(
        [sys.executable, *command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert stored_revision(url) == migrate.head_revision()


@pytest.fixture(params=BACKENDS)
def fresh_database(request, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a new SQLite file, or a new PostgreSQL database on
    `TEST_DATABASE_URL`'s server (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    base = make_url(os.environ["TEST_DATABASE_URL"])
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"{base.database}_layout_{worker}"
    admin = create_engine(sync_url(str(base.render_as_string(hide_password=False))))
    admin = admin.execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_scripts_live_in_the_top_level_alembic_directory():
    assert (ROOT / "alembic.ini").is_file()
    assert (ALEMBIC_DIR / "env.py").is_file()
    assert sorted(ALEMBIC_DIR.glob("versions/*.py"))
    assert not (ROOT / "oauth2_server" / "migrations").exists()
    assert Path(migrate.script_location()) == ALEMBIC_DIR


def test_alembic_directory_never_shadows_the_alembic_library():
    # a directory without __init__.py is a namespace portion, which loses to the real
    # package wherever that stands on sys.path; an __init__.py would win from the root
    assert not list(ALEMBIC_DIR.rglob("__init__.py"))
    probe = "import alembic, alembic.command, alembic.config; print(alembic.__file__)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert not Path(result.stdout.strip()).is_relative_to(ALEMBIC_DIR), result.stdout


def test_alembic_upgrade_head_from_the_repository_root(tmp_path, fresh_database):
    env = base_env(tmp_path, OAUTH2_DATABASE_URL=fresh_database)
    assert_migrates_to_head(["-m", "alembic", "upgrade", "head"], fresh_database, ROOT, env)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built once from a copy of the sources (the checkout stays
    clean: setuptools writes build/ and egg-info beside the sources)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("oauth2_server", "alembic"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        # Build isolation, as a user's `pip wheel .` does: pip takes the build-system's
        # setuptools from the package index (the venv's may be older, without bdist_wheel).
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
        + ["-w", str(work / "dist"), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = (work / "dist").glob("*.whl")
    return built


def test_wheel_carries_every_module_and_every_migration(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in sorted(ALEMBIC_DIR.rglob("*.py")) + [ALEMBIC_DIR / "script.py.mako"]:
        assert f"oauth2_server/_alembic/{path.relative_to(ALEMBIC_DIR).as_posix()}" in names
    # pyproject.toml lists the packages: one left out would be missing from the wheel
    package = ROOT / "oauth2_server"
    for path in sorted(package.rglob("*.py")):
        assert f"oauth2_server/{path.relative_to(package).as_posix()}" in names, (
            f"{path.relative_to(ROOT)} is not in the wheel: add its package to "
            "pyproject.toml [tool.setuptools] packages"
        )
    assert not any(name.startswith(("alembic/", "migrations/")) for name in names)


def test_installed_migrate_runs_the_packaged_scripts_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        + [str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    url = f"sqlite:///{tmp_path / 'installed.db'}"
    env = base_env(tmp_path, OAUTH2_DATABASE_URL=url, PYTHONPATH=str(target))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "from oauth2_server.db import migrate; print(migrate.script_location())",
        ],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()) == target / "oauth2_server" / "_alembic"
    assert_migrates_to_head(["-m", "oauth2_server", "migrate", "--json"], url, outside, env)
