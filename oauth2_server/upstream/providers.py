"""Upstream OAuth providers: what each is, and its configuration (DESIGN.md "Upstream
brokering").

A `ProviderSpec` is what we know about a provider regardless of deployment: which extra
authorization parameters get an offline (refresh-token) grant, which scopes a useful grant
must hold, whether refresh tokens rotate. A `Provider` adds this server's registration
there, from `OAUTH2_UPSTREAM_<NAME>_*` settings, so tests and staging point the endpoints
at a fake.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oauth2_server.config import Settings

BUSINESS_MANAGE = "https://www.googleapis.com/auth/business.manage"


@dataclass(frozen=True)
class ProviderSpec:
    """Facts about one provider.

    `authorization_params`: extra parameters of the authorization request (Google needs
    `access_type=offline` for a refresh token and `prompt=consent` to be sure to get one;
    Microsoft gets it from the `offline_access` scope). `required_scopes`: a grant without
    them is refused at connection time. `rotates_refresh_tokens`: every refresh returns a
    new refresh token (Microsoft); Google usually returns none.
    """

    name: str
    title: str
    authorization_params: tuple[tuple[str, str], ...]
    required_scopes: frozenset[str]
    rotates_refresh_tokens: bool


SPECS: dict[str, ProviderSpec] = {
    "google": ProviderSpec(
        name="google",
        title="Google",
        authorization_params=(("access_type", "offline"), ("prompt", "consent")),
        required_scopes=frozenset({BUSINESS_MANAGE}),
        rotates_refresh_tokens=False,
    ),
    "microsoft": ProviderSpec(
        name="microsoft",
        title="Microsoft identity platform",
        authorization_params=(("prompt", "consent"),),
        required_scopes=frozenset(),
        rotates_refresh_tokens=True,
    ),
}


class UnknownProvider(LookupError):
    """No provider has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown upstream provider {name!r}; known providers: {', '.join(sorted(SPECS))}"
        )
        self.name = name


class ProviderNotConfigured(RuntimeError):
    """A known provider lacks settings; the message names the missing variables."""

    def __init__(self, name: str, missing: list[str], reason: str = "") -> None:
        detail = reason or f"set {', '.join(missing)}"
        super().__init__(f"upstream provider {name!r} is not configured: {detail}")
        self.name = name
        self.missing = missing


@dataclass(frozen=True)
class Provider:
    """A configured provider: spec plus this server's client registration and endpoints.

    `revocation_endpoint` and `userinfo_endpoint` are None when not configured.
    `scopes` are those requested when connecting a branch.
    """

    spec: ProviderSpec
    client_id: str
    client_secret: str = field(repr=False)
    authorization_endpoint: str
    token_endpoint: str
    revocation_endpoint: str | None
    userinfo_endpoint: str | None
    scopes: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.spec.name


def provider_names() -> tuple[str, ...]:
    """Names a token exchange `audience` may take."""
    return tuple(SPECS)


def env_name(provider: str, setting: str) -> str:
    """The environment variable of one provider setting, e.g. OAUTH2_UPSTREAM_GOOGLE_SCOPES."""
    return f"OAUTH2_UPSTREAM_{provider.upper()}_{setting.upper()}"


def load_provider(settings: Settings, name: str) -> Provider:
    """The configured provider `name`.

    Raises UnknownProvider, or ProviderNotConfigured naming each missing variable
    (client id, secret, authorization and token endpoints) or the scopes setting when it
    lacks a scope the provider requires.
    """
    spec = SPECS.get(name)
    if spec is None:
        raise UnknownProvider(name)

    def value(setting: str) -> str:
        return str(getattr(settings, f"upstream_{name}_{setting}")).strip()

    required = ("client_id", "client_secret", "authorization_endpoint", "token_endpoint")
    missing = [env_name(name, s) for s in required if not value(s)]
    if missing:
        raise ProviderNotConfigured(name, missing)
    scopes = tuple(dict.fromkeys(value("scopes").split()))
    lacking = spec.required_scopes - set(scopes)
    if lacking:
        variable = env_name(name, "scopes")
        raise ProviderNotConfigured(
            name, [variable], f"{variable} must include {' '.join(sorted(lacking))}"
        )
    return Provider(
        spec=spec,
        client_id=value("client_id"),
        client_secret=value("client_secret"),
        authorization_endpoint=value("authorization_endpoint"),
        token_endpoint=value("token_endpoint"),
        revocation_endpoint=value("revocation_endpoint") or None,
        userinfo_endpoint=value("userinfo_endpoint") or None,
        scopes=scopes,
    )
