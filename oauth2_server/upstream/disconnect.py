"""Disconnecting a branch from its upstream grant (DESIGN.md "Upstream brokering"): the
branch is unlinked; a grant keeps living while other branches use it, and is revoked at
the provider (RFC 7009) and deleted with its last branch (Google revokes a whole grant
when any of its tokens is revoked, so never earlier).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.orm import Session

from oauth2_server.audit.log import AuditEvent, record
from oauth2_server.storage import upstream as storage
from oauth2_server.storage.branches import get_branch
from oauth2_server.upstream.base import UpstreamBase, printable
from oauth2_server.upstream.client import UpstreamRejected, UpstreamUnavailable
from oauth2_server.upstream.connect import ConnectError
from oauth2_server.upstream.providers import ProviderNotConfigured, UnknownProvider, provider_names


@dataclass(frozen=True)
class DisconnectResult:
    """A disconnected branch; `grant_deleted` when it was the grant's last branch, then
    `revoked` says whether the provider revoked it (None: not attempted / no endpoint)."""

    branch_id: str
    provider: str
    credential_id: str
    grant_deleted: bool
    revoked: bool | None
    note: str
    remaining_branches: list[str]

    def summary(self) -> dict[str, Any]:
        """What an admin sees, and the audit row records, of it: every field but the
        internal `credential_id`."""
        answer = asdict(self)
        answer.pop("credential_id")
        return answer


class Disconnecting(UpstreamBase):
    """Disconnecting branches (`UpstreamService` combines it with linking and refreshing)."""

    async def disconnect(
        self,
        branch_id: str,
        provider_name: str,
        *,
        force: bool = False,
        audit: Callable[[DisconnectResult], AuditEvent] | None = None,
    ) -> DisconnectResult:
        """Unlink a branch from its `provider` grant. When it was the grant's last branch,
        revoke the grant at the provider (RFC 7009) and delete its tokens.

        The unlink, its `upstream_unlinked` audit row and the row `audit(result)` returns
        (the acting admin's, e.g. `admin_branch_disconnected`) commit in one transaction.

        The revocation happens first, holding the grant's lock: if the provider cannot be
        reached (or is not configured) nothing changes and ConnectError says so, unless
        `force`, which deletes the stored tokens anyway. Raises ConnectError when the
        branch is not connected to `provider`.
        """
        if provider_name not in provider_names():
            raise ConnectError(str(UnknownProvider(provider_name)))
        async with self.sessionmaker() as session, session.begin():
            credential_id, remaining, row = await session.run_sync(
                lambda db: _unlink(db, branch_id, provider_name)
            )
            revoked: bool | None = None
            note = f"grant kept: still used by {', '.join(remaining)}"
            if row is not None:
                revoked, note = await self._revoke_last(row, provider_name, force)
            result = DisconnectResult(
                branch_id=branch_id,
                provider=provider_name,
                credential_id=credential_id,
                grant_deleted=row is not None,
                revoked=revoked,
                note=note,
                remaining_branches=remaining,
            )
            await session.run_sync(lambda db: _record_disconnect(db, result, audit))
        return result

    async def _revoke_last(
        self, row: storage.CredentialRow, provider_name: str, force: bool
    ) -> tuple[bool | None, str]:
        """Revoke (RFC 7009) the grant whose last branch is leaving. Returns `revoked`
        (None: not attempted or failed) and the note for the admin. Raises ConnectError
        when the provider is not configured or the revocation fails, unless `force`."""
        try:
            provider = self.provider(provider_name)
        except ProviderNotConfigured as exc:
            if not force:
                raise ConnectError(
                    f"{exc}; cannot revoke the grant (use --force to only delete the "
                    "stored tokens)",
                    500,
                ) from None
            self._open_or_none(row)  # logs when the stored token does not decrypt either
            return None, "provider not configured: stored tokens deleted without revocation"
        refresh_token = self._open_or_none(row)
        if refresh_token is None:
            return None, "stored refresh token does not decrypt: deleted without revocation"
        try:
            revoked = await self.client.revoke(provider, refresh_token)
        except (UpstreamUnavailable, UpstreamRejected) as exc:
            if not force:
                raise ConnectError(
                    f"revoking at {provider_name} failed ({printable(exc)}); "
                    "nothing changed: retry, or use --force to only delete the "
                    "stored tokens",
                    502,
                ) from None
            return None, f"revocation failed ({printable(exc)}); stored tokens deleted"
        if revoked:
            return True, f"grant revoked at {provider_name}; stored tokens deleted"
        return False, (
            f"{provider_name} has no revocation endpoint; stored tokens "
            "deleted (the grant stays valid there until it lapses)"
        )


def _unlink(
    db: Session, branch_id: str, provider_name: str
) -> tuple[str, list[str], storage.CredentialRow | None]:
    """Remove the branch's link. Returns the grant id, the branches still using it, and
    the grant's row, locked, when none does (it is to be revoked and deleted). Raises
    ConnectError for an unknown or unconnected branch."""
    if get_branch(db, branch_id) is None:
        raise ConnectError(f"branch {branch_id!r} not found", 404)
    credential_id = storage.unlink_branch(db, branch_id, provider_name)
    if credential_id is None:
        raise ConnectError(f"branch {branch_id!r} is not connected to {provider_name}")
    remaining = storage.linked_branches(db, credential_id)
    row = None if remaining else storage.lock_credential(db, credential_id)
    return credential_id, remaining, row


def _record_disconnect(
    db: Session,
    result: DisconnectResult,
    audit: Callable[[DisconnectResult], AuditEvent] | None,
) -> None:
    """Delete the grant when its last branch left, and write the `upstream_unlinked` row
    and the caller's `audit(result)` row, in the unlink's transaction."""
    if result.grant_deleted:
        storage.delete_credential(db, result.credential_id)
    details = {"provider": result.provider, "credential_id": result.credential_id}
    details.update(grant_deleted=result.grant_deleted, revoked=result.revoked)
    details.update(remaining_branches=result.remaining_branches)
    record(db, AuditEvent("upstream_unlinked", branch_id=result.branch_id, details=details))
    if audit is not None:
        record(db, audit(result))
