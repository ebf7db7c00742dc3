"""DESIGN invariant 1: no secret or token is stored in clear; signing keys are encrypted."""

from __future__ import annotations

import hashlib

from tests.flows import REDIRECT_URI, authorize_with_pkce, exchange_code

PASSWORD = "correct horse battery staple"


def test_no_secret_or_token_is_stored_in_clear(server, db, unique):
    client_id, client_secret = db.create_client(
        grant_types=["authorization_code", "refresh_token", "client_credentials"],
        redirect_uris=[REDIRECT_URI],
        scope="read",
    )
    user = db.create_user(unique("grace"), PASSWORD)
    result = authorize_with_pkce(server.base_url, client_id, user.username, PASSWORD)
    code = result.params["code"]
    token = exchange_code(server.base_url, result, client_secret=client_secret)
    refreshed = server.post(
        "/oauth2/token",
        auth=(client_id, client_secret),
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
    ).json()
    service_token = server.client_credentials_token(client_id, client_secret)

    blob = db.dump()
    secrets_in_play = {
        "client secret": client_secret,
        "password": PASSWORD,
        "authorization code": code,
        "access token": token["access_token"],
        "refresh token": token["refresh_token"],
        "rotated refresh token": refreshed["refresh_token"],
        "service access token": service_token,
        "access token signature": service_token.rsplit(".", 1)[1],
    }
    for name, value in secrets_in_play.items():
        assert value not in blob, f"{name} is stored in clear"
    # What is stored instead: SHA-256 of the 256-bit client secret, argon2id of the
    # password, SHA-256 digests of tokens.
    assert (
        db.scalar("SELECT secret_hash FROM oauth2_clients WHERE client_id = :c", c=client_id)
        == "sha256$" + hashlib.sha256(client_secret.encode()).hexdigest()
    )
    assert db.scalar(
        "SELECT password_hash FROM oauth2_users WHERE username = :u", u=user.username
    ).startswith("$argon2id$")
    digest = hashlib.sha256(token["refresh_token"].encode()).hexdigest()
    assert db.count("oauth2_refresh_tokens", "token_hash = :h", h=digest) == 1


def test_signing_private_key_is_encrypted_and_bound_to_its_row(server, db):
    from oauth2_server.crypto.keyring import DecryptionError, parse_keyring

    rows = db.rows(
        "SELECT kid, private_key_ciphertext, encryption_key_id "
        "FROM oauth2_signing_keys WHERE status = 'current'"
    )
    assert rows
    kid, blob, key_id = rows[0]
    blob = bytes(blob)
    assert b"PRIVATE KEY" not in blob
    keyring = parse_keyring(db.keys)
    assert b"PRIVATE KEY" in keyring.decrypt(key_id, blob, f"oauth2_signing_keys:{kid}".encode())
    # The associated data binds it to its row: under another kid it does not decrypt.
    try:
        keyring.decrypt(key_id, blob, b"oauth2_signing_keys:another-kid")
    except DecryptionError:
        pass
    else:
        raise AssertionError("ciphertext decrypted under another row's associated data")


def test_secrets_do_not_appear_in_server_logs(server, db):
    client_id, secret = db.create_client()
    token = server.client_credentials_token(client_id, secret)
    server.post(
        "/oauth2/token",
        auth=(client_id, "wrong-secret-value"),
        data={"grant_type": "client_credentials"},
    )
    log = server.log()
    assert secret not in log and token not in log and "wrong-secret-value" not in log
