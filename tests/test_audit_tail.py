"""`oauth2-server audit tail --jsonl` (issue #11 item 7): every sealed row exactly once,
across batched writes, restarts and a resumed watermark.

Traffic on a live server with 2 workers writes rows two ways at once: in the request's
transaction (token issue) and through the per-worker buffer that commits batches later
(introspection, `OAUTH2_AUDIT_FLUSH_INTERVAL`), so rows commit out of `created_at` order
(the case that made `since=` walks miss and repeat rows). A sealer runs meanwhile. One
tail is stopped mid-traffic (SIGTERM) and a second resumes from the watermark the first
printed; together they print every row sealed after the start exactly once, equal to a
direct SQL read, and every row written during the test is among them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from tests.admin_helpers import Introspector, _sealed, _with_sessions, run_cli
from tests.conftest import ROOT, free_port, server_env

FLUSH_INTERVAL = "0.5"  # seconds: buffered rows commit up to this late
SEAL_MARGIN = 3.0  # seconds: the sealer keeps clear of rows that may still commit


def seal(db, margin: float) -> int:
    return asyncio.run(_with_sessions(db, lambda sessions: _sealed(sessions, 0, margin=margin)))


class TailProcess:
    """`oauth2-server audit tail --jsonl --follow` in the background; its stdout lines
    are collected by a thread."""

    def __init__(self, db, after: int) -> None:
        env = server_env(db.url, db.keys, free_port(), OAUTH2_LOG_LEVEL="warning")
        command = [sys.executable, "-m", "oauth2_server", "audit", "tail", "--jsonl"]
        command += ["--after", str(after), "--follow", "--interval", "0.2"]
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        self.errors.extend(self.process.stderr)

    def wait_for(self, condition: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.lines):
            assert self.process.poll() is None, "".join(self.errors)
            assert time.monotonic() < deadline, "tail did not print the rows in time"
            time.sleep(0.1)

    def stop(self) -> dict[str, Any]:
        """SIGTERM; the watermark it printed on stderr."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        for reader in self.readers:
            reader.join(timeout=10)
        assert self.process.returncode == 0, "".join(self.errors)
        return json.loads(self.errors[-1])


def _traffic(live, db, unique, stop: threading.Event, errors: list[str]) -> list[threading.Thread]:
    client_id, secret = db.create_client(name=unique("tail-traffic"))
    introspector = Introspector(live, db, unique)
    token = live.client_credentials_token(client_id, secret)

    def issue() -> None:
        while not stop.is_set():
            response = live.post(
                "/oauth2/token", auth=(client_id, secret), data={"grant_type": "client_credentials"}
            )
            if response.status_code != 200:
                errors.append(response.text)

    def introspect() -> None:  # buffered rows, committed in batches
        while not stop.is_set():
            introspector.active(token)

    threads = [threading.Thread(target=work) for work in (issue, introspect, introspect)]
    for thread in threads:
        thread.start()
    return threads


def _sealer(db, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            seal(db, SEAL_MARGIN)
            time.sleep(0.3)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_tail_across_batched_writes_returns_every_row_once(module_server, db, unique) -> None:
    live = module_server(OAUTH2_WORKERS="2", OAUTH2_AUDIT_FLUSH_INTERVAL=FLUSH_INTERVAL)
    seal(db, 0)
    before_id = int(db.scalar("SELECT coalesce(max(id), 0) FROM oauth2_token_logs"))
    start = int(db.scalar("SELECT coalesce(max(seal_seq), 0) FROM oauth2_token_logs"))
    stop, errors = threading.Event(), []
    workers = [*_traffic(live, db, unique, stop, errors), _sealer(db, stop)]
    first = TailProcess(db, start)
    try:
        first.wait_for(lambda lines: len(lines) >= 20)
        resumed_at = first.stop()
        assert resumed_at["rows"] == len(first.lines) and resumed_at["rows"] >= 20
        assert resumed_at["next_after"] == first.lines[-1]["seal_seq"]
        second = TailProcess(db, resumed_at["next_after"])
        time.sleep(3)
    finally:
        stop.set()
        for thread in workers:
            thread.join(timeout=60)
    assert errors == []
    time.sleep(2 * float(FLUSH_INTERVAL) + 1)  # every buffered row committed
    seal(db, 0)
    head = int(db.scalar("SELECT max(seal_seq) FROM oauth2_token_logs"))
    second.wait_for(lambda lines: bool(lines) and lines[-1]["seal_seq"] >= head)
    assert second.stop()["next_after"] == head

    printed = [line["id"] for line in first.lines + second.lines]
    expected = db.rows(
        "SELECT id FROM oauth2_token_logs WHERE seal_seq > :s AND seal_seq <= :h ORDER BY seal_seq",
        s=start,
        h=head,
    )
    assert printed == [row.id for row in expected]  # each once, in seal_seq order
    written = db.rows("SELECT id, seal_seq FROM oauth2_token_logs WHERE id > :b", b=before_id)
    assert {row.id for row in written if row.seal_seq is not None} <= set(printed)
    actions = {line["action"] for line in first.lines + second.lines}
    assert {"issued", "introspected", "audit_read"} <= actions


def test_without_follow_it_prints_what_is_sealed_and_the_watermark(db, unique) -> None:
    seal(db, 0)
    head = int(db.scalar("SELECT coalesce(max(seal_seq), 0) FROM oauth2_token_logs"))
    after = max(0, head - 3)
    result = run_cli(db, "audit", "tail", "--jsonl", "--after", str(after), "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected = db.rows(
        "SELECT id, seal_seq FROM oauth2_token_logs WHERE seal_seq > :a ORDER BY seal_seq",
        a=after,
    )
    assert [line["id"] for line in lines] == [row.id for row in expected]
    assert json.loads(result.stderr.splitlines()[-1]) == {
        "next_after": expected[-1].seal_seq if expected else after,
        "rows": len(expected),
    }


@pytest.mark.parametrize(
    "args",
    [
        ["--after", "-5"],
        ["--after", "x"],
        ["--interval", "0"],
        ["--interval", "nan"],
        ["--batch-size", "0"],
        ["--batch-size", "2.5"],
        [],  # --jsonl missing
    ],
)
def test_bad_tail_options_exit_2(db, args) -> None:
    command = ["audit", "tail", *(["--jsonl"] if args else []), *args]
    result = run_cli(db, *command)
    assert result.returncode == 2, result.stderr
