"""docker-compose.yml, the Dockerfile and requirements.lock run as production would.

Docker cannot run here, so the files are checked for shape: the services and the order
they start in, a /readyz healthcheck, a janitor on a schedule, a TLS-terminating proxy
that alone publishes ports and alone is trusted for X-Forwarded-For, production settings
that `Settings.from_env` accepts, no bootstrap secret in logs, and an image that installs
only hash-pinned dependencies (pip's hash-checking mode). tests/test_connection_limits.py
checks the proxy's header timeouts.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from oauth2_server.config import Settings
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
# What an operator fills in (the compose file refuses to start without them).
FILLED_IN = {
    "OAUTH2_PUBLIC_HOST": "auth.example.com",
    "POSTGRES_PASSWORD": "s3cretpassw0rd",
    "OAUTH2_ENCRYPTION_KEYS": "k1:KlLZ7CfqCHW2b2KHQtFzYFQ6P_-VHO6NyU5Mr-EeL7c",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")
SERVER_ROLES = ("migrate", "server", "worker", "janitor")  # services running the image


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}`; raises KeyError naming a
    required variable that `env` lacks, as `docker compose` refuses to start."""

    def value(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if name in env and env[name]:
            return env[name]
        if kind == "-":
            return rest
        raise KeyError(f"{name}: {rest}")

    return _VARIABLE.sub(value, text)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), FILLED_IN if env is None else env))


def test_compose_runs_database_migration_server_janitor_and_proxy_in_order():
    services = compose()["services"]
    assert {"db", "migrate", "server", "janitor", "proxy"} <= services.keys()
    assert services["db"]["image"].startswith("postgres:")

    def waits_for(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert waits_for("migrate") == {"db": "service_healthy"}
    for name in ("server", "worker", "janitor"):
        assert waits_for(name) == {
            "db": "service_healthy",
            "migrate": "service_completed_successfully",
        }
    assert waits_for("proxy") == {"server": "service_healthy"}
    for name in ("db", "server", "worker", "janitor", "proxy"):
        assert services[name]["restart"] == "unless-stopped"


def test_compose_runs_the_upstream_refresh_worker():
    """Issue #14 item 1: `oauth2-server worker` runs as its own service, publishing no
    port; the server's workers leave refreshing to it."""
    services = compose()["services"]
    worker = services["worker"]
    assert worker["command"] == ["oauth2-server", "worker"]
    assert "build" in worker and "ports" not in worker and "expose" not in worker
    server_env = services["server"]["environment"]
    assert str(server_env.get("OAUTH2_UPSTREAM_REFRESH_WORKER", "false")) == "false"


def test_server_healthcheck_asks_readyz_without_curl():
    check = compose()["services"]["server"]["healthcheck"]
    test = check["test"]
    assert test[0] == "CMD" and test[1] == "python"  # the slim image has no curl
    assert "http://127.0.0.1:8000/readyz" in test[-1] and "urllib.request" in test[-1]
    assert check["retries"] >= 1 and check["start_period"]


def test_janitor_runs_on_a_schedule():
    janitor = compose()["services"]["janitor"]
    assert "build" in janitor and "ports" not in janitor
    script = " ".join(janitor["command"])
    assert re.search(r"while true; do oauth2-server janitor; sleep \d+; done", script)


def test_production_settings_that_the_server_accepts():
    services = compose()["services"]
    for name in SERVER_ROLES:
        env = {key: str(value) for key, value in services[name]["environment"].items()}
        assert env["OAUTH2_ENV"] == "production", name
        assert env["OAUTH2_BOOTSTRAP_ADMIN"] == "false", name  # no secret in container logs
        assert env["OAUTH2_ISSUER"] == "https://auth.example.com", name
        settings = Settings.from_env({**env, "OAUTH2_HOST": "0.0.0.0"})  # noqa: S104 (Dockerfile)
        assert settings.production and not settings.bootstrap_admin
        assert "*" not in env.get("OAUTH2_FORWARDED_ALLOW_IPS", ""), name
    assert (
        services["server"]["environment"]["OAUTH2_FORWARDED_ALLOW_IPS"]
        == (services["proxy"]["networks"]["backend"]["ipv4_address"])
    )


def test_compose_refuses_to_start_without_the_values_to_fill_in():
    for missing in FILLED_IN:
        env = {k: v for k, v in FILLED_IN.items() if k != missing}
        with pytest.raises(KeyError, match=missing):
            compose(env)
    # No password written into the file: the database's comes from the operator.
    assert (
        compose()["services"]["db"]["environment"]["POSTGRES_PASSWORD"]
        == (FILLED_IN["POSTGRES_PASSWORD"])
    )


def test_only_the_proxy_publishes_ports_and_it_terminates_tls_for_the_issuer_host():
    document = compose()
    services = document["services"]
    published = {name for name, service in services.items() if "ports" in service}
    assert published == {"proxy"}
    assert {"80:80", "443:443"} <= set(services["proxy"]["ports"])
    assert "caddy_data:/data" in services["proxy"]["volumes"]  # certificates survive
    caddyfile = document["configs"]["caddyfile"]["content"]
    # A bare host name as the site address: Caddy's automatic HTTPS for it.
    assert re.search(r"^auth\.example\.com \{$", caddyfile, re.MULTILINE)
    assert "http://" not in caddyfile


def test_dockerfile_installs_the_lock_file_with_hashes_then_the_project_without_deps():
    installs = [line for line in DOCKERFILE.read_text().splitlines() if "pip install" in line]
    assert installs and "--require-hashes -r requirements.lock" in installs[0]
    assert len(installs) == 2 and "--no-deps" in installs[1]  # the project, nothing else


def locked() -> dict[str, tuple[str, list[str]]]:
    """{normalized name: (version, hashes)} from requirements.lock; asserts each entry is
    `name==version` followed by `--hash=sha256:…` lines."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = LOCK.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", requirement)
        assert match, f"not pinned with ==: {line[:80]}"
        hashes = [o for o in options if re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", o)]
        assert hashes and len(hashes) == len(options), f"needs --hash: {requirement}"
        entries[normalize(match[1])] = (match[2], hashes)
    return entries


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_file_pins_every_dependency_with_hashes():
    entries = locked()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = project["project"]["dependencies"] + project["build-system"]["requires"]
    for requirement in wanted:
        name = normalize(re.match(r"[A-Za-z0-9._-]+", requirement)[0])
        assert name in entries, f"{name} is missing from requirements.lock: re-run pip-compile"


def test_lock_file_is_what_readme_says_to_regenerate():
    readme = Path(ROOT / "README.md").read_text()
    command = re.search(r"pip-compile [^\n]*--generate-hashes[^\n]*", readme)
    assert command, "README must show how requirements.lock is made"
    assert "--output-file=requirements.lock" in LOCK.read_text()
