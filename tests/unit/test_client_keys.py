"""Rules of `private_key_jwt` keys that need no live server: what a JWK Set may hold
(`registry.client_keys`), and a `jwks_uri` fetch in production (`oauth.client_keys`), with
a real httpx transport stand-in that must never be reached."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from oauth2_server.oauth.client_keys import ClientKeySets, KeySetUnavailable
from oauth2_server.registry.client_keys import MAX_KEYS, check_jwks, check_jwks_uri
from oauth2_server.registry.errors import FieldInvalid
from oauth2_server.storage.clients import ClientRecord


def ec_jwk(kid: str = "a") -> dict:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return {**ECAlgorithm.to_jwk(key, as_dict=True), "kid": kid}


def test_a_short_rsa_key_is_refused():
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505
    with pytest.raises(FieldInvalid, match="2048"):
        check_jwks({"keys": [RSAAlgorithm.to_jwk(key, as_dict=True)]})


def test_other_curves_and_too_many_keys_are_refused():
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(FieldInvalid):
        check_jwks({"keys": [ECAlgorithm.to_jwk(p384, as_dict=True)]})
    with pytest.raises(FieldInvalid, match="1 to"):
        check_jwks({"keys": [ec_jwk(str(i)) for i in range(MAX_KEYS + 1)]})
    with pytest.raises(FieldInvalid, match="kid"):
        check_jwks({"keys": [ec_jwk("same"), ec_jwk("same")]})
    with pytest.raises(FieldInvalid, match="alg"):
        check_jwks({"keys": [{**ec_jwk(), "alg": "HS256"}]})


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:8080/jwks",
        "http://[::1]/jwks",
        "https://keys.example/jwks.json",
    ],
)
def test_accepted_jwks_uris(uri):
    assert check_jwks_uri(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "http://localhost/jwks",
        "http://10.0.0.1/jwks",
        "https://user@keys.example/jwks",
        "https://keys.example:99999/jwks",
        "/jwks",
        "https://" + "k" * 2000 + ".example/",
    ],
)
def test_refused_jwks_uris(uri):
    with pytest.raises(FieldInvalid):
        check_jwks_uri(uri)


def test_production_never_fetches_an_http_jwks_uri():
    """Registered on loopback for development; in production the fetch is refused before
    any connection (the transport records every request it would have sent)."""
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200))
    sets = ClientKeySets(production=True, ttl=300, transport=transport)
    now = datetime.now(UTC)
    record = ClientRecord(
        "c", "c", None, "private_key_jwt", ("client_credentials",), (), "", True, now,
        jwks_uri="http://127.0.0.1:9/jwks",
    )  # fmt: skip
    with pytest.raises(KeySetUnavailable, match="https"):
        asyncio.run(sets.keys(record, None))
    assert sent == [] and sets.fetches == 0
