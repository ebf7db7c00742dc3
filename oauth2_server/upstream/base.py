"""Shared plumbing of the upstream service: configuration, the provider HTTP client,
own transactions, failure auditing and opening stored tokens."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import TypeVar

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from oauth2_server.audit.log import AuditBuffer, AuditEvent, record
from oauth2_server.config import Settings
from oauth2_server.crypto.keyring import DecryptionError, Keyring
from oauth2_server.storage import upstream as storage
from oauth2_server.upstream.client import UpstreamClient
from oauth2_server.upstream.providers import Provider, load_provider
from oauth2_server.upstream.sealing import REFRESH, open_token

log = logging.getLogger(__name__)
T = TypeVar("T")

_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def printable(text: object, limit: int = 200) -> str:
    """Text safe for an RFC 6749 §5.2 `error_description` (no quote, backslash or
    control characters), cut to `limit` characters."""
    return _UNSAFE.sub("?", str(text))[:limit]


class UpstreamBase:
    """State shared by connecting and refreshing (`UpstreamService` combines both).

    `sessionmaker` opens this service's own transactions; `keyring` encrypts stored
    tokens; `transport` lets tests substitute httpx's transport.
    """

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        *,
        audit_buffer: AuditBuffer | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.keyring = keyring
        self.audit_buffer = audit_buffer
        self.client = UpstreamClient(
            settings.upstream_timeout, transport, refresh_cap=settings.upstream_refresh_cap
        )
        self._inflight: dict[str, asyncio.Task[None]] = {}

    async def aclose(self) -> None:
        """Let refreshes still in flight finish (each is bounded by
        OAUTH2_UPSTREAM_REFRESH_CAP) so their answers are stored, then close the client."""
        pending = [task for task in self._inflight.values() if not task.done()]
        if pending:
            log.info("waiting for %d upstream refresh(es) in flight", len(pending))
            await asyncio.wait(pending, timeout=self.settings.upstream_refresh_cap + 5)
        await self.client.aclose()

    def provider(self, name: str) -> Provider:
        """The configured provider; UnknownProvider or ProviderNotConfigured."""
        return load_provider(self.settings, name)

    async def _write(self, call: Callable[[Session], T]) -> T:
        async with self.sessionmaker() as session, session.begin():
            return await session.run_sync(call)

    async def _audit_failure(self, event: AuditEvent) -> None:
        if self.audit_buffer is not None:
            self.audit_buffer.add(event)
        else:
            await self._write(lambda db: record(db, event))

    def _open(self, row: storage.CredentialRow, kind: str) -> str:
        return open_token(
            self.keyring,
            key_id=row.encryption_key_id,
            ciphertext=row.refresh_token_ciphertext
            if kind == REFRESH
            else row.access_token_ciphertext,
            credential_id=row.id,
            provider=row.provider,
            account_sub=row.account_sub,
            kind=kind,
        )

    def _open_or_none(self, row: storage.CredentialRow) -> str | None:
        try:
            return self._open(row, REFRESH)
        except DecryptionError:
            log.error("refresh token of upstream grant %s does not decrypt", row.id)
            return None
