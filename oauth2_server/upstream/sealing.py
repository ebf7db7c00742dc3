"""Encryption of stored upstream secrets under the keyring (DESIGN.md "Tokens and secrets").

AES-256-GCM through `crypto.keyring.Keyring`; the key id is stored beside the ciphertext.
The associated data binds each ciphertext to where it belongs, so a ciphertext copied
elsewhere fails to decrypt:

- a token: (`oauth2_upstream_credentials`, row id, provider, account `sub`, kind), kind
  being `access` or `refresh` (swapping the two columns fails too);
- a PKCE verifier: (`oauth2_upstream_states`, state digest).

Writes always encrypt under the keyring's primary key, so after a key rotation a row is
re-encrypted when next written (refresh, reconnect).
"""

from __future__ import annotations

import json

from oauth2_server.crypto.keyring import Keyring
from oauth2_server.storage.upstream import SealedTokens

ACCESS = "access"
REFRESH = "refresh"


def token_associated_data(credential_id: str, provider: str, account_sub: str, kind: str) -> bytes:
    """AAD of an upstream token: JSON of (table, row id, provider, account, kind)."""
    return json.dumps(
        ["oauth2_upstream_credentials", credential_id, provider, account_sub, kind],
        separators=(",", ":"),
    ).encode()


def seal_tokens(
    keyring: Keyring,
    *,
    credential_id: str,
    provider: str,
    account_sub: str,
    access_token: str,
    refresh_token: str,
) -> SealedTokens:
    """Encrypt a grant's access and refresh tokens under the primary key."""
    key_id, access = keyring.encrypt(
        access_token.encode(), token_associated_data(credential_id, provider, account_sub, ACCESS)
    )
    refresh_key_id, refresh = keyring.encrypt(
        refresh_token.encode(),
        token_associated_data(credential_id, provider, account_sub, REFRESH),
    )
    assert key_id == refresh_key_id
    return SealedTokens(key_id, access, refresh)


def open_token(
    keyring: Keyring,
    *,
    key_id: str,
    ciphertext: bytes,
    credential_id: str,
    provider: str,
    account_sub: str,
    kind: str,
) -> str:
    """Decrypt one stored token. Raises crypto.keyring.DecryptionError if the ciphertext
    does not belong to this row, provider, account and kind, or its key is gone."""
    return keyring.decrypt(
        key_id,
        bytes(ciphertext),
        token_associated_data(credential_id, provider, account_sub, kind),
    ).decode()


def _verifier_associated_data(state_hash: str) -> bytes:
    return json.dumps(["oauth2_upstream_states", state_hash], separators=(",", ":")).encode()


def seal_verifier(keyring: Keyring, state_hash: str, code_verifier: str) -> tuple[str, bytes]:
    """Encrypt a PKCE verifier for its state row. Returns (key id, ciphertext)."""
    return keyring.encrypt(code_verifier.encode(), _verifier_associated_data(state_hash))


def open_verifier(keyring: Keyring, state_hash: str, key_id: str, ciphertext: bytes) -> str:
    """Decrypt a PKCE verifier; DecryptionError if it is not this state's."""
    return keyring.decrypt(
        key_id, bytes(ciphertext), _verifier_associated_data(state_hash)
    ).decode()
