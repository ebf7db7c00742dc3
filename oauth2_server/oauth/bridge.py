"""The one place where Authlib's synchronous hooks meet the asynchronous database.

Authlib's grant and endpoint hooks (`query_client`, `query_authorization_code`,
`save_token`, …) are plain functions; our database driver (asyncpg, aiosqlite) is async.
`Bridge.run` runs the whole Authlib call inside `AsyncSession.run_sync`: the hooks get an
ordinary `sqlalchemy.orm.Session` (as `request.db`, and wrapped as the request's
`IssueWriter`, `storage.protocols.SessionWriter`), and each of its statements is awaited
on the async driver underneath through SQLAlchemy's greenlet bridge. So:

- no thread pool: one session, one transaction per request (on PostgreSQL the
  access-token row is the exception: it goes through the hot path's statement just
  before the commit, its one write path there; `storage.protocols`);
- the hooks stay ordinary synchronous code, written and tested like Authlib documents;
- the transaction is decided in one place: it commits when the response succeeded, or
  when a hook asked to keep its changes despite an error (replay and reuse detection
  revoke tokens *and* fail the request), and rolls back otherwise, so bad input changes
  nothing.

Everything inside `run_sync` runs on the event loop, so no hook may do CPU-heavy work:
argon2 verification (legacy client secrets, passwords) happens before entering the bridge,
off the loop (`oauth.clients.Argon2Slots`).

Every method raises `storage.errors.DatabaseUnavailable` in place of a driver or pool
error that means the database is unreachable or timed out (DESIGN.md invariant 11); the
HTTP layer answers it with 503 `temporarily_unavailable`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session
from starlette.responses import Response

from oauth2_server.audit.log import RequestContext
from oauth2_server.oauth.context import TokenContext
from oauth2_server.storage.client_state import ClientGuard
from oauth2_server.storage.errors import Availability
from oauth2_server.storage.fastpath import FastStore
from oauth2_server.storage.protocols import IssueBatch, IssueWriter, SessionWriter

T = TypeVar("T")

_current: ContextVar[OAuthRequest] = ContextVar("oauth2_current_request")


class FormPayload(OAuth2Payload):
    """Authlib payload over already-parsed parameters (first value, and every value)."""

    def __init__(self, datalist: dict[str, list[str]]) -> None:
        self._datalist = datalist
        self._data = {key: values[0] for key, values in datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:  # type: ignore[override]
        return self._datalist


def _as_https(uri: str) -> str:
    """`uri` with an `https` scheme, for Authlib's transport check (see OAuthRequest)."""
    scheme, sep, rest = uri.partition("://")
    return f"https://{rest}" if sep and scheme.lower() == "http" else uri


class OAuthRequest(OAuth2Request):
    """An Authlib request built from an awaited Starlette request.

    `params` are the parameters Authlib may read: the body only on the token,
    introspection and revocation endpoints; the query string only on the authorization
    endpoint. `db` is the bridge's sync session while inside `Bridge.run`;
    `token_context` carries the request's typed facts (`oauth.context.TokenContext`).

    Transport (RFC 6749 §3.1, §3.2 require TLS): Authlib refuses a non-https URI unless
    the process environment says otherwise (`AUTHLIB_INSECURE_TRANSPORT`). This server
    decides per app instead: `allow_http` (development with an `http://` issuer) lets
    Authlib check the https form of the URI, and `uri` keeps the real one. No process-wide
    setting is changed, so two apps in one process keep their own rule.
    """

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Any,
        params: dict[str, list[str]],
        context: RequestContext,
        *,
        allow_http: bool = False,
    ) -> None:
        super().__init__(method=method, uri=_as_https(uri) if allow_http else uri, headers=headers)
        self.uri = uri
        self.payload = FormPayload(params)
        self.context = context
        self.db: Session | None = None
        self.token_context = TokenContext()

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data


def session_of(request: OAuthRequest) -> Session:
    """The request's session (inside `Bridge.run`). Raises RuntimeError on the deferred
    path, where a hook that needs a transaction must never run."""
    if request.db is None:
        raise RuntimeError("this hook needs the request's transaction (Bridge.run)")
    return request.db


def writer_of(request: OAuthRequest) -> IssueWriter:
    """Where the request's token and audit rows go (inside a `Bridge` call only)."""
    writer = request.token_context.writer
    if writer is None:
        raise RuntimeError("no storage outside a Bridge call")
    return writer


def current_request() -> OAuthRequest:
    """The request whose Authlib call is running (inside `Bridge.run` only)."""
    return _current.get()


@dataclass(eq=False)
class Bridge:
    """Runs synchronous Authlib calls in one async session and transaction per request.

    `run_deferred` is the hot path's variant (client_credentials with a pre-verified
    client; introspection and token exchange whose rows were read up front): Authlib runs
    without a session, its token and audit rows are collected in an `IssueBatch`
    (`token_context.writer`) and written by the `IssueStore` (`fast`) in one transaction,
    one statement on PostgreSQL. The commit rule is the same.

    A deferred call acts on the pre-authenticated client's record, usually a worker's
    cached copy, so before its answer goes out the record is checked against the client
    row (`ClientGuard`: still active, same `version`): in the transaction that writes, or
    in the read made up front (`token_context.client_state`), or else by one primary-key
    read. If the record is no longer current the call runs again through `run`, whose
    `query_client` reads the client in the transaction (DESIGN.md invariant 9).
    """

    sessionmaker: async_sessionmaker[AsyncSession]
    fast: FastStore
    availability: Availability

    async def run_deferred(self, request: OAuthRequest, call: Callable[[], Response]) -> Response:
        """Run `call()` with `token_context.writer` collecting rows; write them if it
        succeeded, guarded by the pre-authenticated client's version. Answers through
        `run` instead when that client record turns out not to be current. Raises
        DatabaseUnavailable."""
        context = request.token_context
        pre = context.preauth_client
        guard = ClientGuard(pre.client_id, pre.record.version) if pre is not None else None
        state = context.client_state
        if guard is not None and state is not None and not state.holds(guard):
            return await self.run(request, call)  # read up front: the record is stale
        batch = IssueBatch()
        context.writer = batch
        token = _current.set(request)
        try:
            result = call()
        finally:
            _current.reset(token)
            context.writer = None
        if batch and (result.status_code < 400 or context.keep_changes_on_error):
            if await self.fast.issue(batch, guard):  # raises DatabaseUnavailable itself
                return result
            return await self.run(request, call)  # guard failed: nothing was written
        if guard is None or state is not None or await self.fast.client_current(guard):
            return result
        return await self.run(request, call)

    async def run(self, request: OAuthRequest, call: Callable[[], T]) -> T:
        """Run `call()` with `request.db` bound; commit or roll back as described above.

        A `Response` result commits when its status is below 400 or the request set
        `token_context.keep_changes_on_error`; any other result commits; an exception
        rolls back. Raises DatabaseUnavailable when the database cannot be reached.
        """
        with self.availability.guard():
            result = await self._run(request, call)
        return result

    async def _run(self, request: OAuthRequest, call: Callable[[], T]) -> T:
        context = request.token_context
        async with self.sessionmaker() as session:
            writer: SessionWriter | None = None

            def _in_greenlet(sync_session: Session) -> T:
                nonlocal writer
                request.db = sync_session
                context.writer = writer = self.fast.session_writer(sync_session)
                token = _current.set(request)
                try:
                    return call()
                finally:
                    _current.reset(token)
                    request.db = None
                    context.writer = None

            try:
                result = await session.run_sync(_in_greenlet)
            except BaseException:
                await session.rollback()
                raise
            failed = isinstance(result, Response) and result.status_code >= 400
            if failed and not context.keep_changes_on_error:
                await session.rollback()
                return result
            collected = writer.access_tokens if writer is not None else None
            if collected:
                # This backend's one write path for the row (`storage.protocols`),
                # before the commit: a token is never answered without its row.
                await self.fast.issue(collected, None)
            await session.commit()
            return result

    async def read(self, call: Callable[[Session], T]) -> T:
        """Run a read-only storage call outside any Authlib request. Raises
        DatabaseUnavailable when the database cannot be reached."""
        with self.availability.guard():
            async with self.sessionmaker() as session:
                result = await session.run_sync(call)
        return result

    async def write(self, call: Callable[[Session], T]) -> T:
        """Run a storage call and commit it. Raises DatabaseUnavailable when the database
        cannot be reached."""
        with self.availability.guard():
            async with self.sessionmaker() as session, session.begin():
                result = await session.run_sync(call)
        return result
