"""Metrics that add up across workers (issue #12 item 2; README "Metrics").

`/metrics` is rendered by `prometheus_client` in multiprocess mode: a scrape answered by
either worker of a 2-worker server counts every request either worker answered. Every
family follows the Prometheus naming conventions (`promtool check metrics`): `oauth2_`
prefix (or `process_`/`python_`), counters end `_total`, histograms have
`_bucket`/`_sum`/`_count`; route labels are templates, never raw paths.
"""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.admin_helpers import admin_api

NAME = re.compile(r"^(?:oauth2_[a-z0-9_]+|process_[a-z0-9_]+|python_[a-z0-9_]+)$")
# Histograms of a count, not a time (no unit suffix): named here one by one.
UNITLESS_HISTOGRAMS = {"oauth2_db_batch_size"}


def scrape(server: Any) -> tuple[dict[str, Any], str]:
    """({family name: family}, the answering worker's pid) of one scrape on a new
    connection (so either worker may answer)."""
    response = requests.get(server.url("/metrics"), timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    pids = {s.labels["pid"] for s in families["process_cpu_seconds"].samples}
    assert len(pids) == 1, pids
    return families, pids.pop()


def value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    """Sum of the samples called `sample` whose labels include `labels`."""
    found = families.get(family)
    if found is None:
        return 0.0
    return sum(
        s.value
        for s in found.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_two_worker_scrape_counts_every_request_of_both_workers(start_server, db, unique):
    """N requests of several kinds, sent concurrently on separate connections, are
    counted N times in every scrape, whichever worker answers it (multiprocess mode)."""
    server = start_server(OAUTH2_WORKERS="2")
    admin = admin_api(server, db, unique)  # one client_credentials token
    client_id, secret = db.create_client(name=unique("svc"), scope="read")
    assert secret is not None
    n_health, n_tokens, n_missing, n_admin = 40, 12, 10, 8

    def health(_: int) -> int:
        return requests.get(server.url("/healthz"), timeout=30).status_code

    def token(_: int) -> int:
        return requests.post(
            server.url("/oauth2/token"),
            auth=(client_id, secret),
            data={"grant_type": "client_credentials"},
            timeout=30,
        ).status_code

    def missing(_: int) -> int:
        return requests.get(server.url(f"/no/such/{uuid.uuid4().hex}"), timeout=30).status_code

    def admin_get(_: int) -> int:
        return admin.get(f"/clients/{client_id}").status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(health, range(n_health))) == {200}
        assert set(pool.map(token, range(n_tokens))) == {200}
        assert set(pool.map(missing, range(n_missing))) == {404}
        assert set(pool.map(admin_get, range(n_admin))) == {200}

    expected = {
        ("/healthz", "GET", "200"): n_health,
        ("/oauth2/token", "POST", "200"): n_tokens + 1,
        ("unmatched", "GET", "404"): n_missing,
        ("/admin/clients/{client_id}", "GET", "200"): n_admin,
    }
    pids: set[str] = set()
    deadline = time.monotonic() + 60
    # Every scrape must show the totals; poll until scrapes from both workers were seen.
    while len(pids) < 2:
        assert time.monotonic() < deadline, f"only worker(s) {pids} answered /metrics"
        families, pid = scrape(server)
        pids.add(pid)
        for (route, method, status), count in expected.items():
            got = value(
                families,
                "oauth2_http_requests",
                "oauth2_http_requests_total",
                route=route,
                method=method,
                status=status,
            )
            assert got == count, (route, status, got, count, pid)
        seen = value(
            families,
            "oauth2_http_request_duration_seconds",
            "oauth2_http_request_duration_seconds_count",
            route="/healthz",
        )
        assert seen == n_health
        issued = value(
            families,
            "oauth2_tokens_issued",
            "oauth2_tokens_issued_total",
            grant_type="client_credentials",
        )
        assert issued == n_tokens + 1
    # no raw path with an id became a label
    routes = {s.labels.get("route") for s in families["oauth2_http_requests"].samples}
    assert not any(client_id in (r or "") for r in routes), routes
    assert not any("/no/such" in (r or "") for r in routes), routes


def test_every_family_is_named_and_typed_per_prometheus_conventions(server, db, unique):
    """Names `oauth2_…` (or `process_`/`python_`), counters `_total`, histograms with
    `_bucket`/`_sum`/`_count` (and `_seconds`, unless listed as unitless), gauges plain;
    the OAuth figures the README lists exist."""
    client_id, secret = db.create_client(name=unique("conv"), scope="read introspect")
    assert secret is not None
    token = server.client_credentials_token(client_id, secret)
    for presented in (token, "not-a-token"):
        response = server.post(
            "/oauth2/introspect", auth=(client_id, secret), data={"token": presented}
        )
        assert response.status_code == 200
    wrong = server.post(
        "/oauth2/token",
        auth=(client_id, "wrong secret"),
        data={"grant_type": "client_credentials"},
    )
    assert wrong.status_code == 401
    families, _ = scrape(server)
    for family in families.values():
        assert NAME.match(family.name), family.name
        suffixes = {s.name[len(family.name) :] for s in family.samples}
        if family.type == "counter":
            assert suffixes <= {"_total"}, (family.name, suffixes)
        elif family.type == "histogram":
            assert family.name.endswith("_seconds") or family.name in UNITLESS_HISTOGRAMS, (
                family.name
            )
            assert suffixes in ({"_bucket", "_sum", "_count"}, set()), (family.name, suffixes)
        else:
            assert family.type == "gauge", (family.name, family.type)
            assert suffixes <= {""}, (family.name, suffixes)
            assert not family.name.endswith("_total"), family.name
    for name in (
        "oauth2_http_requests",
        "oauth2_http_request_duration_seconds",
        "oauth2_tokens_issued",
        "oauth2_client_auth_failures",
        "oauth2_introspections",
        "oauth2_audit_buffer_rows",
        "oauth2_limiter_keys",
        "oauth2_db_pool_connections_in_use",
        "process_cpu_seconds",
        "process_resident_memory_bytes",
    ):
        assert name in families, name
    assert value(families, "oauth2_introspections", "oauth2_introspections_total", active="true")
    assert value(families, "oauth2_introspections", "oauth2_introspections_total", active="false")
    assert value(families, "oauth2_client_auth_failures", "oauth2_client_auth_failures_total")


def test_tail_instruments_are_exported_and_move_with_traffic(server, db, unique):
    """Issue #13's instruments on a live server's /metrics: event-loop lag and GC pauses
    (every backend); on PostgreSQL also the asyncpg pool wait, and the coalesced
    statements' batch sizes and times for the issue write and the introspection read.
    Each gains observations from token and introspection traffic."""
    client_id, secret = db.create_client(name=unique("tail"), scope="read introspect")
    assert secret is not None
    families, _ = scrape(server)
    watched = [
        ("oauth2_event_loop_lag_seconds", {}),
        ("oauth2_gc_pause_seconds", {}),
    ]
    if db.backend == "postgresql":
        watched += [
            ("oauth2_db_pool_wait_seconds", {"pool": "asyncpg"}),
            ("oauth2_db_batch_size", {"statement": "write"}),
            ("oauth2_db_statement_seconds", {"statement": "write"}),
            ("oauth2_db_batch_size", {"statement": "introspect"}),
            ("oauth2_db_statement_seconds", {"statement": "introspect"}),
        ]
    before = {
        (family, tuple(labels.items())): value(families, family, family + "_count", **labels)
        for family, labels in watched
    }

    def traffic(_: int) -> None:
        token = server.client_credentials_token(client_id, secret)
        answer = server.post("/oauth2/introspect", auth=(client_id, secret), data={"token": token})
        assert answer.status_code == 200 and answer.json()["active"] is True

    deadline = time.monotonic() + 60
    while True:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(traffic, range(20)))
        families, _ = scrape(server)
        for family, _ in watched:
            assert families[family].type == "histogram", family
        moved = {
            key: value(families, key[0], key[0] + "_count", **dict(key[1])) - count
            for key, count in before.items()
        }
        if all(gained > 0 for gained in moved.values()):
            break
        # GC pauses wait for enough allocations; the lag ticker for a tick after them
        assert time.monotonic() < deadline, moved
    # a statement carries at least the one request that started it
    if db.backend == "postgresql":
        for statement in ("write", "introspect"):
            count = value(
                families, "oauth2_db_batch_size", "oauth2_db_batch_size_count", statement=statement
            )
            carried = value(
                families, "oauth2_db_batch_size", "oauth2_db_batch_size_sum", statement=statement
            )
            assert carried >= count > 0, (statement, count, carried)
    # bounded labels: generations 0-2 only, no per-request or per-pid series
    generations = {s.labels["generation"] for s in families["oauth2_gc_pause_seconds"].samples}
    assert generations <= {"0", "1", "2"}, generations
    lag_series = {
        tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        for s in families["oauth2_event_loop_lag_seconds"].samples
    }
    assert lag_series == {()}, lag_series
