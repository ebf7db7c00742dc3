"""The side-by-side peer for `bench/load.py --peer` (issue #13 item 1): node-oidc-provider
from /work/shared/peers/oidc-provider (README.md there), configured as a plain OAuth 2.0
server with an in-memory store (nothing durable; an LRU of 1,000 entries).

`start_peer()` runs `npm ci` there on first use (no node_modules yet), starts
`node server.mjs` on a free loopback port and waits until it answers; `Peer.stop()` ends
it by its PID. `PEER_SCENARIOS` are the same scenarios as load.py's, as the peer spells
them: its client is `bench` / `bench-secret-0123456789` (client_secret_basic); its
introspection sees only its own tokens, so the token to introspect is minted right
before that scenario (after any token load, which could have evicted it).
`ratio_lines(ours, peer)` prints our figures against the peer's.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

PEER_DIR = Path(os.environ.get("BENCH_PEER_DIR", "/work/shared/peers/oidc-provider"))
CLIENT_ID = "bench"
CLIENT_SECRET = "bench-secret-0123456789"  # noqa: S105 (the peer's published bench client)
NAME = "node-oidc-provider"


def _basic() -> str:
    return "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()


@dataclass
class Peer:
    """A running node-oidc-provider (`base_url`, `process`). Stop it with `stop()`."""

    base_url: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM to its PID (server.mjs closes its connections and exits), SIGKILL to
        the same PID if it has not exited within 10 s."""
        if self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def install(directory: Path = PEER_DIR) -> None:
    """`npm ci` in `directory` unless its node_modules is there already."""
    if (directory / "node_modules").is_dir():
        return
    if not shutil.which("npm"):
        raise SystemExit("npm is not installed: the peer needs Node.js and npm")
    print(f"npm ci in {directory} (first use)", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=directory, check=True)


def start_peer(directory: Path = PEER_DIR, timeout: float = 60) -> Peer:
    """Install (first use), start `node server.mjs` on a free loopback port and wait until
    its discovery document answers; the process is stopped again if it does not."""
    if not (directory / "server.mjs").is_file():
        raise SystemExit(f"no peer at {directory} (server.mjs missing)")
    install(directory)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PORT": str(port)}
    process = subprocess.Popen(["node", "server.mjs"], cwd=directory, env=env)
    peer = Peer(base_url, process)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{NAME} exited early ({process.returncode})")
            try:
                requests.get(base_url + "/.well-known/openid-configuration", timeout=1)
                return peer
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{NAME} not ready after {timeout} s") from None
                time.sleep(0.2)
    except BaseException:
        peer.stop()
        raise


def client_credentials(peer: Peer) -> tuple[str, str, str]:
    """(path, body, Authorization) of load.py's client_credentials scenario, on the peer."""
    return "/token", "grant_type=client_credentials&scope=read", _basic()


def introspection(peer: Peer) -> tuple[str, str, str]:
    """load.py's introspection scenario on the peer, with a token minted just now (its
    LRU of 1,000 entries has evicted any token older than the last token load)."""
    minted = requests.post(
        peer.base_url + "/token",
        data={"grant_type": "client_credentials", "scope": "read"},
        headers={"Authorization": _basic()},
        timeout=30,
    )
    minted.raise_for_status()
    body = urlencode({"token": minted.json()["access_token"]})
    answer = requests.post(
        peer.base_url + "/token/introspection",
        data=body,
        headers={
            "Authorization": _basic(),
            "Content-Type": "application/x-www-form-urlencoded",
        },
        timeout=30,
    )
    assert answer.status_code == 200 and answer.json().get("active") is True, answer.text
    return "/token/introspection", body, _basic()


# load.py scenario name → function(peer) returning (path, body, Authorization header)
PEER_SCENARIOS: dict[str, Callable[[Peer], tuple[str, str, str]]] = {
    "client_credentials": client_credentials,
    "introspection": introspection,
}


def ratio_lines(ours: Sequence[Any], peer: Sequence[Any]) -> list[str]:
    """Our figure against the peer's for every scenario both ran (`load.Result`s, the
    peer's named `<scenario> (peer)`): req/s ratio (above 1: we serve more) and p99 ratio
    (above 1: our tail is longer). Then, if both ran, our token exchange's req/s against
    our client_credentials' (issue #13 asks for at least 0.8 in the same run)."""
    theirs = {result.name.removesuffix(" (peer)"): result for result in peer}
    lines = [f"ours / {NAME}:"]
    mine = {result.name: result for result in ours}
    for result in ours:
        other = theirs.get(result.name)
        if other is None:
            continue
        throughput = result.requests_per_second / max(other.requests_per_second, 1e-9)
        tail = result.p99_ms / max(other.p99_ms, 1e-9)
        lines.append(
            f"  {result.name:<26} req/s {result.requests_per_second:>7,.0f} vs "
            f"{other.requests_per_second:>7,.0f} = {throughput:4.2f}x   "
            f"p99 {result.p99_ms:6.2f} vs {other.p99_ms:6.2f} ms = {tail:4.2f}x"
        )
    exchange, issue = mine.get("token_exchange"), mine.get("client_credentials")
    if exchange and issue:
        share = exchange.requests_per_second / max(issue.requests_per_second, 1e-9)
        lines.append(f"  token_exchange / our client_credentials req/s = {share:4.2f}x")
    return lines
