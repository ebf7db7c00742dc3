"""AES-256-GCM encryption at rest under a keyring of named keys (DESIGN.md "Tokens and secrets").

A ciphertext is `nonce (12 bytes) || AES-GCM(ciphertext || tag)` and is stored beside the
id of the key that made it. The associated data binds a ciphertext to its row (e.g.
`b"oauth2_signing_keys:<kid>"`), so a ciphertext copied to another row fails to decrypt.
Keys rotate by adding a new primary: old rows still decrypt under their key id, and are
re-encrypted under the primary when next written.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from oauth2_server.config import ConfigError, Settings, ensure_data_dir

log = logging.getLogger(__name__)

NONCE_BYTES = 12
KEY_CHARS = 43  # base64url characters of a 32-byte key, unpadded
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


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

    def derive(self, purpose: bytes, length: int = 32, kid: str | None = None) -> bytes:
        """A subkey of the primary key (or of key `kid`) for one purpose (HKDF-SHA256), e.g.
        cookie signing. KeyError for an unknown `kid`."""
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose).derive(
            self.keys[self.primary if kid is None else kid]
        )


def _decode_key(kid: str, text: str) -> bytes:
    """32 key bytes from base64url text. A character outside A-Z a-z 0-9 - _ is "not
    base64url"; any other length than 32 bytes (43 characters) is "must be 32 bytes"."""
    if not _BASE64URL.fullmatch(text):
        raise ConfigError(
            f"OAUTH2_ENCRYPTION_KEYS: key {kid[:40]!r} is not base64url (A-Z a-z 0-9 - _); "
            "`oauth2-server keys generate-encryption-key` prints a valid entry"
        )
    unpadded = text.rstrip("=")
    raw = b""
    if len(unpadded) % 4 != 1:
        try:
            raw = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
        except binascii.Error:
            raw = b""
    if len(raw) != 32:
        raise ConfigError(
            f"OAUTH2_ENCRYPTION_KEYS: key {kid[:40]!r} must be 32 bytes (AES-256, "
            f"{KEY_CHARS} base64url characters), got {len(unpadded)} characters"
        )
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


def keyring_source(settings: Settings) -> str:
    """Where the keyring comes from, for messages: the variable, or the development file."""
    if settings.encryption_keys or settings.production:
        return "OAUTH2_ENCRYPTION_KEYS"
    return f"the development keyring {settings.dev_key_file} (OAUTH2_DEV_KEY_FILE)"


def load_keyring(settings: Settings) -> Keyring:
    """The configured keyring; in development with none configured, one kept in a local file
    (OAUTH2_DEV_KEY_FILE, by default in OAUTH2_DATA_DIR, which is created 0700; the file
    is written 0600).

    Raises ConfigError in production without OAUTH2_ENCRYPTION_KEYS (Settings.validate
    already refuses that configuration), and naming OAUTH2_DEV_KEY_FILE when that file
    cannot be read, written or parsed.
    """
    if settings.encryption_keys:
        return parse_keyring(settings.encryption_keys, settings.encryption_primary_key)
    if settings.production:
        raise ConfigError("OAUTH2_ENCRYPTION_KEYS is required when OAUTH2_ENV=production")
    path = Path(settings.dev_key_file)
    shown = str(path)[:200]
    try:
        if not path.exists():
            if path.parent == Path(settings.data_dir):
                ensure_data_dir(settings.data_dir)
            spec = generate_key_spec("dev-1")
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(json.dumps({"OAUTH2_ENCRYPTION_KEYS": spec}))
            log.warning(
                "no OAUTH2_ENCRYPTION_KEYS configured: generated a development keyring in %s; "
                "configure real keys for production",
                path,
            )
        spec = json.loads(path.read_text())["OAUTH2_ENCRYPTION_KEYS"]
    except OSError as exc:
        raise ConfigError(
            f"OAUTH2_DEV_KEY_FILE={shown!r} cannot be read or written ({exc.strerror}): "
            "choose a writable path, or configure OAUTH2_ENCRYPTION_KEYS"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"OAUTH2_DEV_KEY_FILE={shown!r} is not a keyring file written by this server: "
            "restore the original, or configure OAUTH2_ENCRYPTION_KEYS"
        ) from None
    if not isinstance(spec, str):
        raise ConfigError(f"OAUTH2_DEV_KEY_FILE={shown!r} is not a keyring file")
    return parse_keyring(spec)
