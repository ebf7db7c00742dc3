"""AES-256-GCM encryption at rest under a keyring of named keys (DESIGN.md "Tokens and secrets").

A ciphertext is `nonce (12 bytes) || AES-GCM(ciphertext || tag)` and is stored beside the
id of the key that made it. The associated data binds a ciphertext to its row (e.g.
`b"oauth2_signing_keys:<kid>"`), so a ciphertext copied to another row fails to decrypt.
Keys rotate by adding a new primary: old rows still decrypt under their key id, and are
re-encrypted under the primary when next written.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from oauth2_server.config import ConfigError, Settings

log = logging.getLogger(__name__)

NONCE_BYTES = 12


class DecryptionError(Exception):
    """The ciphertext is not valid for this key id and associated data (or the key is gone)."""


@dataclass(frozen=True)
class Keyring:
    """Named 256-bit keys; `primary` encrypts new data, every key decrypts its own."""

    keys: dict[str, bytes] = field(repr=False)
    primary: str

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> tuple[str, bytes]:
        """Encrypt under the primary key. Returns (key_id, nonce || ciphertext || tag)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keys[self.primary]).encrypt(nonce, plaintext, associated_data)
        return self.primary, nonce + sealed

    def decrypt(self, key_id: str, blob: bytes, associated_data: bytes) -> bytes:
        """Decrypt a blob made by `encrypt`; raise DecryptionError if it does not verify."""
        key = self.keys.get(key_id)
        if key is None:
            raise DecryptionError(f"encryption key {key_id!r} is not in the keyring")
        try:
            return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)
        except InvalidTag:
            raise DecryptionError("ciphertext does not verify for this row") from None

    def derive(self, purpose: bytes, length: int = 32) -> bytes:
        """A subkey of the primary key for one purpose (HKDF-SHA256), e.g. cookie signing."""
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose).derive(
            self.keys[self.primary]
        )


def _decode_key(kid: str, text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise ConfigError(f"OAUTH2_ENCRYPTION_KEYS: key {kid!r} is not base64url") from None
    if len(raw) != 32:
        raise ConfigError(f"OAUTH2_ENCRYPTION_KEYS: key {kid!r} must be 32 bytes (AES-256)")
    return raw


def parse_keyring(spec: str, primary: str = "") -> Keyring:
    """Parse `kid:base64url[,kid:base64url…]`; raise ConfigError naming the variable."""
    keys: dict[str, bytes] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kid, sep, text = item.partition(":")
        if not sep or not kid:
            raise ConfigError("OAUTH2_ENCRYPTION_KEYS entries must look like kid:base64url")
        if kid in keys:
            raise ConfigError(f"OAUTH2_ENCRYPTION_KEYS: key id {kid!r} appears twice")
        keys[kid] = _decode_key(kid, text)
    if not keys:
        raise ConfigError("OAUTH2_ENCRYPTION_KEYS is empty")
    primary = primary or next(iter(keys))
    if primary not in keys:
        raise ConfigError(f"OAUTH2_ENCRYPTION_PRIMARY_KEY={primary!r} is not in the keyring")
    return Keyring(keys=keys, primary=primary)


def generate_key_spec(kid: str) -> str:
    """A new `kid:base64url` entry for OAUTH2_ENCRYPTION_KEYS."""
    return f"{kid}:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip('=')}"


def load_keyring(settings: Settings) -> Keyring:
    """The configured keyring; in development with none configured, one kept in a local file.

    Raises ConfigError in production without OAUTH2_ENCRYPTION_KEYS (Settings.validate
    already refuses that configuration).
    """
    if settings.encryption_keys:
        return parse_keyring(settings.encryption_keys, settings.encryption_primary_key)
    if settings.production:
        raise ConfigError("OAUTH2_ENCRYPTION_KEYS is required when OAUTH2_ENV=production")
    path = Path(settings.dev_key_file)
    if not path.exists():
        spec = generate_key_spec("dev-1")
        path.write_text(json.dumps({"OAUTH2_ENCRYPTION_KEYS": spec}))
        path.chmod(0o600)
        log.warning(
            "no OAUTH2_ENCRYPTION_KEYS configured: generated a development keyring in %s; "
            "configure real keys for production",
            path,
        )
    spec = json.loads(path.read_text())["OAUTH2_ENCRYPTION_KEYS"]
    return parse_keyring(spec)
