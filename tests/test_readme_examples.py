"""README's shell examples run, in order, against a live server (issue #12, item 6).

Convention (README.md, "Quickstart"): a block fenced ```sh is executed; ```bash,
```text and unmarked blocks are only shown (long-running commands, browser steps,
production settings). The ```sh blocks run one after another in bash with `set -euo
pipefail`, sharing variables and functions (each block's state is saved for the next),
from a fresh directory on the embedded default (SQLite file, development keys) as the
quickstart promises, with the venv's `oauth2-server` on PATH and without jq. A line
`# → text` below a command is expected output: some later output line of the block must
match it (in order; `…` matches anything, whitespace runs compare equal). `curl` fails
on an HTTP error status, and `jq` is not there.

What a reader does by hand is done here over HTTP: start `serve` (with the stand-in
Google that `oauth2-server dev fake-provider google` runs, its printed exports applied),
note the bootstrap admin's id and secret, and sign in + allow in the browser.

The stand-in provider's own promises are tested here too: it binds loopback only, prints
`export` lines that configure a server, stops cleanly, and `serve` never loads it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from oauth2_server.cli.support import EXIT_CONFLICT
from tests.conftest import LiveServer, free_port
from tests.flows import decide, login, query_of

README = Path(__file__).resolve().parent.parent / "README.md"
README_PORT = "127.0.0.1:8000"
BROWSER_USER = ("alice", "a long passphrase")  # the user README creates


@dataclass
class Block:
    """One fenced block of README: its fence info string, text and first line number."""

    info: str
    text: str
    line: int


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of `text`, in order (fences of three backticks, any indent)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if opening is None:
            i += 1
            continue
        indent, info, start = opening.group(1), opening.group(2), i + 1
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        blocks.append(Block(info, "\n".join(body), start))
        i += 1
    return blocks


def expected_lines(block: str) -> list[str]:
    """The `# → text` expectations of a block, in order."""
    return [m.group(1).strip() for m in re.finditer(r"^\s*# → (.*)$", block, re.M)]


def matches(pattern: str, line: str) -> bool:
    """`…` in the README pattern matches any text; the rest must be equal, except that
    any run of whitespace (tabs included) equals any other."""
    regex = ".*".join(
        r"\s+".join(re.escape(word) for word in part.split()) for part in pattern.split("…")
    )
    return re.fullmatch(regex, " ".join(line.split())) is not None


def check_expectations(block: Block, output: str) -> None:
    lines = output.splitlines()
    position = 0
    for pattern in expected_lines(block.text):
        for index in range(position, len(lines)):
            if matches(pattern, lines[index]):
                position = index + 1
                break
        else:
            pytest.fail(
                f"README.md:{block.line}: no output line matches `# → {pattern}` "
                f"(after line {position} of the output):\n{output}"
            )


PREAMBLE = """\
set -euo pipefail
set -a
curl() { command curl --fail-with-body --max-time 30 --write-out '\\n' "$@"; }
jq() { echo "README promises Python and nothing else: no jq" >&2; return 127; }
"""


def run_block(block: Block, state: Path, env: dict[str, str], cwd: Path) -> str:
    """Run one ```sh block after the saved state; save its variables and functions."""
    script = (
        PREAMBLE
        + f". {shlex.quote(str(state))}\n"
        + block.text
        + f"\n{{ export -p; declare -f; }} > {shlex.quote(str(state))}\n"
    )
    done = subprocess.run(
        ["bash", "-c", script],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(
            f"README.md:{block.line}: block exited {done.returncode}\n--- block\n{block.text}\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )
    return done.stdout


def add_state(state: Path, **values: str) -> None:
    with state.open("a") as handle:
        for name, value in values.items():
            handle.write(f"export {name}={shlex.quote(value)}\n")


# -- the stand-in provider, as the reader runs it ------------------------------------


class FakeProviderProcess:
    """`oauth2-server dev fake-provider PROVIDER --port 0` and the exports it printed."""

    def __init__(self, provider: str, env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "oauth2_server", "dev", "fake-provider", provider],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.exports: dict[str, str] = {}
        self.lines: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").rstrip("\n").partition("=")
                self.exports[name] = shlex.split(value)[0]
            if len(self.exports) == 6:
                break
        assert len(self.exports) == 6, f"exports not printed: {self.lines}"

    @property
    def port(self) -> int:
        url = next(v for k, v in self.exports.items() if k.endswith("_TOKEN_ENDPOINT"))
        return int(url.split(":")[2].split("/")[0])

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=15)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a new shell: no OAUTH2_* settings, the venv on PATH, a fresh
    home (so a per-user data directory is this test's own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH2_")}
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    )
    return env


def start_embedded_server(env: dict[str, str], cwd: Path) -> tuple[LiveServer, str, str]:
    """`oauth2-server serve` on the embedded default; (server, admin id, admin secret)."""
    log_path = cwd / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "oauth2_server", "serve"],
        env=env,
        cwd=cwd,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    live = LiveServer(env["OAUTH2_ISSUER"], process, None, env, log_path)  # type: ignore[arg-type]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{live.log()}")
        try:
            if requests.get(live.url("/readyz"), timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    else:
        live.stop()
        raise RuntimeError(f"server did not become ready:\n{live.log()}")
    client_id = re.search(r"client_id:\s+(\S+)", live.log())
    secret = re.search(r"client_secret:\s+(\S+)", live.log())
    assert client_id and secret, f"no bootstrap admin printed:\n{live.log()}"
    return live, client_id.group(1), secret.group(1)


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, LiveServer, str, str]]:
    """A reader's shell after the quickstart and the stand-in provider's set-up."""
    home = tmp_path / "home"
    work = tmp_path / "clone"
    home.mkdir()
    work.mkdir()
    env = clean_env(home)
    fake = FakeProviderProcess("google", env, work)
    port = free_port()
    env.update(fake.exports, OAUTH2_PORT=str(port), OAUTH2_ISSUER=f"http://127.0.0.1:{port}")
    try:
        live, admin_id, admin_secret = start_embedded_server(env, work)
    except BaseException:
        fake.stop()
        raise
    try:
        yield env, work, live, admin_id, admin_secret
    finally:
        live.stop()
        fake.stop()


def browser_authorize(url: str) -> str:
    """What the reader does in the browser: sign in as README's user and allow; the
    authorization code from the redirect (RFC 6749 §4.1.2)."""
    browser = requests.Session()
    base = url.split("/oauth2/authorize")[0]
    page = browser.get(url, allow_redirects=False, timeout=30)
    assert page.status_code == 200, page.text[:500]
    done = login(browser, base, page, *BROWSER_USER)
    assert done.status_code == 303, done.text[:500]
    page = browser.get(base + done.headers["location"], allow_redirects=False, timeout=30)
    if page.status_code == 200 and 'name="decision"' in page.text:
        page = decide(browser, base, page)
    assert page.status_code == 302, page.text[:500]
    params = query_of(page.headers["location"])
    assert "code" in params, page.headers["location"]
    return params["code"]


def test_readme_sh_examples_run_in_order(
    reader: tuple[dict[str, str], Path, LiveServer, str, str],
) -> None:
    env, work, live, admin_id, admin_secret = reader
    text = README.read_text()
    username, password = BROWSER_USER
    creates_user = f"echo '{password}' | oauth2-server users create --username {username}"
    assert creates_user in text, "README no longer creates the user this test signs in as"
    runnable = [b for b in readme_blocks(text) if b.info == "sh"]
    assert len(runnable) >= 8, "README lost its runnable (```sh) examples"
    state = work.parent / "shell-state.sh"
    state.write_text("")
    add_state(state, ADMIN_ID=admin_id, ADMIN_SECRET=admin_secret)
    host = live.base_url.removeprefix("http://")
    for block in runnable:
        block = Block(block.info, block.text.replace(README_PORT, host), block.line)
        output = run_block(block, state, env, work)
        check_expectations(block, output)
        urls = re.findall(r"^(http://\S+/oauth2/authorize\?\S+)$", output, re.M)
        if urls:  # the reader opens it in a browser, signs in and allows
            add_state(state, CODE=browser_authorize(urls[-1]))


# -- the stand-in provider's promises ------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp{,6}) with a socket listening on `port`."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc/net/tcp")
def test_fake_provider_listens_on_loopback_only(tmp_path: Path) -> None:
    """The stand-in signs anyone in, so it must never be reachable from another host."""
    fake = FakeProviderProcess("microsoft", clean_env(tmp_path), tmp_path)
    try:
        assert listening_addresses(fake.port) == {"0100007F"}  # 127.0.0.1, nothing else
        assert set(fake.exports) == {
            f"OAUTH2_UPSTREAM_MICROSOFT_{name}"
            for name in (
                "CLIENT_ID",
                "CLIENT_SECRET",
                "AUTHORIZATION_ENDPOINT",
                "TOKEN_ENDPOINT",
                "REVOCATION_ENDPOINT",
                "USERINFO_ENDPOINT",
            )
        }
        # the printed endpoint answers like an OAuth token endpoint (RFC 6749 §5.2)
        token_url = fake.exports["OAUTH2_UPSTREAM_MICROSOFT_TOKEN_ENDPOINT"]
        answer = requests.post(token_url, data={"grant_type": "refresh_token"}, timeout=10)
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
    finally:
        assert fake.stop() == 0  # SIGTERM (like Ctrl-C) stops it cleanly


def test_fake_provider_port_in_use_is_one_line(tmp_path: Path) -> None:
    """A taken port is one line naming --port and a conflict exit status, no traceback."""
    first = FakeProviderProcess("google", clean_env(tmp_path), tmp_path)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "oauth2_server", "dev", "fake-provider", "google"]
            + ["--port", str(first.port)],
            env=clean_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        first.stop()
    assert done.returncode == EXIT_CONFLICT, done.stderr
    assert "Traceback" not in done.stderr
    assert f"--port: cannot listen on 127.0.0.1:{first.port}" in done.stderr


def test_serve_never_loads_the_fake_provider() -> None:
    """`serve` and the app import the `dev` command's parser only, never the stand-in."""
    code = (
        "import sys, oauth2_server.cli.main, oauth2_server.app\n"
        "loaded = [m for m in sys.modules if m == 'oauth2_server.dev.fake_provider']\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
