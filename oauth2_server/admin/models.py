"""The admin API's request bodies as pydantic models: each field declared once.

A field type below (`ClientName`, `RedirectUris`, `Password`, ...) carries its type,
bounds and description; the bodies are built from them. `admin.bodies` validates every
JSON body with these models, and `admin.openapi` generates /admin/openapi.json's request
schemas from the same models, so the document describes what the server accepts. The
answers are `admin.answers`.

The models are `TypedDict`s validated by pydantic (strict, unknown fields refused), not
`BaseModel`s, because a body is a JSON object whose fields may be left out: a PATCH keeps
every field it does not name, which the registry services read as "key absent"
(`registry.*`), and an explicit `null` is refused. A `TypedDict` gives exactly the fields
given, as the plain dict the services take; `NotRequired` is "may be absent", never
"may be null".

The registry's rules (name uniqueness, redirect URIs, scope characters, minimum password
length, id patterns) stay in `registry/`; where the document states one (an enum, a
minimum length) it cites the registry's constant, so the two cannot drift.
"""

from __future__ import annotations

from typing import Annotated, Any, Required

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from oauth2_server.oauth.resources import MAX_RESOURCE_LENGTH, MAX_RESOURCES
from oauth2_server.registry.clients import AUTH_METHODS, GRANT_TYPES, PERSON_MAX
from oauth2_server.registry.users import MIN_PASSWORD

# Text from outside never holds a C0 control character or DEL (PostgreSQL cannot store
# NUL); a lone surrogate (JSON `\ud800`) is refused before this check (not UTF-8).
NO_CONTROLS = r"^[^\x00-\x1f\x7f]*$"
STRICT = ConfigDict(extra="forbid", strict=True)


def text(description: str | None, max_length: int = 200, **schema: Any) -> Any:
    """A string field: at most `max_length` characters, no control characters."""
    extra = schema or None
    return Field(
        max_length=max_length, pattern=NO_CONTROLS, description=description, json_schema_extra=extra
    )


def texts(description: str, max_length: int, max_items: int = 50, **item: Any) -> Any:
    """A field that is an array of at most `max_items` strings as `text` checks them."""
    return Annotated[
        list[Annotated[str, text(None, max_length, **item)]],
        Field(max_length=max_items, description=description),
    ]


# -- clients (RFC 6749 §2; RFC 7591 metadata names) -----------------------------------

ClientName = Annotated[str, text("display name, unique (case-insensitive)")]
ClientId = Annotated[
    str, text("id to use (A-Z a-z 0-9 . _ ~ -), never a user's subject; random if omitted", 64)
]
GrantTypes = texts(f"grant types: {', '.join(GRANT_TYPES)}", 100, enum=list(GRANT_TYPES))
RedirectUris = texts(
    "exact redirect URIs, no fragment: https; http://127.0.0.1 or http://[::1] (any port at "
    "request time); or a private-use scheme like com.example.app:/cb (RFC 8252 §7)",
    2000,
    max_items=20,
)
Scope = Annotated[str, text("space-separated scopes the client may request", 2000)]
Resources = texts(
    "resource indicators the client may request (RFC 8707 §2): absolute URIs without a "
    "fragment, compared exactly; the access token's `aud`",
    MAX_RESOURCE_LENGTH,
    max_items=MAX_RESOURCES,
)
Branches = texts("branch ids the client may broker upstream tokens for (`*`: all)", 100)
AuthMethod = Annotated[
    str,
    text(f"one of {', '.join(AUTH_METHODS)}; default by `public`", 40, enum=list(AUTH_METHODS)),
]

Person = Annotated[
    str,
    text(
        "the named person this client is registered to, e.g. `Ada Lovelace <ada@example.com>`"
        " (printable text): every audit row its tokens write names them; empty: none",
        PERSON_MAX,
    ),
]


RequirePar = Annotated[
    bool,
    Field(
        description="true: authorization requests only through /oauth2/par (RFC 9126 §6); "
        "default false"
    ),
]
DPoPBound = Annotated[
    bool,
    Field(
        description="true: every token request must carry a DPoP proof, so every access "
        "token is bound to the client's key (RFC 9449 §5.2); default false"
    ),
]
Jwks = Annotated[
    dict[str, Any],
    Field(
        description="private_key_jwt: the client's public JWK Set (RFC 7517 §5): 1-10 EC P-256, "
        "RSA or Ed25519 keys, no private members, no oct keys, at most 16384 characters; "
        "on update, replaces jwks_uri",
        max_length=10,  # members of the JWK Set object (`keys` and any extension members)
    ),
]
JwksUri = Annotated[
    str,
    text(
        "private_key_jwt: https URL of the client's JWK Set (http only on 127.0.0.1 or [::1], "
        "fetched in development only); on update, replaces jwks",
        2000,
    ),
]


@with_config(STRICT)
class ClientCreate(TypedDict, total=False):
    """POST /admin/clients."""

    name: Required[ClientName]
    client_id: ClientId
    grant_types: GrantTypes
    redirect_uris: RedirectUris
    scope: Scope
    public: Annotated[bool, Field(description="a public client (PKCE, no secret); default false")]
    token_endpoint_auth_method: AuthMethod
    branches: Branches
    person: Person
    require_pushed_authorization_requests: RequirePar
    dpop_bound_access_tokens: DPoPBound
    jwks: Jwks
    jwks_uri: JwksUri
    resources: Resources


@with_config(STRICT)
class ClientUpdate(TypedDict, total=False):
    """PATCH /admin/clients/{client_id}: fields left out keep their value."""

    name: ClientName
    grant_types: GrantTypes
    redirect_uris: RedirectUris
    scope: Scope
    active: Annotated[bool, Field(description="false deactivates the client, revokes its tokens")]
    branches: Annotated[Branches, Field(description="replaces the client's list of branches")]
    person: Annotated[
        Person, Field(description="registers the client to this person (empty: to no one)")
    ]
    require_pushed_authorization_requests: RequirePar
    dpop_bound_access_tokens: DPoPBound
    jwks: Jwks
    jwks_uri: JwksUri
    resources: Annotated[Resources, Field(description="replaces the client's resources")]


# -- users ---------------------------------------------------------------------------

Username = Annotated[str, text("login name, unique (case-insensitive)")]
Password = Annotated[str, text(f"at least {MIN_PASSWORD} characters", 1000, minLength=MIN_PASSWORD)]
UserActive = Annotated[bool, Field(description="false deactivates the user, revokes their tokens")]


@with_config(STRICT)
class UserCreate(TypedDict, total=False):
    """POST /admin/users."""

    username: Required[Username]
    password: Required[Password]
    active: Annotated[bool, Field(description="default true")]
    subject: Annotated[
        str,
        text(
            "token `sub` to keep (A-Z a-z 0-9 . _ ~ -), never a client_id; a new UUID if omitted",
            64,
        ),
    ]


@with_config(STRICT)
class UserUpdate(TypedDict, total=False):
    """PATCH /admin/users/{subject}: fields left out keep their value."""

    username: Username
    active: UserActive


@with_config(STRICT)
class PasswordSet(TypedDict, total=False):
    """PUT /admin/users/{subject}/password."""

    password: Required[Password]
    revoke_tokens: Annotated[bool, Field(description="also revoke every token of the user")]


# -- branches (DESIGN.md "Upstream brokering") ---------------------------------------

BranchName = Annotated[str, text("display name")]
ContactEmail = Annotated[str, text("contact email address", 320)]
GoogleAccountId = Annotated[str, text("Google Business Profile account id", 100)]
GoogleLocationId = Annotated[str, text("Google Business Profile location id", 100)]
Provider = Annotated[str, text("upstream provider, e.g. google", 40)]


@with_config(STRICT)
class BranchCreate(TypedDict, total=False):
    """POST /admin/branches."""

    branch_id: Required[Annotated[str, text("external id: letters, digits, ._:- (1–100)", 100)]]
    name: Required[BranchName]
    contact_email: ContactEmail
    google_account_id: GoogleAccountId
    google_location_id: GoogleLocationId


@with_config(STRICT)
class BranchUpdate(TypedDict, total=False):
    """PATCH /admin/branches/{branch_id}: fields left out keep their value; an empty
    optional text clears it."""

    name: BranchName
    contact_email: ContactEmail
    google_account_id: GoogleAccountId
    google_location_id: GoogleLocationId
    active: Annotated[bool, Field(description="false: token exchange refuses the branch")]


@with_config(STRICT)
class Connect(TypedDict):
    """POST /admin/branches/{branch_id}/connect."""

    provider: Provider


@with_config(STRICT)
class Disconnect(TypedDict, total=False):
    """POST /admin/branches/{branch_id}/disconnect."""

    provider: Required[Provider]
    force: Annotated[
        bool, Field(description="delete the stored tokens even if the provider cannot revoke them")
    ]


# -- tokens --------------------------------------------------------------------------

TokenId = Annotated[str, text("one access token, by its `jti` claim", 64)]


@with_config(STRICT)
class Revoke(TypedDict, total=False):
    """POST /admin/tokens/revoke: exactly one field."""

    jti: TokenId
    family_id: Annotated[str, text("one grant: every refresh and access token of the family", 64)]
    client_id: Annotated[str, text("every token issued to this client", 64)]
    user: Annotated[str, text("every token of this user (subject)", 64)]
    branch_id: Annotated[str, text("every token of the clients granted this branch", 100)]
