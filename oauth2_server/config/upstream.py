"""The seven settings of each upstream provider (`OAUTH2_UPSTREAM_<NAME>_*`): one
definition of their types and README lines, with each provider's title and defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field

from oauth2_server.config.values import SecretText, UrlOrEmpty

# setting: (type, README line); `{title}` is the provider's title.
_SETTINGS: dict[str, tuple[Any, str]] = {
    "client_id": (str, "This server's OAuth client id at {title}; empty: provider not configured."),
    "client_secret": (SecretText, "This server's OAuth client secret at {title}."),
    "authorization_endpoint": (UrlOrEmpty, "{title} authorization endpoint."),
    "token_endpoint": (UrlOrEmpty, "{title} token endpoint (code exchange and refresh)."),
    "revocation_endpoint": (
        UrlOrEmpty,
        "{title} RFC 7009 revocation endpoint; empty: none (stored tokens are still deleted on "
        "disconnect).",
    ),
    "userinfo_endpoint": (
        UrlOrEmpty,
        "{title} OIDC userinfo endpoint (account `sub` and email when the token response has "
        "no id_token).",
    ),
    "scopes": (str, "Scopes requested when connecting a branch to {title}."),
}


@dataclass(frozen=True)
class Provider:
    """An upstream provider: its name in the settings, its title in the README, and the
    defaults of its endpoints and scopes (the client id and secret default to empty)."""

    name: str
    title: str
    authorization_endpoint: str
    token_endpoint: str
    revocation_endpoint: str
    userinfo_endpoint: str
    scopes: str


GOOGLE = Provider(
    "google",
    "Google",
    authorization_endpoint="https://accounts.google.com/o/oauth2/v2/auth",
    token_endpoint="https://oauth2.googleapis.com/token",  # noqa: S106 (a URL)
    revocation_endpoint="https://oauth2.googleapis.com/revoke",
    userinfo_endpoint="https://openidconnect.googleapis.com/v1/userinfo",
    scopes="openid email https://www.googleapis.com/auth/business.manage",
)
MICROSOFT = Provider(
    "microsoft",
    "Microsoft identity platform v2",
    authorization_endpoint="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
    token_endpoint="https://login.microsoftonline.com/common/oauth2/v2.0/token",  # noqa: S106
    revocation_endpoint="",
    userinfo_endpoint="https://graph.microsoft.com/oidc/userinfo",
    scopes="openid email offline_access https://graph.microsoft.com/User.Read",
)
PROVIDERS = (GOOGLE, MICROSOFT)


def upstream_fields(*providers: Provider) -> dict[str, Any]:
    """`upstream_<name>_<setting>`: (type, pydantic Field) of each provider's seven
    settings, in README order, for `pydantic.create_model`."""
    return {
        f"upstream_{p.name}_{setting}": (
            kind,
            Field(getattr(p, setting, ""), description=doc.format(title=p.title)),
        )
        for p in providers
        for setting, (kind, doc) in _SETTINGS.items()
    }
