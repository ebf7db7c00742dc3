"""The tail instruments (issue #13 item 2) without a server: the event-loop lag ticker and
GC pause hook (oauth2_server/monitor.py), the coalescer's batch and statement histograms
(storage/coalesce.py), and bench/load.py's histogram-delta summary."""

from __future__ import annotations

import asyncio
import gc
import math
import time
from types import SimpleNamespace

import pytest

from bench import load, peer
from oauth2_server import metrics
from oauth2_server.monitor import MAX_PENDING_PAUSES, GcPauses, Monitor
from oauth2_server.storage.coalesce import Coalescer, statement_name


def test_ticker_records_how_late_it_woke_behind_a_slow_callback() -> None:
    """A callback that holds the loop 40 ms shows up as one tick about 40 ms late; the
    ticker keeps ticking every ~1 ms otherwise, and never records a negative lag."""
    lags: list[float] = []

    async def scenario() -> None:
        monitor = Monitor(observe_lag=lags.append, observe_gc=lambda *_: None)
        monitor.start()
        await asyncio.sleep(0.02)
        asyncio.get_running_loop().call_soon(time.sleep, 0.04)  # a blocking callback
        await asyncio.sleep(0.06)
        await monitor.stop()

    asyncio.run(scenario())
    assert len(lags) >= 5, lags
    assert min(lags) >= 0.0
    assert max(lags) >= 0.035, max(lags)
    assert sum(1 for lag in lags if lag >= 0.035) <= 2  # one stall, not one per tick


def test_stop_cancels_the_ticker_and_removes_the_gc_hook() -> None:
    lags: list[float] = []

    async def scenario() -> Monitor:
        monitor = Monitor(observe_lag=lags.append, observe_gc=lambda *_: None)
        monitor.start()
        assert monitor.gc_pauses._callback in gc.callbacks
        await asyncio.sleep(0.01)
        await monitor.stop()
        return monitor

    monitor = asyncio.run(scenario())
    assert monitor.gc_pauses._callback not in gc.callbacks
    ticks = len(lags)
    time.sleep(0.01)
    assert len(lags) == ticks  # nothing ticks after stop


def test_interval_zero_turns_the_monitor_off() -> None:
    """OAUTH2_LOOP_MONITOR_INTERVAL=0: no ticker, no GC hook."""
    lags: list[float] = []

    async def scenario() -> Monitor:
        monitor = Monitor(0, observe_lag=lags.append, observe_gc=lambda *_: None)
        monitor.start()
        assert monitor.gc_pauses._callback not in gc.callbacks
        await asyncio.sleep(0.01)
        await monitor.stop()
        return monitor

    asyncio.run(scenario())
    assert lags == []


def test_gc_pauses_are_timed_per_generation_and_reach_the_observer() -> None:
    pauses: list[tuple[int, float]] = []

    async def scenario() -> None:
        monitor = Monitor(observe_lag=lambda _: None, observe_gc=lambda g, s: pauses.append((g, s)))
        monitor.start()
        gc.collect(1)
        gc.collect(2)
        await asyncio.sleep(0.01)  # the ticker moves pending pauses to the observer
        await monitor.stop()

    asyncio.run(scenario())
    generations = {generation for generation, _ in pauses}
    assert {1, 2} <= generations, pauses
    assert all(seconds >= 0 for _, seconds in pauses)


def test_gc_pause_is_stop_minus_start_and_the_queue_is_bounded() -> None:
    now = [10.0]
    hook = GcPauses(clock=lambda: now[0])
    hook._callback("start", {"generation": 0})
    now[0] = 10.25
    hook._callback("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    seen: list[tuple[int, float]] = []
    hook.drain(lambda g, s: seen.append((g, s)))
    assert seen == [(0, 0.25)]
    for _ in range(MAX_PENDING_PAUSES + 500):
        hook._callback("start", {"generation": 2})
        hook._callback("stop", {"generation": 2})
    seen.clear()
    hook.drain(lambda g, s: seen.append((g, s)))
    assert len(seen) == MAX_PENDING_PAUSES


def test_default_monitor_observes_into_the_prometheus_histograms() -> None:
    registry = metrics.REGISTRY

    def count(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    lag_before = count("oauth2_event_loop_lag_seconds_count")
    gc_before = count("oauth2_gc_pause_seconds_count", generation="2")

    async def scenario() -> None:
        monitor = Monitor()
        monitor.start()
        await asyncio.sleep(0.01)
        gc.collect()
        await monitor.stop()

    asyncio.run(scenario())
    assert count("oauth2_event_loop_lag_seconds_count") > lag_before
    assert count("oauth2_gc_pause_seconds_count", generation="2") > gc_before


def test_coalescer_observes_batch_size_and_statement_time_under_its_name() -> None:
    """Five concurrent calls with one statement in flight: a batch of 1, then one of 4
    (the duplicate key counts: it is a request carried); both statements timed, the
    failed one too. The label comes from `run_many`'s name unless `name` is given."""

    async def _read_many(keys: list[int]) -> dict[int, int]:
        await asyncio.sleep(0.002)
        if 13 in keys:
            raise RuntimeError("statement failed")
        return {key: key for key in keys}

    assert statement_name(_read_many) == "read"
    assert statement_name(lambda keys: keys) == "<lambda>"
    registry = metrics.REGISTRY
    label = {"statement": "unit_read"}

    def figures() -> tuple[float, float, float]:
        return (
            registry.get_sample_value("oauth2_db_batch_size_count", label) or 0.0,
            registry.get_sample_value("oauth2_db_batch_size_sum", label) or 0.0,
            registry.get_sample_value("oauth2_db_statement_seconds_count", label) or 0.0,
        )

    before = figures()

    async def scenario() -> None:
        coalescer: Coalescer[int, int] = Coalescer(_read_many, 1, name="unit_read")
        assert coalescer.name == "unit_read"
        assert Coalescer(_read_many, 1).name == "read"
        await asyncio.gather(*(coalescer.get(key) for key in (1, 2, 2, 3, 4)))
        await asyncio.gather(coalescer.get(13), return_exceptions=True)

    asyncio.run(scenario())
    batches, carried, statements = (a - b for a, b in zip(figures(), before, strict=True))
    assert (batches, carried, statements) == (3, 6, 3)
    slow = (
        registry.get_sample_value("oauth2_db_statement_seconds_bucket", {**label, "le": "0.001"})
        or 0.0
    )
    assert slow == 0  # every statement slept 2 ms


EXPOSITION = """\
# TYPE oauth2_event_loop_lag_seconds histogram
oauth2_event_loop_lag_seconds_bucket{{le="0.001"}} {lag1}
oauth2_event_loop_lag_seconds_bucket{{le="0.01"}} {lag10}
oauth2_event_loop_lag_seconds_bucket{{le="0.05"}} {lag50}
oauth2_event_loop_lag_seconds_bucket{{le="+Inf"}} {lag50}
oauth2_event_loop_lag_seconds_count {lag50}
oauth2_event_loop_lag_seconds_sum {lagsum}
# TYPE oauth2_gc_pause_seconds histogram
oauth2_gc_pause_seconds_bucket{{generation="0",le="0.001"}} {gc0}
oauth2_gc_pause_seconds_bucket{{generation="0",le="0.01"}} {gc0}
oauth2_gc_pause_seconds_bucket{{generation="0",le="0.05"}} {gc0}
oauth2_gc_pause_seconds_bucket{{generation="0",le="+Inf"}} {gc0}
oauth2_gc_pause_seconds_count{{generation="0"}} {gc0}
oauth2_gc_pause_seconds_sum{{generation="0"}} {gc0sum}
oauth2_gc_pause_seconds_bucket{{generation="2",le="0.001"}} 0
oauth2_gc_pause_seconds_bucket{{generation="2",le="0.01"}} 0
oauth2_gc_pause_seconds_bucket{{generation="2",le="0.05"}} {gc2}
oauth2_gc_pause_seconds_bucket{{generation="2",le="+Inf"}} {gc2}
oauth2_gc_pause_seconds_count{{generation="2"}} {gc2}
oauth2_gc_pause_seconds_sum{{generation="2"}} {gc2sum}
# TYPE oauth2_db_batch_size histogram
oauth2_db_batch_size_bucket{{statement="write",le="1.0"}} {b1}
oauth2_db_batch_size_bucket{{statement="write",le="4.0"}} {b4}
oauth2_db_batch_size_bucket{{statement="write",le="+Inf"}} {b4}
oauth2_db_batch_size_count{{statement="write"}} {b4}
oauth2_db_batch_size_sum{{statement="write"}} {bsum}
# TYPE oauth2_db_statement_seconds histogram
oauth2_db_statement_seconds_bucket{{statement="write",le="0.001"}} 0
oauth2_db_statement_seconds_bucket{{statement="write",le="0.01"}} {b4}
oauth2_db_statement_seconds_bucket{{statement="write",le="+Inf"}} {b4}
oauth2_db_statement_seconds_count{{statement="write"}} {b4}
oauth2_db_statement_seconds_sum{{statement="write"}} 0.01
oauth2_db_statement_seconds_bucket{{statement="introspect",le="0.001"}} 0
oauth2_db_statement_seconds_bucket{{statement="introspect",le="0.01"}} 0
oauth2_db_statement_seconds_bucket{{statement="introspect",le="+Inf"}} 0
oauth2_db_statement_seconds_count{{statement="introspect"}} 0
oauth2_db_statement_seconds_sum{{statement="introspect"}} 0
"""

BEFORE = dict(lag1=100, lag10=100, lag50=100, lagsum=0.01, gc0=5, gc0sum=0.001, gc2=0)
BEFORE |= dict(gc2sum=0, b1=10, b4=10, bsum=10)
# the run: 1000 ticks (980 <= 1 ms, 10 in 1-10 ms, 10 in 10-50 ms), 20 gen-0 pauses,
# 1 full collection of 10-50 ms, 40 write statements carrying 100 requests
AFTER = dict(lag1=1080, lag10=1090, lag50=1100, lagsum=0.51, gc0=25, gc0sum=0.005, gc2=1)
AFTER |= dict(gc2sum=0.03, b1=30, b4=50, bsum=110)


def test_histogram_delta_quantile_and_largest_bucket() -> None:
    before = load.parse_samples(EXPOSITION.format(**BEFORE))
    after = load.parse_samples(EXPOSITION.format(**AFTER))
    gained = load.delta(before, after)
    lag = load.histogram(gained, "oauth2_event_loop_lag_seconds")
    assert lag is not None
    assert lag.count == 1000 and lag.bounds[-1] == math.inf
    assert lag.cumulative == [980, 990, 1000, 1000]
    # rank 990 falls at the top of the 1-10 ms bucket; 995 halfway into 10-50 ms
    assert lag.quantile(0.99) == pytest.approx(0.01)
    assert lag.quantile(0.995) == pytest.approx(0.03)
    assert lag.quantile(0.5) == pytest.approx(0.001 * 500 / 980)
    assert lag.highest() == 0.05
    full = load.histogram(gained, "oauth2_gc_pause_seconds", generation="2")
    assert full is not None and full.count == 1 and full.total == pytest.approx(0.03)
    every = load.histogram(gained, "oauth2_gc_pause_seconds")
    assert every is not None and every.count == 21 and every.highest() == 0.05
    size = load.histogram(gained, "oauth2_db_batch_size", statement="write")
    assert size is not None and size.mean() == 2.5
    assert load.histogram(gained, "oauth2_db_statement_seconds", statement="introspect") is None
    assert load.label_values(gained, "oauth2_db_statement_seconds", "statement") == ["write"]


def test_quantile_in_the_overflow_bucket_is_the_largest_finite_bound() -> None:
    buckets = load.Buckets([0.01, 0.1, math.inf], [0, 0, 4], 4, 8.0)
    assert buckets.quantile(0.99) == 0.1
    assert buckets.highest() == math.inf


def test_tail_summary_is_one_compact_line_of_what_moved() -> None:
    before = load.parse_samples(EXPOSITION.format(**BEFORE))
    after = load.parse_samples(EXPOSITION.format(**AFTER))
    line = load.tail_summary(before, after)
    assert line == (
        "  tail: loop lag p99 10.00 max<=50.00 ms"
        " | gc 21x 34.0 ms max<=50.00 ms gen2 1x"
        " | write batch 2.5 p99 9.91 ms"  # 1 + 9 * 39.6/40 ms: linear in 1-10 ms
    )
    idle = load.tail_summary(after, after)
    assert idle == "  tail: no figures on /metrics"


def test_ratio_lines_put_each_of_our_figures_against_the_peers() -> None:
    ours = [
        load.Result("client_credentials", 3000.0, 4.0, 20.0, 0),
        load.Result("token_exchange", 2000.0, 5.0, 30.0, 0),
        load.Result("bare starlette (ceiling)", 9000.0, 1.0, 3.0, 0),
    ]
    theirs = [load.Result("client_credentials (peer)", 5000.0, 2.0, 8.0, 0)]
    lines = peer.ratio_lines(ours, theirs)
    assert len(lines) == 3  # title, client_credentials, token exchange against ours
    assert "0.60x" in lines[1] and "2.50x" in lines[1], lines[1]
    assert lines[2].startswith("  token_exchange / our client_credentials") and "0.67x" in lines[2]


def test_peer_scenarios_are_load_scenarios() -> None:
    load.load_extra_scenarios()
    assert set(peer.PEER_SCENARIOS) <= set(load.SCENARIOS)
    path, body, auth = peer.client_credentials(SimpleNamespace(base_url="http://peer"))
    assert (path, body) == ("/token", "grant_type=client_credentials&scope=read")
    assert auth == "Basic YmVuY2g6YmVuY2gtc2VjcmV0LTAxMjM0NTY3ODk="
