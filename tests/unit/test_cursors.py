"""Pagination cursors (`audit.cursors`): signed with itsdangerous, bound to their query,
refused with one clear error when altered, truncated, foreign or made with another key."""

from __future__ import annotations

import pytest

from oauth2_server.audit.cursors import CursorCodec, CursorError, query_scope

KEY = bytes(range(32))
SCOPE = query_scope("audit", {"client_id": "a"})
POSITION = ["2026-03-01T12:00:00.123456+00:00", 42]
INVALID = "cursor is invalid or was tampered with"


@pytest.fixture
def codec() -> CursorCodec:
    return CursorCodec(KEY)


def test_a_cursor_round_trips_its_position(codec):
    assert codec.decode(codec.encode(SCOPE, POSITION), SCOPE) == POSITION


def test_a_cursor_is_url_safe_payload_dot_signature(codec):
    """Never compressed: always two base64url parts (clients and tests rely on the form)."""
    for n in range(200):
        cursor = codec.encode(query_scope("tokens", {"n": n}), ["a" * n, n])
        payload, signature = cursor.split(".")
        assert payload and signature
        assert set(cursor) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
        )


def flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


def tampered_forms(cursor: str) -> list[str]:
    payload, signature = cursor.split(".")
    return [
        f"{flip(payload, 5)}.{signature}",  # altered position or scope
        f"{payload}.{flip(signature, 3)}",  # altered signature
        f"{payload}.{signature[:-1]}",  # truncated
        cursor + "x",
        payload,  # no signature
        f".{cursor}",
        "garbage",
        "",
    ]


def test_altered_or_truncated_cursors_are_refused(codec):
    for bad in tampered_forms(codec.encode(SCOPE, POSITION)):
        with pytest.raises(CursorError, match=INVALID):
            codec.decode(bad, SCOPE)


def test_a_cursor_of_another_query_is_refused(codec):
    cursor = codec.encode(SCOPE, POSITION)
    with pytest.raises(CursorError, match="another query"):
        codec.decode(cursor, query_scope("audit", {"client_id": "b"}))


def test_a_cursor_signed_with_another_key_is_refused(codec):
    foreign = CursorCodec(bytes(32)).encode(SCOPE, POSITION)
    with pytest.raises(CursorError, match=INVALID):
        codec.decode(foreign, SCOPE)


def test_a_signed_payload_that_is_not_a_cursor_is_refused(codec):
    serializer = codec._serializer
    for value in ([1, 2], {"s": SCOPE, "p": "not a list"}, {"s": SCOPE}):
        with pytest.raises(CursorError, match=INVALID):
            codec.decode(serializer.dumps(value), SCOPE)


def test_a_scope_names_the_listing_and_digests_its_filters():
    assert query_scope("audit", {"a": 1, "b": 2}) == query_scope("audit", {"b": 2, "a": 1})
    assert query_scope("audit", {"a": 1}) != query_scope("audit", {"a": 2})
    assert query_scope("audit", {}) != query_scope("clients", {})
    assert query_scope("audit", {}).startswith("audit:")
