"""Pushed authorization requests (`oauth2_pushed_requests`, RFC 9126).

A `request_uri` is a bearer reference to a validated authorization request, so only its
SHA-256 is stored, as for authorization codes. A request is taken once, by one
`DELETE … RETURNING` that also names the client (RFC 9126 §4: the `request_uri` must have
been pushed by the client that presents it), so of two concurrent uses one gets it, and
another client's attempt leaves it in place.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from oauth2_server.db.models import PushedRequest


def request_uri_hash(request_uri: str) -> str:
    """SHA-256 hex of a `request_uri` (UTF-8): its stored name."""
    return hashlib.sha256(request_uri.encode()).hexdigest()


@dataclass(frozen=True)
class PushedParameters:
    """A taken pushed request: its client, its parameters (name → values) and its end."""

    client_id: str
    parameters: dict[str, list[str]]
    expires_at: datetime


def save_pushed_request(
    session: Session,
    request_uri: str,
    client_id: str,
    parameters: dict[str, list[str]],
    now: datetime,
    expires_at: datetime,
) -> None:
    """Store a pushed request (times UTC) under the SHA-256 of `request_uri`."""
    session.execute(
        insert(PushedRequest).values(
            request_uri_hash=request_uri_hash(request_uri),
            client_id=client_id,
            parameters=parameters,
            created_at=now,
            expires_at=expires_at,
        )
    )


def take_pushed_request(
    session: Session, request_uri: str, client_id: str
) -> PushedParameters | None:
    """Remove and return the request pushed by `client_id` under `request_uri`; None when
    there is none (never pushed, already used, or pushed by another client, whose row
    stays). The caller checks `expires_at`."""
    row = session.execute(
        delete(PushedRequest)
        .where(
            PushedRequest.request_uri_hash == request_uri_hash(request_uri),
            PushedRequest.client_id == client_id,
        )
        .returning(PushedRequest.client_id, PushedRequest.parameters, PushedRequest.expires_at)
    ).first()
    return PushedParameters(*row) if row is not None else None


def delete_expired_pushed_requests(session: Session, now: datetime) -> int:
    """Delete pushed requests that expired unused before `now` (UTC). Returns rows deleted."""
    return session.execute(delete(PushedRequest).where(PushedRequest.expires_at < now)).rowcount
