"""Signing-key rows (`oauth2_signing_keys`); private keys arrive here already encrypted."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import SigningKey
from oauth2_server.storage import utcnow


@dataclass(frozen=True)
class SigningKeyRow:
    """A stored signing key: public JWK in clear, private key as keyring ciphertext."""

    kid: str
    alg: str
    status: str
    public_jwk: dict[str, Any]
    private_key_ciphertext: bytes
    encryption_key_id: str
    created_at: datetime


def published_keys(session: Session) -> list[SigningKeyRow]:
    """Current and previous keys, newest first (what JWKS publishes)."""
    rows = session.execute(
        select(
            SigningKey.kid,
            SigningKey.alg,
            SigningKey.status,
            SigningKey.public_jwk,
            SigningKey.private_key_ciphertext,
            SigningKey.encryption_key_id,
            SigningKey.created_at,
        )
        .where(SigningKey.status.in_(("current", "previous")))
        .order_by(SigningKey.created_at.desc())
    ).all()
    return [SigningKeyRow(*row) for row in rows]


def add_current_key(
    session: Session,
    *,
    kid: str,
    alg: str,
    public_jwk: dict[str, Any],
    private_key_ciphertext: bytes,
    encryption_key_id: str,
) -> None:
    """Make a new key current: current → previous, previous → retired, in one transaction."""
    session.execute(
        update(SigningKey).where(SigningKey.status == "previous").values(status="retired")
    )
    session.execute(
        update(SigningKey).where(SigningKey.status == "current").values(status="previous")
    )
    session.execute(
        insert(SigningKey).values(
            kid=kid,
            alg=alg,
            status="current",
            public_jwk=public_jwk,
            private_key_ciphertext=private_key_ciphertext,
            encryption_key_id=encryption_key_id,
            created_at=utcnow(),
        )
    )


def reencrypt_key(session: Session, kid: str, encryption_key_id: str, ciphertext: bytes) -> None:
    """Store a key's private half re-encrypted under the keyring's primary key."""
    session.execute(
        update(SigningKey)
        .where(SigningKey.kid == kid)
        .values(private_key_ciphertext=ciphertext, encryption_key_id=encryption_key_id)
    )


def all_public_jwks(session: Session) -> dict[str, dict[str, Any]]:
    """Every signing key's public JWK by kid, retired keys included: what verifies a
    statement signed long ago (audit checkpoints, retention records, export manifests)."""
    rows = session.execute(select(SigningKey.kid, SigningKey.public_jwk)).all()
    return {kid: jwk for kid, jwk in rows}
