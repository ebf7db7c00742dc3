"""The refresh worker's schedule (issue #14 item 1; `upstream.freshness`) and the grant
health rule (issue #14 item 2; `upstream.health`): pure functions, no server."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from oauth2_server.upstream.freshness import jittered, retry_delay, worker_due_at
from oauth2_server.upstream.health import grant_state

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600), (10_000, 3600)],
)
def test_backoff_doubles_per_failure_up_to_its_cap(failures, expected):
    rand = random.Random(1)
    for _ in range(50):
        delay = retry_delay(failures, base=30, cap=3600, rand=rand)
        assert 0.8 * expected <= delay <= 1.2 * expected


def test_jitter_spreads_waits_both_ways():
    rand = random.Random(2)
    waits = [jittered(30, rand) for _ in range(200)]
    assert min(waits) < 27 and max(waits) > 33
    assert all(24 <= wait <= 36 for wait in waits)


def test_worker_refreshes_ahead_of_expiry_or_at_half_a_short_lifetime():
    expires = NOW + timedelta(hours=1)
    assert worker_due_at(600, expires, expires - timedelta(hours=1), None) == expires - timedelta(
        seconds=600
    )
    # a 10-minute token: refreshed when half its life is spent, not at once
    short = NOW + timedelta(minutes=10)
    assert worker_due_at(600, short, NOW, None) == NOW + timedelta(minutes=5)
    # backoff holds the next try back
    later = NOW + timedelta(hours=2)
    assert worker_due_at(600, expires, None, later) == later


@pytest.mark.parametrize(
    ("needs_consent", "failures", "state"),
    [
        (False, 0, "ok"),
        (False, 1, "refresh_failing"),
        (False, 5, "refresh_failing"),
        (True, 0, "needs_consent"),
        (True, 3, "needs_consent"),
    ],
)
def test_health_state_rule(needs_consent, failures, state):
    assert grant_state(needs_consent, failures) == state
