"""ES256 signing keys: generation, encryption at rest, rotation, JWKS (RFC 7517).

`KeyStore` holds the decrypted current private key and the public keys of the current
and previous keys, reloaded from the database by `load()`; `rotate()` makes a new
current key while the previous one stays in JWKS, so tokens it signed still verify.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy.orm import Session

from oauth2_server.audit.log import AuditEvent, record
from oauth2_server.crypto.keyring import Keyring
from oauth2_server.storage import keys as key_storage

ALG = "ES256"


def _aad(kid: str) -> bytes:
    return f"oauth2_signing_keys:{kid}".encode()


@dataclass(frozen=True)
class SigningKeyPair:
    """A decrypted key: `private_key` signs, `public_jwk` is what JWKS shows."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey
    public_jwk: dict[str, Any]


class KeyStore:
    """Signing and verification keys of this issuer, loaded from `oauth2_signing_keys`."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self.current: SigningKeyPair | None = None
        self.public_keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self.jwks: dict[str, Any] = {"keys": []}

    def _generate(self, session: Session, **details: Any) -> None:
        """A new current key, stored encrypted and audited (`signing_key_created`: its
        `kid`, `alg` and `details`, in the same transaction; never key material)."""
        private_key = ec.generate_private_key(ec.SECP256R1())
        kid = f"{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"
        public_jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        public_jwk.update({"kid": kid, "alg": ALG, "use": "sig"})
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key_id, blob = self.keyring.encrypt(pem, _aad(kid))
        key_storage.add_current_key(
            session,
            kid=kid,
            alg=ALG,
            public_jwk=public_jwk,
            private_key_ciphertext=blob,
            encryption_key_id=key_id,
        )
        record(
            session, AuditEvent("signing_key_created", details={"kid": kid, "alg": ALG, **details})
        )

    def ensure(self, session: Session) -> None:
        """Generate the first key if the database has none, then load."""
        if not key_storage.published_keys(session):
            self._generate(session, reason="first key")
        self.load(session)

    def rotate(self, session: Session, **details: Any) -> str:
        """Make a new current key; the old current stays published as previous. Returns kid.
        `details` (who rotated it) go in the `signing_key_created` row."""
        self._generate(session, reason="rotation", **details)
        self.load(session)
        assert self.current is not None
        return self.current.kid

    def load(self, session: Session) -> None:
        """Reload keys from the database; re-encrypt private keys under the primary key.

        Raises DecryptionError if a stored private key does not verify under the keyring.
        """
        rows = key_storage.published_keys(session)
        public: dict[str, ec.EllipticCurvePublicKey] = {}
        current: SigningKeyPair | None = None
        for row in rows:
            key = ECAlgorithm.from_jwk(row.public_jwk)
            assert isinstance(key, ec.EllipticCurvePublicKey)
            public[row.kid] = key
            if row.status == "current" and current is None:
                pem = self.keyring.decrypt(
                    row.encryption_key_id, row.private_key_ciphertext, _aad(row.kid)
                )
                private_key = serialization.load_pem_private_key(pem, password=None)
                assert isinstance(private_key, ec.EllipticCurvePrivateKey)
                current = SigningKeyPair(row.kid, private_key, row.public_jwk)
                if row.encryption_key_id != self.keyring.primary:
                    key_id, blob = self.keyring.encrypt(pem, _aad(row.kid))
                    key_storage.reencrypt_key(session, row.kid, key_id, blob)
        self.public_keys = public
        self.current = current
        self.jwks = {"keys": [row.public_jwk for row in rows]}
