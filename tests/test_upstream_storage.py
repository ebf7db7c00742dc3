"""Upstream tokens at rest (DESIGN.md "Tokens and secrets", invariant 1): AES-256-GCM
under the keyring, key id beside the ciphertext, associated data binding each ciphertext
to its row, provider, account and token kind; keys rotate without re-issuing anything.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from oauth2_server.crypto.keyring import DecryptionError, generate_key_spec, parse_keyring
from oauth2_server.upstream.sealing import open_token
from tests.admin_helpers import execute
from tests.conftest import start_live_server
from tests.fake_google import (
    Account,
    callback,
    connect_branch,
    connection_url,
    credential_of,
    decrypt_stored,
    exchange,
    exchange_client,
    follow_consent,
)


def test_ciphertexts_in_the_database_do_not_contain_the_tokens(upstream, db, google, unique):
    branch_id = unique("at-rest")
    connect_branch(upstream, db, google, branch_id, expires_in=120)
    client_id, secret = exchange_client(db, [branch_id])
    subject = upstream.client_credentials_token(client_id, secret)
    assert exchange(upstream, client_id, secret, subject, branch_id).status_code == 200  # refresh
    pending = connection_url(upstream, db, unique("pending"))  # a stored PKCE verifier

    blob = db.dump()
    for token in (*google.issued_access_tokens, *google.issued_refresh_tokens):
        assert token not in blob
        assert token not in upstream.log()
    assert google.issued_access_tokens and google.issued_refresh_tokens
    state = pending.split("state=")[1].split("&")[0]
    assert state not in blob  # stored as its SHA-256 only

    stored = credential_of(db, branch_id)
    assert stored["encryption_key_id"] == "test-1"
    assert decrypt_stored(db.keys, stored, "access") == google.issued_access_tokens[-1]
    assert decrypt_stored(db.keys, stored, "refresh") == google.issued_refresh_tokens[0]


def test_a_ciphertext_copied_to_another_row_fails_to_decrypt(upstream, db, google, unique):
    """The associated data binds a ciphertext to its row, provider and account."""
    victim, attacker = unique("victim"), unique("attacker")
    victim_account = Account("110000000000000000011", "victim@branch.example")
    connect_branch(upstream, db, google, victim, account=victim_account)
    victim_token = google.issued_access_tokens[-1]
    attacker_account = Account("120000000000000000012", "attacker@branch.example")
    connect_branch(upstream, db, google, attacker, account=attacker_account)
    source, target = credential_of(db, victim), credential_of(db, attacker)

    keyring = parse_keyring(db.keys)
    # The victim's access token read as the attacker's, nor as its own row's refresh token.
    for row, kind in ((target, "access"), (source, "refresh")):
        with pytest.raises(DecryptionError):
            open_token(
                keyring,
                key_id=source["encryption_key_id"],
                ciphertext=source["access"],
                credential_id=row["id"],
                provider="google",
                account_sub=row["account_sub"],
                kind=kind,
            )

    with db.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE oauth2_upstream_credentials SET access_token_ciphertext = :c WHERE id = :i"
            ),
            {"c": source["access"], "i": target["id"]},
        )
    client_id, secret = exchange_client(db, [attacker])
    subject = upstream.client_credentials_token(client_id, secret)
    response = exchange(upstream, client_id, secret, subject, attacker)
    assert response.status_code == 500, response.text
    assert response.json()["error"] == "server_error"
    assert "does not decrypt" in response.json()["error_description"]
    assert victim_token not in response.text


@pytest.fixture
def restore_signing_key_encryption(db, tmp_path):
    """A rotated keyring re-encrypts the signing key too; put it back under the session's
    key afterwards so later servers (with only that key) can still start."""
    rotated: list[str] = []
    yield rotated
    if rotated:
        restorer = start_live_server(
            db,
            tmp_path,
            OAUTH2_ENCRYPTION_KEYS=f"{db.keys},{rotated[0]}",
            OAUTH2_ENCRYPTION_PRIMARY_KEY="test-1",
        )
        restorer.stop()
    assert (
        db.scalar("SELECT encryption_key_id FROM oauth2_signing_keys WHERE status = 'current'")
        == "test-1"
    )


def test_keyring_rotation_decrypts_old_rows_and_reencrypts_on_write(
    start_server, db, google, unique, upstream, restore_signing_key_encryption
):
    """A new primary key in OAUTH2_ENCRYPTION_KEYS: rows under the old key still decrypt;
    the next write (a refresh) re-encrypts them under the new key."""
    fresh, near = unique("rotate-fresh"), unique("rotate-near")
    fresh_account = Account("130000000000000000013", "fresh@branch.example")
    connect_branch(upstream, db, google, fresh, account=fresh_account)
    near_account = Account("140000000000000000014", "near@branch.example")
    connect_branch(upstream, db, google, near, expires_in=120, account=near_account)
    assert credential_of(db, fresh)["encryption_key_id"] == "test-1"

    new_key = generate_key_spec("test-2")
    restore_signing_key_encryption.append(new_key)
    rotated = start_server(OAUTH2_ENCRYPTION_KEYS=f"{new_key},{db.keys}", **google.env())
    client_id, secret = exchange_client(db, [fresh, near])
    subject = rotated.client_credentials_token(client_id, secret)

    old_row = exchange(rotated, client_id, secret, subject, fresh)
    assert old_row.status_code == 200, old_row.text
    assert credential_of(db, fresh)["encryption_key_id"] == "test-1"  # read, not written

    refreshed = exchange(rotated, client_id, secret, subject, near)
    assert refreshed.status_code == 200, refreshed.text
    stored = credential_of(db, near)
    assert stored["encryption_key_id"] == "test-2"
    both = f"{new_key},{db.keys}"
    assert decrypt_stored(both, stored, "access") == refreshed.json()["access_token"]
    with pytest.raises(DecryptionError):
        decrypt_stored(db.keys, stored, "refresh")  # the old keyring alone cannot read it


def test_pkce_verifier_is_stored_encrypted_and_bound_to_its_state(upstream, db, google, unique):
    """The callback only works with the verifier sealed for its own state row."""
    branch_id = unique("verifier")
    location = follow_consent(connection_url(upstream, db, branch_id))
    rows = db.rows(
        "SELECT code_verifier_ciphertext, encryption_key_id FROM "
        "oauth2_upstream_states WHERE branch_id = :b",
        b=branch_id,
    )
    assert len(rows) == 1 and rows[0][1] == "test-1"
    assert len(bytes(rows[0][0])) > 86  # nonce + sealed verifier + tag
    assert callback(location).status_code == 200
    assert db.count("oauth2_upstream_states", "branch_id = :b", b=branch_id) == 0


def test_a_verifier_copied_to_another_state_row_is_never_sent(upstream, db, google, unique):
    """The verifier's associated data names its own state row: a ciphertext copied from
    another pending connection does not decrypt, so the callback fails before any code
    exchange and nothing is stored (RFC 7636 §4.5 verifier; SECURITY.md secrets table)."""
    victim, donor = unique("bound"), unique("donor")
    location = follow_consent(connection_url(upstream, db, victim))
    connection_url(upstream, db, donor)  # another pending state with its own verifier
    copied = execute(
        db,
        "UPDATE oauth2_upstream_states SET code_verifier_ciphertext = (SELECT"
        " code_verifier_ciphertext FROM oauth2_upstream_states WHERE branch_id = :d)"
        " WHERE branch_id = :v",
        d=donor,
        v=victim,
    )
    assert copied == 1
    response = callback(location)
    assert response.status_code != 200, response.text
    assert google.code_exchanges == 0  # the foreign verifier never left the server
    assert credential_of(db, victim) is None
