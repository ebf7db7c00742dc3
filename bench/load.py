"""Load benchmark: client_credentials and introspection on PostgreSQL, 2 uvicorn workers,
against a bare Starlette endpoint answering a JSON body of the same size (the ceiling).

    sudo apt-get install wrk           # the load generator (Debian package)
    python bench/load.py               # defaults: 15 s per scenario, concurrency 16
    python bench/load.py --peer        # also node-oidc-provider, side by side (bench/peer.py)

It creates a scratch PostgreSQL database (`--database-url`, default
postgresql://postgres@127.0.0.1:5432/oauth2_bench), migrates it, registers a client,
starts `oauth2-server serve --workers 2` on a free loopback port, and runs wrk with 2
threads and 16 connections per scenario. Commits are durable (PostgreSQL defaults,
synchronous_commit=on) and every token request writes its access-token row and audit row.
Prints one line per scenario: req/s, p50, p99 (ms), errors (non-2xx or socket errors), and
the CPU time per request of the server's processes and of its PostgreSQL backends (from
/proc; steadier than req/s when the machine's speed varies), then a `tail:` line
scraped from the server's /metrics before and after the run (issue #13): event-loop lag
p99 and largest bucket, GC pauses (count, total time, largest, full collections), pool
wait p99, and per coalesced statement its mean batch size and p99 time.
Extra scenarios (e.g. token exchange) register themselves in SCENARIOS.

With `--peer`, node-oidc-provider (in-memory, nothing durable) then runs the scenarios it
has (client_credentials, introspection) with the same wrk settings, and the end of the
output gives each of our figures with its ratio to the peer's. The bare-Starlette ceiling
runs last either way.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import peer as peer_module  # noqa: E402
from oauth2_server.crypto.keyring import generate_key_spec  # noqa: E402
from oauth2_server.storage.clients import create_client  # noqa: E402

WRK_THREADS = 2
WRK_SCRIPT = textwrap.dedent(
    """
    wrk.method = "POST"
    wrk.body = os.getenv("BENCH_BODY")
    wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
    local auth = os.getenv("BENCH_AUTH")
    if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
    local bad = 0
    response = function(status, headers, body)
      if status ~= 200 then bad = bad + 1 end
    end
    -- BENCH_REQUESTS: a file of single-use requests, one a line, "<DPoP header>\\t<body>"
    -- (either may be empty: no header, the static body). Thread i of n takes lines i, i+n…
    -- once each; past its share it starts over and counts `reused` (those are replays).
    local threads, lines, index = {}, {}, 0
    reused = 0
    setup = function(thread)
      thread:set("id", #threads)
      table.insert(threads, thread)
    end
    init = function(args)
      local path = os.getenv("BENCH_REQUESTS")
      if not path or path == "" then return end
      local n, i = tonumber(os.getenv("BENCH_THREADS")), 0
      for line in io.lines(path) do
        if i % n == id then
          local tab = line:find("\\t", 1, true)
          table.insert(lines, {line:sub(1, tab - 1), line:sub(tab + 1)})
        end
        i = i + 1
      end
      request = function()
        index = index + 1
        if index > #lines then reused = reused + 1 end
        local item = lines[(index - 1) % #lines + 1]
        local headers = {}  -- wrk.format does not add wrk.headers to a table it is given
        for name, value in pairs(wrk.headers) do headers[name] = value end
        if item[1] ~= "" then headers["DPoP"] = item[1] end
        return wrk.format(nil, nil, headers, item[2] ~= "" and item[2] or nil)
      end
    end
    done = function(summary, latency, requests)
      local e, used = summary.errors, 0
      for _, thread in ipairs(threads) do used = used + (thread:get("reused") or 0) end
      io.write(string.format(
        '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"socket_errors":%d,"status_errors":%d,"reused":%d}\\n',
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        e.connect + e.read + e.write + e.timeout, e.status, used))
    end
    """
)

BARE_APP = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    BODY = {"access_token": "x" * %(size)d, "token_type": "Bearer"}

    async def token(request):
        await request.form()
        return JSONResponse(BODY, headers={"Cache-Control": "no-store"})

    app = Starlette(routes=[Route("/token", token, methods=["POST"])])
    """
)


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_ms: float | None = None  # server CPU time per request (all workers), ms
    database_cpu_ms: float | None = None  # PostgreSQL backends' CPU time per request, ms
    reused: int = 0  # requests that had to reuse a single-use line of a requests file
    # share of the run the server's busy processes spent runnable but waiting for a core
    # (the kernel's run-queue time, /proc/<pid>/schedstat), mean over those processes
    server_wait_share: float | None = None

    def line(self) -> str:
        cpu = ""
        if self.server_cpu_ms is not None:
            cpu = f"   cpu/req server {self.server_cpu_ms:.3f} ms"
            if self.database_cpu_ms is not None:
                cpu += f" + postgres {self.database_cpu_ms:.3f} ms"
        if self.server_wait_share is not None:
            cpu += f"   waiting for a core {100 * self.server_wait_share:.0f} %"
        if self.reused:
            cpu += f"   EXHAUSTED: {self.reused} requests replayed a used proof/assertion"
        return (
            f"{self.name:<28} {self.requests_per_second:>9,.0f} req/s   "
            f"p50 {self.p50_ms:6.2f} ms   p99 {self.p99_ms:6.2f} ms   errors {self.errors}{cpu}"
        )


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (Linux /proc), for CPU accounting."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds used so far by `pids` (Linux /proc; None elsewhere).

    CPU time per request is steadier than req/s on a shared machine whose speed varies:
    it does not count the time spent waiting for a core.
    """
    ticks = 0
    try:
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def scheduler_seconds(pids: list[int]) -> dict[int, tuple[float, float]]:
    """{pid: (seconds on a core, seconds runnable but waiting for one)} of each process's
    main thread so far (Linux /proc/<pid>/schedstat; {} elsewhere). The waiting time is
    the scheduler's share of a tail: a request whose worker waits for a core waits too."""
    seconds: dict[int, tuple[float, float]] = {}
    for pid in pids:
        try:
            running, waiting, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        seconds[pid] = (int(running) / 1e9, int(waiting) / 1e9)
    return seconds


def waiting_share(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]], wall: float
) -> float | None:
    """Mean share of `wall` seconds that the busy processes (on a core at least 5 % of
    the time) spent waiting for a core, between two `scheduler_seconds` readings."""
    shares = [
        (after[pid][1] - before[pid][1]) / wall
        for pid in before.keys() & after.keys()
        if wall > 0 and after[pid][0] - before[pid][0] >= 0.05 * wall
    ]
    return sum(shares) / len(shares) if shares else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited early ({process.returncode})")
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout} s")


def run_wrk(
    name: str,
    url: str,
    body: str,
    auth: str,
    seconds: int,
    connections: int,
    script: Path,
    server_pid: int | None = None,
    database_pids: Callable[[], list[int]] | None = None,
    requests_file: Path | None = None,
) -> Result:
    """Run wrk against `url`; with `server_pid` (and `database_pids`), also the CPU time
    the server's processes (and those PostgreSQL backends) spent per request. With
    `requests_file` (lines "<DPoP header>\\t<body>", each sent once: WRK_SCRIPT), every
    request takes the next line instead of `body` alone."""
    env = {**os.environ, "BENCH_BODY": body, "BENCH_AUTH": auth}
    if requests_file is not None:
        env.update(BENCH_REQUESTS=str(requests_file), BENCH_THREADS=str(WRK_THREADS))
    server = _descendants(server_pid) if server_pid else []
    database = database_pids() if database_pids else []
    before = (cpu_seconds(server), cpu_seconds(database))
    scheduled, started = scheduler_seconds(server), time.monotonic()
    output = subprocess.run(
        ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = (cpu_seconds(server), cpu_seconds(database))
    wait = waiting_share(scheduled, scheduler_seconds(server), time.monotonic() - started)
    stats = json.loads(output.strip().splitlines()[-1])
    count = max(stats["requests"], 1)
    per_request = [
        (end - start) * 1000 / count if server and start is not None and end is not None else None
        for start, end in zip(before, after, strict=True)
    ]
    return Result(
        name,
        stats["requests"] / (stats["duration_us"] / 1e6),
        stats["p50_us"] / 1000,
        stats["p99_us"] / 1000,
        stats["socket_errors"] + stats["status_errors"],
        per_request[0],
        per_request[1] if database else None,
        stats.get("reused", 0),
        wait,
    )


# --- tail summary: histograms scraped from /metrics before and after a run -------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(exposition: str) -> Samples:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def scrape(base_url: str) -> Samples:
    """One scrape of the server's /metrics (any worker answers with every worker's sums)."""
    response = requests.get(base_url + "/metrics", timeout=30)
    response.raise_for_status()
    return parse_samples(response.text)


def delta(before: Samples, after: Samples) -> Samples:
    """What every sample gained between two scrapes (counters and histograms only grow)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


@dataclass
class Buckets:
    """One histogram (series matching a label filter summed): cumulative counts per upper
    bound (ascending, the last +Inf), observation count and sum."""

    bounds: list[float]
    cumulative: list[float]
    count: float
    total: float

    def quantile(self, q: float) -> float:
        """Prometheus `histogram_quantile`: linear within the bucket holding rank q·count;
        in the +Inf bucket, the largest finite bound."""
        rank = q * self.count
        low, below = 0.0, 0.0
        for bound, cumulative in zip(self.bounds, self.cumulative, strict=True):
            if cumulative >= rank and cumulative > 0:
                if math.isinf(bound):
                    return low
                if cumulative == below:
                    return bound
                return low + (bound - low) * (rank - below) / (cumulative - below)
            low, below = bound, cumulative
        return low

    def highest(self) -> float:
        """Upper bound of the highest bucket holding an observation (+Inf possible)."""
        for bound, cumulative in zip(self.bounds, self.cumulative, strict=True):
            if cumulative >= self.count:
                return bound
        return math.inf

    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


def histogram(samples: Samples, family: str, **labels: str) -> Buckets | None:
    """The histogram `family` over every series whose labels include `labels` (summed);
    None when it holds no observation."""
    by_bound: dict[float, float] = {}
    count = total = 0.0
    for (name, labelset), value in samples.items():
        if not name.startswith(family):
            continue
        found = dict(labelset)
        if any(found.get(key) != wanted for key, wanted in labels.items()):
            continue
        if name == family + "_bucket":
            bound = float(found["le"])
            by_bound[bound] = by_bound.get(bound, 0.0) + value
        elif name == family + "_count":
            count += value
        elif name == family + "_sum":
            total += value
    if count <= 0 or not by_bound:
        return None
    bounds = sorted(by_bound)
    return Buckets(bounds, [by_bound[bound] for bound in bounds], count, total)


def label_values(samples: Samples, family: str, label: str) -> list[str]:
    """Values of `label` among the series of `family` that observed something."""
    return sorted(
        {
            dict(labelset)[label]
            for (name, labelset), value in samples.items()
            if name == family + "_count" and value > 0 and label in dict(labelset)
        }
    )


def _ms(seconds: float) -> str:
    return "inf" if math.isinf(seconds) else f"{seconds * 1000:.2f}"


def tail_summary(before: Samples, after: Samples) -> str:
    """One line from two scrapes: event-loop lag p99 and largest bucket; GC pauses (count,
    total, largest, full collections); pool wait p99 per pool; per coalesced statement,
    mean batch size and p99 time. Figures with no observation are left out."""
    gained = delta(before, after)
    parts: list[str] = []
    lag = histogram(gained, "oauth2_event_loop_lag_seconds")
    if lag:
        parts.append(f"loop lag p99 {_ms(lag.quantile(0.99))} max<={_ms(lag.highest())} ms")
    pauses = histogram(gained, "oauth2_gc_pause_seconds")
    if pauses:
        full = histogram(gained, "oauth2_gc_pause_seconds", generation="2")
        parts.append(
            f"gc {pauses.count:.0f}x {pauses.total * 1000:.1f} ms"
            f" max<={_ms(pauses.highest())} ms gen2 {full.count if full else 0:.0f}x"
        )
    for pool in label_values(gained, "oauth2_db_pool_wait_seconds", "pool"):
        wait = histogram(gained, "oauth2_db_pool_wait_seconds", pool=pool)
        if wait:
            parts.append(f"{pool} wait p99 {_ms(wait.quantile(0.99))} ms")
    for statement in label_values(gained, "oauth2_db_statement_seconds", "statement"):
        seconds = histogram(gained, "oauth2_db_statement_seconds", statement=statement)
        size = histogram(gained, "oauth2_db_batch_size", statement=statement)
        if seconds:
            batch = f" batch {size.mean():.1f}" if size else ""
            parts.append(f"{statement}{batch} p99 {_ms(seconds.quantile(0.99))} ms")
    return "  tail: " + (" | ".join(parts) if parts else "no figures on /metrics")


def postgres_backends(engine: Any, database: str) -> Callable[[], list[int]]:
    """A function listing the PostgreSQL backend PIDs connected to `database` (they run on
    this machine in the benchmark's setup; CPU is read from /proc when they do)."""

    def pids() -> list[int]:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": database},
            )
            return [row[0] for row in rows if Path(f"/proc/{row[0]}").exists()]

    return pids


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


@dataclass
class BenchContext:
    """What a scenario gets: the server, the database, a registered confidential client."""

    base_url: str
    database_url: str
    sync_engine: object
    client_id: str
    secret: str
    env: dict[str, str]
    seconds: int = 15  # the length of each wrk run
    rate_hint: float | None = None  # req/s of client_credentials when it ran before, if so


# name → function(context) returning (path, body, authorization header), or those and a
# requests file of single-use lines (`run_wrk`); such a scenario warms up by itself.
SCENARIOS: dict[str, Callable[[BenchContext], tuple[str, str, str]]] = {}


def scenario(
    name: str,
) -> Callable[
    [Callable[[BenchContext], tuple[str, str, str]]], Callable[[BenchContext], tuple[str, str, str]]
]:
    def register(func: Callable[[BenchContext], tuple[str, str, str]]):
        SCENARIOS[name] = func
        return func

    return register


@scenario("client_credentials")
def client_credentials(ctx: BenchContext) -> tuple[str, str, str]:
    return (
        "/oauth2/token",
        "grant_type=client_credentials&scope=read",
        basic(ctx.client_id, ctx.secret),
    )


@scenario("introspection")
def introspection(ctx: BenchContext) -> tuple[str, str, str]:
    token = requests.post(
        ctx.base_url + "/oauth2/token",
        auth=(ctx.client_id, ctx.secret),
        data={"grant_type": "client_credentials"},
        timeout=30,
    ).json()
    return (
        "/oauth2/introspect",
        urlencode({"token": token["access_token"]}),
        basic(ctx.client_id, ctx.secret),
    )


def baseline_ratios(results: list[Result], baseline: str = "client_credentials") -> list[str]:
    """Each other scenario's req/s as a ratio to `baseline`'s in the same run (issue #15:
    the DPoP and private_key_jwt variants of client_credentials should keep >= 0.5)."""
    base = next((r for r in results if r.name == baseline), None)
    if base is None or base.requests_per_second <= 0:
        return []
    return [f"ratios to {baseline} (same run):"] + [
        f"  {r.name:<36} {r.requests_per_second / base.requests_per_second:5.2f}"
        for r in results
        if r.name != baseline and not r.name.startswith("bare starlette")
    ]


def load_extra_scenarios() -> None:
    """Scenario modules beside this file (bench/scenario_*.py) register themselves."""
    import importlib

    for path in sorted(Path(__file__).parent.glob("scenario_*.py")):
        importlib.import_module(f"bench.{path.stem}")


@contextmanager
def indexes_rebuilt(
    engine: Any, table: str, name_like: str = "%", primary_key: bool = False
) -> Iterator[None]:
    """For a bulk load into `table` (a synchronous engine): drop its indexes named LIKE
    `name_like`, and with `primary_key` its primary key, then build each again when the
    block ends (printing its time) and VACUUM ANALYZE the table. Random keys inserted one
    by one into indexes far larger than shared_buffers take hours; a rebuild sorts once
    and leaves the same end state. A partitioned table's `ON ONLY` index definitions are
    built on every partition."""
    with engine.begin() as connection:
        indexes = connection.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE tablename = :table AND indexname LIKE :like ORDER BY indexname"
            ),
            {"table": table, "like": name_like},
        ).all()
        key = None
        if primary_key:
            key = connection.execute(
                text(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = CAST(:table AS regclass) AND contype = 'p'"
                ),
                {"table": table},
            ).first()
        if key is not None:
            connection.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{key[0]}"'))
        indexes = [(name, sql) for name, sql in indexes if key is None or name != key[0]]
        for name, _ in indexes:
            connection.execute(text(f'DROP INDEX "{name}"'))
    yield
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
        statements = [(name, sql.replace(" ON ONLY ", " ON ")) for name, sql in indexes]
        if key is not None:
            add = f'ALTER TABLE {table} ADD CONSTRAINT "{key[0]}" {key[1]}'
            statements.insert(0, (key[0], add))
        for name, sql in statements:
            began = time.monotonic()
            connection.execute(text(sql))
            print(f"  index {name}: {time.monotonic() - began:.0f} s", flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"VACUUM ANALYZE {table}"))


def reset_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_engine(
        parsed.set(drivername="postgresql+psycopg", database="postgres"),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


@dataclass
class BenchServer:
    """`oauth2-server serve` on a free loopback port over a freshly migrated scratch database,
    with one client_credentials client (`client_id`, `secret`) registered; `engine` is a
    synchronous engine on the same database. Stop it with `stop()`."""

    base_url: str
    env: dict[str, str]
    engine: Any
    database: str
    client_id: str
    secret: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start_bench_server(database_url: str, workers: int, scope: str, **settings: str) -> BenchServer:
    """Reset and migrate `database_url`, register the bench client with `scope`, and start
    the server with `workers` processes at log level warning (`settings` add or override
    `OAUTH2_*` variables). Does not wait for readiness: call `wait_ready`."""
    reset_database(database_url)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH2_")}
    env.update(
        OAUTH2_DATABASE_URL=database_url,
        OAUTH2_ENCRYPTION_KEYS=generate_key_spec("bench"),
        OAUTH2_ISSUER=base_url,
        OAUTH2_PORT=str(port),
        OAUTH2_WORKERS=str(workers),
        OAUTH2_BOOTSTRAP_ADMIN="false",
        OAUTH2_LOG_LEVEL="warning",
        **settings,
    )
    python = sys.executable
    subprocess.run(
        [python, "-m", "oauth2_server", "migrate"], env=env, check=True, capture_output=True
    )
    sync_url = make_url(database_url).set(drivername="postgresql+psycopg")
    engine = create_engine(sync_url)
    with Session(engine) as session, session.begin():
        record, secret = create_client(
            session,
            name="bench",
            grant_types=["client_credentials"],
            redirect_uris=[],
            scope=scope,
        )
    assert secret is not None
    process = subprocess.Popen([python, "-m", "oauth2_server", "serve"], env=env, cwd=ROOT)
    return BenchServer(
        base_url, env, engine, sync_url.database or "", record.client_id, secret, process
    )


def warm_up(url: str, body: str, auth: str) -> int:
    """50 requests (the secret cache, the client cache, the connection pools), each
    answered 200; returns the size of the last answer's body."""
    for _ in range(50):
        response = requests.post(
            url,
            data=body,
            timeout=30,
            headers={"Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200, response.text
    return len(response.content)


def run_peer(args: argparse.Namespace, script: Path) -> list[Result]:
    """node-oidc-provider through the scenarios it has, with the same wrk settings; stopped
    by its PID at the end, also on error."""
    results: list[Result] = []
    peer = peer_module.start_peer()
    try:
        for name, build in peer_module.PEER_SCENARIOS.items():
            if args.only and name not in args.only:
                continue
            path, body, auth = build(peer)
            warm_up(peer.base_url + path, body, auth)
            results.append(
                run_wrk(
                    f"{name} (peer)",
                    peer.base_url + path,
                    body,
                    auth,
                    args.seconds,
                    args.connections,
                    script,
                    server_pid=peer.pid,
                )
            )
            print(results[-1].line(), flush=True)
    finally:
        peer.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url", default="postgresql://postgres@127.0.0.1:5432/oauth2_bench"
    )
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", action="append", help="run only these scenarios")
    parser.add_argument(
        "--peer",
        action="store_true",
        help="also run node-oidc-provider (bench/peer.py) and print our ratios to it",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    if args.peer and not shutil.which("node"):
        raise SystemExit("--peer needs Node.js (node, npm)")
    load_extra_scenarios()

    bench = start_bench_server(args.database_url, args.workers, "read introspect")
    server, engine, base_url, env = bench.process, bench.engine, bench.base_url, bench.env
    results: list[Result] = []
    peer_results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench.lua"
        script.write_text(WRK_SCRIPT)
        try:
            wait_ready(base_url + "/healthz", server)
            ctx = BenchContext(
                base_url, args.database_url, engine, bench.client_id, bench.secret, env
            )
            ctx.seconds = args.seconds
            body_size = 0
            for name, build in SCENARIOS.items():
                if args.only and name not in args.only:
                    continue
                path, body, auth, *requests_file = build(ctx)
                if not requests_file:  # a scenario with a requests file warmed up by itself
                    body_size = max(body_size, warm_up(base_url + path, body, auth))
                before = scrape(base_url)
                results.append(
                    run_wrk(
                        name,
                        base_url + path,
                        body,
                        auth,
                        args.seconds,
                        args.connections,
                        script,
                        server_pid=server.pid,
                        database_pids=postgres_backends(engine, bench.database),
                        requests_file=requests_file[0] if requests_file else None,
                    )
                )
                print(results[-1].line(), flush=True)
                print(tail_summary(before, scrape(base_url)), flush=True)
                if name == "client_credentials":
                    ctx.rate_hint = results[-1].requests_per_second
            log_rows = (
                engine.connect().execute(text("SELECT count(*) FROM oauth2_token_logs")).scalar()
            )
        finally:
            bench.stop()

        if args.peer:
            peer_results = run_peer(args, script)

        # The ceiling: bare Starlette, same uvicorn settings, JSON body of the same size.
        app_dir = Path(tmp)
        (app_dir / "bare_app.py").write_text(BARE_APP % {"size": max(body_size - 45, 10)})
        bare_port = free_port()
        bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bare_app:app",
                "--port",
                str(bare_port),
                "--workers",
                str(args.workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=app_dir,
        )
        try:
            wait_ready(f"http://127.0.0.1:{bare_port}/token", bare)
            results.append(
                run_wrk(
                    "bare starlette (ceiling)",
                    f"http://127.0.0.1:{bare_port}/token",
                    "grant_type=client_credentials&scope=read",
                    "",
                    args.seconds,
                    args.connections,
                    script,
                    server_pid=bare.pid,
                )
            )
            print(results[-1].line(), flush=True)
        finally:
            bare.terminate()
            bare.wait(timeout=30)
    print(f"audit rows written: {log_rows}")
    print("\n".join(baseline_ratios(results)))
    if peer_results:
        print("\n".join(peer_module.ratio_lines(results, peer_results)))
    engine.dispose()


if __name__ == "__main__":
    main()
