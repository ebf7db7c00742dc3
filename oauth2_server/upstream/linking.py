"""Finishing a branch's connection (the provider's callback; DESIGN.md "Upstream
brokering" 1–2): one grant per (provider, account `sub`), linked to many branches. A grant
the branch used before is revoked at the provider and deleted only with its last branch.
Starting a connection is `upstream.connect`; disconnecting, `upstream.disconnect`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oauth2_server.audit.log import AuditEvent, RequestContext, record
from oauth2_server.crypto.hashing import token_digest
from oauth2_server.storage import upstream as storage
from oauth2_server.storage import upstream_states, utcnow
from oauth2_server.storage.branches import get_branch
from oauth2_server.upstream.base import UpstreamBase, printable
from oauth2_server.upstream.client import TokenResponse, UpstreamRejected, UpstreamUnavailable
from oauth2_server.upstream.connect import (
    Account,
    ConnectError,
    ConnectionStart,
    account_from_claims,
    begin_connection,
    id_token_claims,
)
from oauth2_server.upstream.providers import Provider, ProviderNotConfigured, UnknownProvider
from oauth2_server.upstream.sealing import REFRESH, open_verifier, seal_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectResult:
    """A finished connection: the branch now uses grant `credential_id`."""

    branch_id: str
    provider: str
    credential_id: str
    account_email: str | None
    scope: str
    access_expires_at: datetime
    reused_grant: bool
    branches: list[str]


@dataclass(frozen=True)
class _Callback:
    """What a provider's callback established, to be stored for `branch_id`: the
    account, its token response and the granted scope."""

    provider: Provider
    branch_id: str
    account: Account
    tokens: TokenResponse
    scope: str
    context: RequestContext


class Linking(UpstreamBase):
    """Connecting branches (`UpstreamService` combines it with disconnecting and
    refreshing)."""

    # -- connecting (DESIGN.md "Upstream brokering" 1–2) ---------------------------------

    async def begin_connection(self, branch_id: str, provider: str) -> ConnectionStart:
        """`connect.begin_connection` in its own transaction (for the admin API)."""
        configured = self.provider(provider)
        return await self._write(
            lambda db: begin_connection(
                db,
                self.keyring,
                configured,
                branch_id,
                issuer_url=self.settings.issuer_url,
                state_ttl=self.settings.upstream_state_ttl,
            )
        )

    async def finish_connection(
        self, provider_name: str, params: dict[str, str], context: RequestContext
    ) -> ConnectResult:
        """Handle the provider's redirect to `/upstream/<provider>/callback`.

        Consumes `state` first (single use, even when a later step fails), then checks
        the provider's answer (RFC 6749 §4.1.2.1 errors), exchanges the code with the
        PKCE verifier, checks the granted scope holds the provider's required scopes,
        identifies the account (`sub`, email) and stores the grant for that account,
        linked to the branch. Raises ConnectError (nothing stored) otherwise.
        """
        state = params.get("state")
        if not state:
            raise ConnectError("the callback has no 'state'; start again with branches connect")
        pending = await self._write(
            lambda db: upstream_states.consume_state(db, token_digest(state))
        )
        if pending is None:
            await self._audit_failure(
                AuditEvent(
                    "upstream_link_failed",
                    context,
                    flags=["unknown_state"],
                    details={"provider": provider_name[:40]},
                )
            )
            raise ConnectError(
                "unknown or already used 'state': each connection URL works once; "
                "start again with branches connect"
            )
        try:
            return await self._finish(pending, provider_name, params, context)
        except ConnectError as exc:
            await self._audit_failure(
                AuditEvent(
                    "upstream_link_failed",
                    context,
                    branch_id=pending.branch_id,
                    details={"provider": pending.provider, "reason": printable(exc)},
                )
            )
            raise

    async def _finish(
        self,
        pending: upstream_states.StateRow,
        provider_name: str,
        params: dict[str, str],
        context: RequestContext,
    ) -> ConnectResult:
        if pending.expires_at <= utcnow():
            raise ConnectError(
                f"this connection URL expired (valid {self.settings.upstream_state_ttl} s); "
                "start again with branches connect"
            )
        if pending.provider != provider_name:
            raise ConnectError("'state' was issued for another provider")
        if params.get("error"):
            raise ConnectError(
                f"{pending.provider} did not authorize: {printable(params['error'], 60)}"
                + (
                    f": {printable(params['error_description'])}"
                    if params.get("error_description")
                    else ""
                )
            )
        code = params.get("code")
        if not code:
            raise ConnectError("the callback has no 'code'")
        try:
            provider = self.provider(pending.provider)
        except (UnknownProvider, ProviderNotConfigured) as exc:
            raise ConnectError(str(exc), 500, "server_error") from None
        verifier = open_verifier(
            self.keyring,
            pending.state_hash,
            pending.encryption_key_id,
            pending.code_verifier_ciphertext,
        )
        try:
            tokens = await self.client.exchange_code(provider, code, pending.redirect_uri, verifier)
        except UpstreamRejected as exc:
            raise ConnectError(
                f"{provider.name} refused the authorization code: {printable(exc)}"
            ) from None
        except UpstreamUnavailable as exc:
            raise ConnectError(printable(exc), 502, "temporarily_unavailable") from None
        granted = tokens.scope if tokens.scope is not None else pending.scope
        lacking = provider.spec.required_scopes - set(granted.split())
        if lacking:
            # Nothing is stored. The new grant is not revoked either: at Google revoking
            # any token of an account removes the whole grant, which other branches may use.
            raise ConnectError(
                f"the {provider.spec.title} account did not grant {' '.join(sorted(lacking))} "
                "(unticked on the consent screen?); connect again and allow it"
            )
        account = await self._account(provider, tokens)
        return await self._store_connection(
            _Callback(provider, pending.branch_id, account, tokens, granted, context)
        )

    async def _account(self, provider: Provider, tokens: TokenResponse) -> Account:
        claims: dict[str, Any] = {}
        if tokens.id_token is not None:
            claims = id_token_claims(tokens.id_token, provider.client_id)
        account = account_from_claims(claims)
        if account is None or account.email is None:
            try:
                info = await self.client.userinfo(provider, tokens.access_token)
            except UpstreamUnavailable as exc:
                if account is not None:
                    return account
                raise ConnectError(printable(exc), 502, "temporarily_unavailable") from None
            from_userinfo = account_from_claims(info)
            if (
                account is not None
                and from_userinfo is not None
                and from_userinfo.sub != account.sub
            ):
                raise ConnectError("id_token and userinfo name different accounts", 502)
            account = from_userinfo or account
        if account is None:
            raise ConnectError(f"{provider.name} did not say which account connected", 502)
        return account

    async def _store_connection(self, callback: _Callback) -> ConnectResult:
        for attempt in range(2):
            try:
                result, orphan = await self._write(lambda db: self._link(db, callback))
                break
            except IntegrityError:
                # Two callbacks for one new account inserted at once: the second retries
                # and links to the first one's grant.
                if attempt:
                    raise
        if orphan is not None:
            await self._revoke_quietly(callback.provider, orphan)
        return result

    def _link(self, db: Session, callback: _Callback) -> tuple[ConnectResult, str | None]:
        """Store the account's grant and point the branch at it, in one transaction, with
        its audit rows. Returns the result and, when the branch's previous grant lost its
        last branch (and was deleted), that grant's refresh token to revoke, else None."""
        now = utcnow()
        provider, branch_id, account = callback.provider, callback.branch_id, callback.account
        if get_branch(db, branch_id) is None:
            raise ConnectError(f"branch {branch_id!r} was deleted meanwhile", 404)
        existing = storage.find_credential(db, provider.name, account.sub)
        credential_id, expires_at = self._save_grant(db, callback, existing, now)
        previous = storage.link_branch(db, branch_id, provider.name, credential_id, now)
        details = {
            "provider": provider.name,
            "credential_id": credential_id,
            "account_email": account.email,
            "scope": callback.scope,
            "reused_grant": existing is not None,
            "replaced_credential_id": previous,
        }
        events = [
            AuditEvent("upstream_linked", callback.context, branch_id=branch_id, details=details)
        ]
        orphan = None
        if previous is not None and not storage.linked_branches(db, previous):
            old = storage.lock_credential(db, previous)
            if old is not None:
                orphan = self._open_or_none(old)
                storage.delete_credential(db, previous)
                details = {"provider": provider.name, "credential_id": previous}
                details.update(grant_deleted=True, replaced_by=credential_id)
                events.append(
                    AuditEvent(
                        "upstream_unlinked", callback.context, branch_id=branch_id, details=details
                    )
                )
        record(db, *events)
        result = ConnectResult(
            branch_id=branch_id,
            provider=provider.name,
            credential_id=credential_id,
            account_email=account.email,
            scope=callback.scope,
            access_expires_at=expires_at,
            reused_grant=existing is not None,
            branches=storage.linked_branches(db, credential_id),
        )
        return result, orphan

    def _save_grant(
        self,
        db: Session,
        callback: _Callback,
        existing: storage.CredentialRow | None,
        now: datetime,
    ) -> tuple[str, datetime]:
        """Store the callback's tokens, sealed, as a new grant or over the account's
        `existing` one (keeping its refresh token when the provider sent none). Returns
        the grant id and the access token's expiry (UTC). Raises ConnectError without
        any refresh token."""
        provider, account, tokens = callback.provider, callback.account, callback.tokens
        credential_id = existing.id if existing is not None else str(uuid.uuid4())
        refresh_token = tokens.refresh_token
        if refresh_token is None and existing is not None:
            refresh_token = self._open(existing, REFRESH)
        if refresh_token is None:
            raise ConnectError(
                f"{provider.name} returned no refresh token (offline access was not granted)",
                502,
            )
        sealed = seal_tokens(
            self.keyring,
            credential_id=credential_id,
            provider=provider.name,
            account_sub=account.sub,
            access_token=tokens.access_token,
            refresh_token=refresh_token,
        )
        expires_at = now + timedelta(seconds=tokens.expires_in)
        stored: dict[str, Any] = {"sealed": sealed, "access_expires_at": expires_at, "now": now}
        stored.update(scope=callback.scope, account_email=account.email)
        if existing is not None:
            storage.store_tokens(db, credential_id, refreshed=False, **stored)
        else:
            storage.insert_credential(
                db,
                credential_id=credential_id,
                provider=provider.name,
                account_sub=account.sub,
                **stored,
            )
        return credential_id, expires_at

    async def _revoke_quietly(self, provider: Provider, refresh_token: str) -> bool | None:
        try:
            return await self.client.revoke(provider, refresh_token)
        except (UpstreamUnavailable, UpstreamRejected) as exc:
            log.warning("revoking a replaced %s grant failed: %s", provider.name, exc)
            return None
