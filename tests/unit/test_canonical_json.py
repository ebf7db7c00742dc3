"""The hash chain's canonical JSON (`audit.canonical`): RFC 8785 for new seals, the
format before it still verifying, and a chain sealed across the switch checked whole."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from oauth2_server.audit import canonical
from oauth2_server.audit.chain import GENESIS_HASH, ChainState, ChainWalker
from oauth2_server.audit.rows import CONTENT_FIELDS

START = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def row(row_id: int = 7, **values: Any) -> SimpleNamespace:
    """A token-log row as the chain code reads it (every content column set)."""
    content: dict[str, Any] = {
        "id": row_id,
        "created_at": START + timedelta(seconds=row_id),
        "action": "issued",
        "client_id": "shop-app",
        "subject": "user-ü",
        "branch_id": None,
        "grant_type": "authorization_code",
        "token_id": f"jti-{row_id}",
        "family_id": None,
        "ip": "192.0.2.1",
        "user_agent": "curl/8",
        "request_id": "req-1",
        "risk_score": Decimal("0.40"),
        "flags": ["new_ip"],
        "details": {"b": 1.0, "a": "é\n", "n": [1, 2]},
        "seal_seq": None,
        "prev_hash": None,
        "row_hash": None,
    }
    content.update(values)
    return SimpleNamespace(**content)


def test_the_current_format_is_rfc_8785_of_the_exported_row():
    """Members sorted, no spaces, 1.0 written as 1, non-ASCII as UTF-8 (RFC 8785 §3.2)."""
    assert (
        canonical.canonical_rfc8785(row(), 3)
        == (
            '{"action":"issued","branch_id":null,"chain_format":2,'
            '"client_id":"shop-app","created_at":"2026-03-01T12:00:07.123456Z",'
            '"details":{"a":"é\\n","b":1,"n":[1,2]},"family_id":null,"flags":["new_ip"],'
            '"grant_type":"authorization_code","id":7,"ip":"192.0.2.1","request_id":"req-1",'
            '"risk_score":0.4,"seal_seq":3,"subject":"user-ü","token_id":"jti-7",'
            '"user_agent":"curl/8"}'
        ).encode()
    )


def test_the_legacy_format_is_unchanged():
    """Rows sealed before RFC 8785 keep verifying only if format 1 never changes."""
    assert (
        canonical.canonical_legacy(row(), 3)
        == (
            '[1,7,"2026-03-01T12:00:07.123456+00:00","issued","shop-app","user-ü",null,'
            '"authorization_code","jti-7",null,"192.0.2.1","curl/8","req-1","0.40",["new_ip"],'
            '{"a":"é\\n","b":1.0,"n":[1,2]},3]'
        ).encode()
    )


def test_a_hash_covers_the_previous_hash_and_the_canonical_bytes():
    prev = "ab" * 32
    expected = hashlib.sha256(
        prev.encode() + b"\n" + canonical.canonical_rfc8785(row(), 3)
    ).hexdigest()
    assert canonical.link_hash(prev, row(), 3) == expected
    assert canonical.seal_hash(prev, row(), 3) == (expected, canonical.FORMAT_RFC8785)


# A forged value for every content column.
FORGED: dict[str, Any] = {
    **{name: "forged" for name in CONTENT_FIELDS},
    "id": 8,
    "created_at": START,
    "risk_score": Decimal("0.50"),
    "flags": ["forged"],
    "details": {"n": 99},
}


@pytest.mark.parametrize("chain_format", canonical.FORMATS)
@pytest.mark.parametrize("name", CONTENT_FIELDS)
def test_every_content_column_is_hashed(chain_format, name):
    original = canonical.format_hash(chain_format, GENESIS_HASH, row(), 1)
    forged = canonical.format_hash(chain_format, GENESIS_HASH, row(**{name: FORGED[name]}), 1)
    assert forged != original


@pytest.mark.parametrize("chain_format", canonical.FORMATS)
def test_the_seal_number_is_hashed(chain_format):
    assert canonical.format_hash(chain_format, GENESIS_HASH, row(), 1) != canonical.format_hash(
        chain_format, GENESIS_HASH, row(), 2
    )


def test_what_rfc_8785_cannot_express_is_sealed_in_the_legacy_format():
    """An integer beyond ±(2^53 − 1) in details (older releases stored up to 64 bits)."""
    big = row(details={"n": 2**60})
    digest, chain_format = canonical.seal_hash(GENESIS_HASH, big, 1)
    assert chain_format == canonical.FORMAT_LEGACY
    assert canonical.matching_format(GENESIS_HASH, big, 1, digest) == canonical.FORMAT_LEGACY


def test_a_row_matches_the_format_it_was_sealed_in_and_no_other_content():
    for chain_format in canonical.FORMATS:
        digest = canonical.format_hash(chain_format, GENESIS_HASH, row(), 1)
        assert canonical.matching_format(GENESIS_HASH, row(), 1, digest) == chain_format
        assert canonical.matching_format(GENESIS_HASH, row(action="revoked"), 1, digest) is None
        assert canonical.matching_format("1" * 64, row(), 1, digest) is None


def test_content_no_format_can_express_matches_nothing_instead_of_failing():
    tampered = row(subject="\ud800", details={"x": float("inf")})
    assert canonical.matching_format(GENESIS_HASH, tampered, 1, "0" * 64) is None


def sealed_chain(formats: list[int]) -> list[SimpleNamespace]:
    """Rows 1..n sealed in the given formats, in chain order."""
    rows, prev = [], GENESIS_HASH
    for seq, chain_format in enumerate(formats, start=1):
        item = row(seq)
        item.seal_seq, item.prev_hash = seq, prev
        item.row_hash = prev = canonical.format_hash(chain_format, prev, item, seq)
        rows.append(item)
    return rows


def walk(rows: list[SimpleNamespace]):
    last = rows[-1]
    state = ChainState(
        last.seal_seq, last.row_hash, (last.created_at, last.id), 0, GENESIS_HASH, None
    )
    walker = ChainWalker(state)
    walker.feed(rows)
    return walker.finish()


MIXED = [1, 1, 1, 2, 2, 2]  # sealed by the release before RFC 8785, then by this one


def test_a_chain_sealed_before_and_after_the_switch_verifies():
    report = walk(sealed_chain(MIXED))
    assert report.ok, report.problem
    assert report.checked == 6 and report.formats == {1: 3, 2: 3}
    assert report.notes == []


def test_a_legacy_seal_after_an_rfc_8785_one_verifies_with_a_note():
    """A rolling upgrade: an older release's sealer ran after this one."""
    report = walk(sealed_chain([2, 1, 2]))
    assert report.ok, report.problem
    assert report.notes and "format 1" in report.notes[0]


@pytest.mark.parametrize("target", [1, 4], ids=["legacy part", "rfc 8785 part"])
def test_tampering_in_either_part_is_reported(target):
    rows = sealed_chain(MIXED)
    rows[target].token_id = "forged"
    report = walk(rows)
    assert report.problem is not None and report.problem.kind == "altered"
    assert report.problem.log_id == rows[target].id


@pytest.mark.parametrize("target", [1, 4], ids=["legacy part", "rfc 8785 part"])
def test_a_rehashed_row_breaks_the_next_link_in_either_part(target):
    rows = sealed_chain(MIXED)
    forged = rows[target]
    forged.token_id = "forged"
    forged.row_hash = canonical.link_hash(forged.prev_hash, forged, forged.seal_seq)
    report = walk(rows)
    assert report.problem is not None and report.problem.log_id == rows[target + 1].id
    assert "prev_hash" in report.problem.message
