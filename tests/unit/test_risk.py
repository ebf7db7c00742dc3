"""Risk scores and flags of audit rows (`audit.risk`; SECURITY.md "Risk scores and
flags"): every rule as a pure function, checked without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from oauth2_server.audit import risk

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "stored"), [(-1, 0.0), (0.004, 0.0), (0.005, 0.01), (0.456, 0.46), (7, 1.0)]
)
def test_a_score_is_clamped_to_0_1_with_two_decimals(value, stored):
    assert risk.clamp(value) == stored


@pytest.mark.parametrize(
    ("action", "score"),
    [
        ("code_replay", 1.0),
        ("refresh_reuse", 1.0),
        ("client_auth_failed", 0.2),
        ("login_failed", 0.2),
        ("client_auth_throttled", 0.8),
        ("upstream_refresh_failed", 0.3),
        ("issued", 0.0),
        ("admin_client_created", 0.0),
    ],
)
def test_fixed_scores_by_action(action, score):
    assert risk.fixed_score(action) == score
    assert risk.row_score(action, None, []) == score


def test_an_explicit_score_wins_over_the_fixed_one():
    assert risk.row_score("code_replay", 0.3, ["race"]) == 0.3


def test_a_flagged_row_scores_at_least_0_01():
    """The `risk_score > 0` partial index finds every flagged row."""
    assert risk.row_score("issued", None, ["malformed"]) == 0.01
    assert risk.row_score("issued", 0.0, ["summary"]) == 0.01
    assert risk.row_score("issued", None, []) == 0.0


@pytest.mark.parametrize(
    ("failures", "score", "burst"),
    [(0, 0.2, False), (1, 0.2, False), (2, 0.3, False), (4, 0.5, False), (5, 0.6, True),
     (8, 0.9, True), (50, 0.9, True)],
)  # fmt: skip
def test_auth_failure_score_grows_with_failures_from_the_ip(failures, score, burst):
    for kind in ("client_auth_failed", "login_failed"):
        assessment = risk.auth_failure(kind, failures)
        assert assessment.score == score
        assert assessment.flags == [kind] + (["auth_failure_burst"] if burst else [])


@pytest.mark.parametrize("action", ["code_replay", "refresh_reuse"])
def test_a_second_use_within_a_second_is_a_race(action):
    assert risk.second_use(action, NOW, NOW + timedelta(seconds=1)) == risk.Assessment(
        0.3, ["race"]
    )


@pytest.mark.parametrize("action", ["code_replay", "refresh_reuse"])
def test_a_later_or_untimed_second_use_is_an_attack(action):
    later = risk.second_use(action, NOW, NOW + timedelta(seconds=1.001))
    assert later == risk.Assessment(1.0, [action])
    assert risk.second_use(action, None, NOW) == risk.Assessment(1.0, [action])


def test_a_refresh_from_a_new_ip_is_flagged():
    assert risk.refresh_from_ip("192.0.2.9", {"192.0.2.1"}) == risk.Assessment(0.4, ["new_ip"])
    assert risk.refresh_from_ip("192.0.2.1", {"192.0.2.1"}) == risk.Assessment(0.0, [])


def test_an_unknown_ip_or_a_family_without_ips_is_not_flagged():
    assert risk.refresh_from_ip(None, {"192.0.2.1"}) == risk.Assessment(0.0, [])
    assert risk.refresh_from_ip("192.0.2.9", set()) == risk.Assessment(0.0, [])


def test_a_grace_refresh_scores_0_1_and_the_higher_rule_wins():
    assert risk.refresh_from_ip("192.0.2.1", {"192.0.2.1"}, grace=True) == risk.Assessment(
        0.1, ["refresh_grace"]
    )
    both = risk.refresh_from_ip("192.0.2.9", {"192.0.2.1"}, grace=True)
    assert both == risk.Assessment(0.4, ["refresh_grace", "new_ip"])


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_the_failure_window_counts_per_ip_over_the_window():
    clock = Clock()
    window = risk.AuthFailureWindow(10, timer=clock)
    assert [window.add("a") for _ in range(3)] == [1, 2, 3]
    assert window.add("b") == 1
    assert window.add(None) == 1
    clock.now += 10.5
    assert window.add("a") == 1  # the earlier failures left the window


def test_the_failure_window_holds_at_most_max_keys_ips():
    clock = Clock()
    window = risk.AuthFailureWindow(10, max_keys=3, timer=clock)
    for n in range(10):
        window.add(f"192.0.2.{n}")
    assert len(window._times) <= 3
