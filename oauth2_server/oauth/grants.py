"""Grant types: Authlib's grants with this server's contract (DESIGN.md invariants 2–5).

Each hook uses the bridge's session (`session_of`) or the request's `IssueWriter`
(`writer_of`), and storage functions named for what they do. Detected attacks set
`token_context.keep_changes_on_error`, so their revocations and audit rows commit although
the request fails. Lifetimes come from configuration through Authlib grant extensions
(`CodeLifetime`, `ReuseGrace`), per server: nothing is set on a class.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc7636 import CodeChallenge
from sqlalchemy.orm import Session

from oauth2_server import metrics
from oauth2_server.audit.log import AuditEvent, revoked_token
from oauth2_server.audit.risk import second_use
from oauth2_server.crypto.hashing import token_digest
from oauth2_server.oauth.bridge import OAuthRequest, session_of, writer_of
from oauth2_server.oauth.resources import (
    InvalidTargetError,
    checked,
    granted_subset,
    registered_resources,
)
from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.outbox import enqueue_event
from oauth2_server.storage.protocols import RefreshRotation, SessionWriter
from oauth2_server.storage.tokens import (
    CodeRecord,
    RefreshTokenRecord,
    RevokedToken,
    opaque_token_id,
)
from oauth2_server.storage.users import UserRecord, get_user

CONFIDENTIAL_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
ALL_METHODS = [*CONFIDENTIAL_METHODS, "none"]


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 only, required for every client (RFC 7636; RFC 9700 §2.1.1).

    Authlib's default accepts `plain` and an omitted method; here an authorization request
    without `code_challenge`, or with a method other than `S256`, is `invalid_request`.
    """

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge' (RFC 7636 4.3)")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256; plain is refused")
        super().validate_code_challenge(grant, redirect_uri)


@dataclass(frozen=True)
class CodeView(AuthorizationCodeMixin):
    """Authlib's view of a consumed authorization code."""

    record: CodeRecord

    @property
    def code_challenge(self) -> str:
        return self.record.code_challenge

    @property
    def code_challenge_method(self) -> str:
        return self.record.code_challenge_method

    def get_redirect_uri(self) -> str | None:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return self.record.scope


@dataclass(frozen=True)
class RefreshView(TokenMixin):
    """Authlib's view of a refresh token that this request has just used: rotated it, or
    (`grace` True) used again within `OAUTH2_REFRESH_REUSE_GRACE`, superseding the
    family's current token. Either way the new refresh token is its child."""

    record: RefreshTokenRecord
    grace: bool = False

    def check_client(self, client: Any) -> bool:
        return self.record.client_id == client.client_id

    def get_scope(self) -> str:
        return self.record.scope


def _active_user(db: Session, user_id: int) -> UserRecord | None:
    user = get_user(db, user_id)
    return user if user is not None and user.active else None


@dataclass(frozen=True)
class CodeLifetime:
    """Authlib grant extension: this server's authorization codes live `seconds`
    (`OAUTH2_AUTHORIZATION_CODE_TTL`; RFC 6749 §4.1.2, at most 60 here). Set on each
    grant instance, so two servers in one process keep their own lifetime."""

    seconds: int

    def __call__(self, grant: AuthorizationCodeGrant) -> None:
        grant.code_ttl = self.seconds


@dataclass(frozen=True)
class ReuseGrace:
    """Authlib grant extension: this server's refresh reuse grace in seconds
    (`OAUTH2_REFRESH_REUSE_GRACE`; RFC 9700 §4.14.2), set on each grant instance."""

    seconds: float

    def __call__(self, grant: RefreshTokenGrant) -> None:
        grant.reuse_grace = self.seconds


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    """RFC 6749 §4.4, confidential clients only; scope within the registration (§3.3).

    An omitted scope means every scope the client is registered for. `resource`
    parameters (RFC 8707 §2) must be registered for the client; they become `aud`.
    Checked against the request's client record, so also on the hot path, whose write
    is guarded by that record's version.
    """

    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_METHODS

    def validate_requested_scope(self) -> None:
        scope = self.client.get_allowed_scope(self.request.payload.scope)
        if scope is None:
            raise InvalidScopeError("scope exceeds what the client is registered for")
        self.request.scope = scope
        request = self.request
        request.token_context.resources = checked(
            request, self.GRANT_TYPE, lambda: registered_resources(request)
        )

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        token = self.generate_token(scope=self.request.scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


def detected_second_use(
    request: Any,
    client_id: str,
    action: str,
    grant_type: str,
    digest: str,
    first_use: datetime | None,
    details: dict[str, Any],
    revoked: list[RevokedToken],
    user_id: int | None = None,
) -> None:
    """Audit a second use of a single-use credential (RFC 6749 §4.1.2 code replay, RFC
    9700 §4.14.2 refresh reuse) whose family the caller has revoked, scored by
    `risk.second_use` (1.00, or 0.30 flagged `race` within 1 s of the first use, UTC), and
    keep the transaction's changes although the request fails. `client_id` is the client
    that presented it; `user_id`, the grant's user (the row's `subject`, issue #11);
    `revoked`, the tokens the caller revoked, each also gets its `token_revoked` row."""
    now = request.context.received_at or utcnow()
    assessment = second_use(action, first_use, now)
    owners = token_storage.user_subjects(session_of(request), [user_id])
    subject = owners.get(user_id) if user_id is not None else None
    writer_of(request).record(
        AuditEvent(
            action,
            request.context,
            client_id=client_id,
            subject=subject,
            grant_type=grant_type,
            token_id=opaque_token_id(digest),
            risk_score=assessment.score,
            flags=assessment.flags,
            details={**details, "revoked": len(revoked)},
        ),
        *(revoked_token(t, request.context, client_id, cause=action) for t in revoked),
    )
    # Issue #14 item 3: the webhook event, committed with the revocation (storage.outbox).
    event: dict[str, Any] = {"client_id": client_id, "detection": action, "revoked": len(revoked)}
    if details.get("family_id"):
        event["family_id"] = details["family_id"]
    if assessment.flags:
        event["flags"] = assessment.flags
    enqueue_event(session_of(request), "token.reuse_detected", f"client:{client_id}", event)
    request.token_context.keep_changes_on_error = True


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    """RFC 6749 §4.1 with PKCE S256 (registered with `S256CodeChallenge`).

    Codes are single use (§4.1.2): redemption is a compare-and-set; a second use fails
    with `invalid_grant` and revokes every token issued from the code. Its `code_replay`
    audit row scores 1.00, or 0.30 flagged `race` within 1 s of the first use
    (`risk.second_use`).
    """

    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS
    code_ttl = 60  # seconds; each server's `CodeLifetime` extension sets its own

    def validate_authorization_request(self) -> str:
        """RFC 6749 §4.1.1 (Authlib), then RFC 8707 §2: every `resource` registered for
        the client, else an `invalid_target` error redirect. The checked resources are
        `token_context.resources`, stored with the code."""
        redirect_uri = super().validate_authorization_request()
        request = self.request
        try:
            request.token_context.resources = checked(
                request, None, lambda: registered_resources(request)
            )
        except InvalidTargetError as error:
            error.redirect_uri = redirect_uri
            raise
        return redirect_uri

    def validate_token_request(self) -> None:
        """RFC 6749 §4.1.3 (Authlib, with PKCE), then RFC 8707 §2.2: the `resource`
        parameters are a subset of those granted at authorization (none: all of them).
        InvalidTargetError rolls the transaction back: the code stays unused."""
        super().validate_token_request()
        request = self.request
        granted = request.authorization_code.record.resources
        request.token_context.granted_resources = granted
        request.token_context.resources = checked(
            request,
            self.GRANT_TYPE,
            lambda: granted_subset(request, granted, "the authorization"),
        )

    def save_authorization_code(self, code: str, request: Any) -> None:
        now = utcnow()
        data = request.payload.data
        issued = token_storage.NewAuthorizationCode(
            code_hash=token_digest(code),
            client_id=request.client.client_id,
            user_id=request.user.id,
            redirect_uri=data.get("redirect_uri"),
            scope=request.scope or "",
            code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"],
            expires_at=now + timedelta(seconds=self.code_ttl),
            resources=request.token_context.resources or None,  # RFC 8707 §2.2
        )
        token_storage.save_authorization_code(session_of(request), issued, now)

    def query_authorization_code(self, code: str, client: Any) -> CodeView | None:
        request = self.request
        db = session_of(request)
        now = utcnow()
        digest = token_digest(code)
        family_id = str(uuid.uuid4())
        found = token_storage.consume_authorization_code(db, digest, family_id, now)
        if found is not None:
            if found.client_id != client.client_id:
                return None  # rolled back with the error: the code stays usable by its owner
            request.token_context.family_id = family_id
            return CodeView(found)
        stored = token_storage.find_authorization_code(db, digest)
        if stored is not None and stored.consumed_at is not None:
            revoked = (
                token_storage.revoke_family(db, stored.family_id, now) if stored.family_id else []
            )
            detected_second_use(
                request,
                client.client_id,
                "code_replay",
                self.GRANT_TYPE,
                digest,
                stored.consumed_at,
                {"family_id": stored.family_id, "code_client_id": stored.client_id},
                revoked,
                user_id=stored.user_id,
            )
        return None

    def delete_authorization_code(self, authorization_code: CodeView) -> None:
        """Nothing to do: the code was consumed atomically; the janitor removes it later."""

    def authenticate_user(self, authorization_code: CodeView) -> UserRecord | None:
        return _active_user(session_of(self.request), authorization_code.record.user_id)


def _check_dpop_binding(request: OAuthRequest, stored: RefreshTokenRecord) -> None:
    """RFC 9449 §5: a refresh token bound to a DPoP key is used only with a proof of that
    key. Raises InvalidGrantError (the transaction rolls back: nothing rotated), with an
    audit row `refresh_refused` flagged `dpop_key_mismatch`."""
    if stored.dpop_jkt is None or stored.dpop_jkt == request.token_context.dpop_jkt:
        return
    owners = token_storage.user_subjects(session_of(request), [stored.user_id])
    request.token_context.refusals.append(
        AuditEvent(
            "refresh_refused",
            request.context,
            client_id=request.client.client_id,
            subject=owners.get(stored.user_id),
            grant_type="refresh_token",
            risk_score=0.5,
            flags=["dpop_key_mismatch"],
            details={
                "family_id": stored.family_id,
                "reason": "DPoP proof missing or made with another key",
            },
        )
    )
    raise InvalidGrantError(
        description="the refresh token is bound to a DPoP key; send a proof made with it"
    )


class RefreshTokenGrant(grants.RefreshTokenGrant):
    """RFC 6749 §6 with rotation on every use and reuse detection (RFC 9700 §4.14.2).

    The rule lives in `storage.tokens.redeem_refresh_token`; this grant acts on its outcome:

    - a current token is rotated by compare-and-set: of concurrent uses exactly one wins,
      across processes;
    - within `reuse_grace` seconds (`OAUTH2_REFRESH_REUSE_GRACE`, default 0) of its
      rotation, a repeat use of the most recently rotated token by the same client gets a
      fresh pair in the same family and supersedes the current refresh token (the family
      keeps exactly one); nothing is revoked and its `refreshed` row is flagged
      `refresh_grace` (`risk.refresh_from_ip`);
    - any other use of a rotated token fails with `invalid_grant` and revokes its whole
      family; its `refresh_reuse` row scores 1.00, or 0.30 flagged `race` within 1 s of
      the rotation (`risk.second_use`);
    - another client's, an expired or a revoked token is `invalid_grant` and changes
      nothing.

    A refresh never widens scope; the new refresh token keeps the grant's original scope.
    Likewise resources (RFC 8707 §2.2): `resource` parameters narrow the access token's
    `aud` to a subset of the family's granted resources; any other is `invalid_target`,
    and the transaction rolls back (nothing rotated).
    """

    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    reuse_grace = 0.0  # seconds; each server's `ReuseGrace` extension sets its own

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshView | None:
        request = self.request
        rotation: RefreshRotation = SessionWriter(session_of(request))
        now = utcnow()
        digest = token_digest(refresh_token)
        client_id = request.client.client_id
        use = rotation.redeem_refresh_token(digest, client_id, now, self.reuse_grace)
        if use.outcome in ("rotated", "grace"):
            assert use.token is not None
            _check_dpop_binding(request, use.token)
            if use.outcome == "grace":
                metrics.REFRESH_GRACE.inc()
            return RefreshView(use.token, grace=use.outcome == "grace")
        if use.outcome == "reuse":
            metrics.REFRESH_REUSE.inc()
            stored = use.token
            assert stored is not None
            revoked = rotation.revoke_family(stored.family_id, now)
            detected_second_use(
                request,
                client_id,
                "refresh_reuse",
                self.GRANT_TYPE,
                digest,
                stored.rotated_at,
                {"family_id": stored.family_id},
                revoked,
                user_id=stored.user_id,
            )
        return None

    def validate_token_request(self) -> None:
        """RFC 6749 §6 (Authlib: client, token, scope), then the RFC 8707 §2.2 subset."""
        super().validate_token_request()
        request = self.request
        granted = request.refresh_token.record.resources
        request.token_context.resources = checked(
            request,
            self.GRANT_TYPE,
            lambda: granted_subset(request, granted, "the refresh token"),
        )

    def authenticate_user(self, refresh_token: RefreshView) -> UserRecord | None:
        return _active_user(session_of(self.request), refresh_token.record.user_id)

    def revoke_old_credential(self, refresh_token: RefreshView) -> None:
        """Nothing to do: `redeem_refresh_token` already marked it (or, for a grace use,
        the superseded current token) rotated."""
