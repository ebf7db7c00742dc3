"""`upstream.client.UpstreamClient`: a provider that cannot be reached is
UpstreamUnavailable naming the provider (or its userinfo endpoint), never a raw httpx
error (the caller answers 502/503 `temporarily_unavailable` with it). Real httpx, with a
transport that fails the way the network does."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from oauth2_server.upstream.client import UpstreamClient, UpstreamUnavailable
from oauth2_server.upstream.providers import SPECS, Provider

GOOGLE = Provider(
    spec=SPECS["google"],
    client_id="client",
    client_secret="secret",  # noqa: S106
    authorization_endpoint="https://accounts.example/authorize",
    token_endpoint="https://oauth2.example/token",
    revocation_endpoint="https://oauth2.example/revoke",
    userinfo_endpoint="https://openidconnect.example/userinfo",
    scopes=("openid",),
)


def failing(error: type[httpx.TransportError]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error("simulated", request=request)

    return httpx.MockTransport(handler)


async def call(error: type[httpx.TransportError], which: str) -> str:
    client = UpstreamClient(5.0, failing(error))
    try:
        if which == "userinfo":
            await client.userinfo(GOOGLE, "access")
        else:
            await client.refresh(GOOGLE, "refresh")
    except UpstreamUnavailable as exc:
        return str(exc)
    finally:
        await client.aclose()
    raise AssertionError("no UpstreamUnavailable")


@pytest.mark.parametrize(
    ("error", "which", "message"),
    [
        (httpx.ConnectTimeout, "token", "google did not answer in time"),
        (httpx.ConnectError, "token", "google could not be reached (ConnectError)"),
        (httpx.ReadTimeout, "userinfo", "google userinfo did not answer in time"),
        (httpx.ConnectError, "userinfo", "google userinfo could not be reached (ConnectError)"),
    ],
)
def test_unreachable_provider_is_unavailable_naming_the_endpoint(error, which, message):
    assert asyncio.run(call(error, which)) == message
