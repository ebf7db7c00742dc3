"""The per-process caches (DESIGN.md invariants 9 and 10): each has a size cap that holds,
and entries expire on time (an injected clock stands in for the real one)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from oauth2_server.audit.log import AuditEvent
from oauth2_server.oauth.clients import ClientCache
from oauth2_server.oauth.throttling import FailureLimiter, RefusalLog
from oauth2_server.oauth.tokens import AccessTokenCodec
from oauth2_server.storage.auth_failures import MemoryCounts


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(client_id: str) -> Any:
    return SimpleNamespace(client_id=client_id, version=1)


# -- ClientCache --------------------------------------------------------------------------


def test_client_cache_holds_at_most_max_entries():
    cache = ClientCache(ttl=60, max_entries=3)
    for n in range(10):
        cache.put(record(f"c{n}"))
    assert len(cache) == 3
    assert cache.get("c9") is not None and cache.get("c0") is None


def test_client_cache_drops_the_least_recently_used_first():
    cache = ClientCache(ttl=60, max_entries=2)
    cache.put(record("a"))
    cache.put(record("b"))
    assert cache.get("a") is not None  # a used after b
    cache.put(record("c"))
    assert cache.get("a") is not None and cache.get("b") is None


def test_client_cache_entries_expire_after_ttl():
    clock = Clock()
    cache = ClientCache(ttl=5, timer=clock)
    cache.put(record("a"))
    clock.now += 4.9
    assert cache.get("a") is not None
    clock.now += 0.2
    assert cache.get("a") is None


def test_client_cache_invalidation_drops_and_refuses_older_reads():
    cache = ClientCache(ttl=60)
    cache.put(record("a"))
    cache.put(record("b"))
    generation = cache.generation
    cache.invalidate("a")
    assert cache.get("a") is None and cache.get("b") is not None
    cache.put(record("a"), generation)  # read before the invalidation: not cached
    assert cache.get("a") is None
    cache.put(record("a"), cache.generation)
    assert cache.get("a") is not None
    cache.invalidate()
    assert cache.get("a") is None and cache.get("b") is None


def test_a_stale_record_is_counted_and_dropped():
    cache = ClientCache(ttl=60)
    cache.put(record("a"))
    cache.stale(record("a"))
    assert cache.stale_records == 1 and cache.get("a") is None


# -- AccessTokenCodec's verified-token cache ----------------------------------------------


def token_codec(clock: Clock, cache_size: int = 10) -> tuple[AccessTokenCodec, list[int]]:
    private = ec.generate_private_key(ec.SECP256R1())
    keys = SimpleNamespace(
        current=SimpleNamespace(private_key=private, kid="k1"),
        public_keys={"k1": private.public_key()},
    )
    codec = AccessTokenCodec(keys, "https://issuer", "aud", cache_size, timer=clock)  # type: ignore[arg-type]
    verified: list[int] = []
    real = codec._verify

    def counting(token: str) -> dict[str, Any] | None:
        verified.append(1)
        return real(token)

    codec._verify = counting  # type: ignore[method-assign]
    return codec, verified


def access_token(codec: AccessTokenCodec, n: int, exp: int) -> str:
    now = int(time.time())
    return codec.encode(
        {"sub": "s", "jti": f"j{n}", "iat": now, "exp": exp, "client_id": "c", "scope": ""}
    )


def test_a_verified_token_is_not_verified_again_until_it_expires():
    exp = int(time.time()) + 600
    clock = Clock(exp - 10)
    codec, verified = token_codec(clock)
    token = access_token(codec, 1, exp)
    assert codec.decode(token)["jti"] == "j1"
    assert codec.decode(token)["jti"] == "j1"
    assert len(verified) == 1
    clock.now = exp  # the cache entry ends with the token's `exp`
    codec.decode(token)
    assert len(verified) == 2


def test_the_verified_token_cache_has_a_cap():
    exp = int(time.time()) + 600
    codec, verified = token_codec(Clock(exp - 10), cache_size=3)
    tokens = [access_token(codec, n, exp) for n in range(5)]
    for token in tokens:
        codec.decode(token)
    assert len(codec._verified) == 3
    codec.decode(tokens[0])  # evicted: verified again
    assert len(verified) == 6


def test_a_cached_token_of_a_removed_key_is_refused():
    exp = int(time.time()) + 600
    codec, _ = token_codec(Clock(exp - 10))
    token = access_token(codec, 1, exp)
    assert codec.decode(token) is not None
    codec.keys.public_keys.clear()  # the key left the key set
    assert codec.decode(token) is None


# -- FailureLimiter's blocked keys and MemoryCounts ---------------------------------------


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_memory_counts_window_ends_on_time():
    clock = Clock()
    counts = MemoryCounts(max_keys=10, timer=clock)
    assert [c.count for c in run(counts.add(["k"], 60))] == [1]
    clock.now += 59
    [second] = run(counts.add(["k"], 60))
    assert second.count == 2 and abs(second.remaining - 1) < 1e-9
    clock.now += 1
    assert [c.count for c in run(counts.add(["k"], 60))] == [1]  # a new window


def test_memory_counts_hold_at_most_max_keys_least_recently_counted_first():
    counts = MemoryCounts(max_keys=3, timer=Clock())
    for key in ["a", "b", "c"]:
        run(counts.add([key], 60))
    run(counts.add(["a"], 60))
    run(counts.add(["d"], 60))
    assert len(counts) == 3
    assert [c.count for c in run(counts.add(["a", "b"], 60))] == [3, 1]  # b was dropped


def test_memory_counts_subtract_only_within_the_same_window():
    clock = Clock()
    counts = MemoryCounts(max_keys=10, timer=clock)
    run(counts.add(["k"], 60))
    held = run(counts.add(["k"], 60))
    run(counts.subtract(held))
    assert run(counts.add(["k"], 60))[0].count == 2
    clock.now += 61
    stale = held
    fresh = run(counts.add(["k"], 60))
    run(counts.subtract(stale))  # an ended window's attempt is not given back
    assert run(counts.add(["k"], 60))[0].count == fresh[0].count + 1


def limiter(clock: Clock, max_keys: int = 8) -> FailureLimiter:
    counts = MemoryCounts(max_keys, timer=clock)
    return FailureLimiter(
        counts, limit=2, window=60, secret=b"s" * 32, max_keys=max_keys, timer=clock
    )


def test_a_key_over_the_limit_is_refused_from_memory_until_its_window_ends():
    clock = Clock()
    limits = limiter(clock)
    keys = {"ip": "ip:192.0.2.1"}
    assert [run(limits.count(keys)).refused for _ in range(3)] == [False, False, True]
    clock.now += 30
    known = run(limits.count(keys))
    assert known.refused and known.counts == {} and abs(known.wait - 30) < 1e-6
    clock.now += 30
    assert not run(limits.count(keys)).refused  # the window ended


def test_blocked_keys_are_capped_at_a_quarter_of_max_keys():
    clock = Clock()
    limits = limiter(clock, max_keys=8)
    for n in range(10):
        for _ in range(3):
            run(limits.count({"ip": f"ip:192.0.2.{n}"}))
    assert len(limits._blocked) == 2  # 8 // 4


def test_refusal_log_holds_at_most_max_keys_open_windows():
    written: list[Any] = []
    buffer = SimpleNamespace(add=written.append)
    refusals = RefusalLog(buffer, max_keys=2)  # type: ignore[arg-type]
    for key in ["a", "a", "b", "c"]:
        refusals.refused(key, 60, AuditEvent("client_auth_throttled", client_id=key))
    assert len(refusals) == 2
    summaries = [e for e in written if e.details.get("summary")]
    assert [e.client_id for e in summaries] == ["a"]  # the oldest, closed early
    assert summaries[0].details["refusals"] == 2
