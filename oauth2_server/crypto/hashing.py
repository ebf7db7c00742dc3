"""Hashing of secrets and tokens (DESIGN.md "Tokens and secrets").

- Client secrets and user passwords: argon2id (argon2-cffi, library defaults).
- Refresh tokens and authorization codes: SHA-256 hex; they are 256-bit random values, so
  a fast hash is enough and lets storage look them up by digest.
"""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()  # argon2id, library defaults


def hash_secret(secret: str) -> str:
    """argon2id hash (PHC string) of a client secret or a password."""
    return _hasher.hash(secret)


def verify_secret(secret_hash: str, secret: str) -> bool:
    """Constant-time argon2id verification; False on mismatch or a malformed hash.

    Costs ~100 ms of CPU: call it off the event loop (`SecretVerifier` does).
    """
    try:
        return _hasher.verify(secret_hash, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def token_digest(token: str) -> str:
    """SHA-256 hex digest of an opaque token or code: what storage keeps and looks up."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_opaque_token() -> str:
    """256 bits from `secrets`, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)
