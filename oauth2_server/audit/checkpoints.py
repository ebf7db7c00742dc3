"""Signed checkpoints of the audit hash chain and their write-once sink (issue #11 item 5).

Every seal transaction that sealed rows writes one `oauth2_audit_checkpoints` row in the
same transaction: the new head's `seq` and `row_hash`, and `statement`, a compact JWS
(`audit.signing`, ES256 with the issuer's current signing key, header
`typ: audit-checkpoint+jwt`) of

    {"seq": N, "hash": "<row_hash of seq N>", "time": "<UTC ISO 8601, Z>",
     "anchor": {"seq": A, "hash": "<anchor hash>"},
     "prev": {"seq": P, "hash": "<hash of the previous checkpoint>"} | null,
     "iat": <seconds>}

`prev` chains checkpoints: deleting one is visible in the next. `anchor` is where the
chain started when it was signed (retention moves it; `audit.retention` records each
move). `audit verify` checks every row at a checkpoint's seq against its hash, so a row
altered and every later hash recomputed no longer matches a signed checkpoint.

The sink (`OAUTH2_AUDIT_CHECKPOINT_SINK`) gets a copy of every checkpoint and retention
record after its transaction commits: one JSON line appended to a file (O_APPEND), or a
POST to an https URL. That copy is what survives someone emptying the tables; a sink
failure is logged and counted (`oauth2_audit_sink_failures_total`), never blocks sealing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from oauth2_server import metrics
from oauth2_server.audit.signing import SigningKey, sign_statement
from oauth2_server.db.models import AuditCheckpoint

log = logging.getLogger("oauth2_server.audit")

CHECKPOINT_TYP = "audit-checkpoint+jwt"
SINK_TIMEOUT = 5.0  # seconds a webhook sink may take
MAX_LIST = 10_000  # most checkpoints one `audit checkpoints` answer lists


def iso(moment: datetime) -> str:
    """`moment` as ISO 8601 UTC with `Z`, microseconds kept (how statements spell time)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as written: head `seq` and `row_hash`, signing `kid`, `statement`
    (the JWS) and when it was made (UTC)."""

    seq: int
    row_hash: str
    kid: str
    statement: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """The JSON form listed by `audit checkpoints` and sent to the sink."""
        return {
            "type": "checkpoint",
            "seq": self.seq,
            "hash": self.row_hash,
            "time": iso(self.created_at),
            "kid": self.kid,
            "jws": self.statement,
        }


def last_checkpoint(session: Session) -> tuple[int, str] | None:
    """(seq, row_hash) of the newest checkpoint, None before the first."""
    row = session.execute(
        select(AuditCheckpoint.seq, AuditCheckpoint.row_hash)
        .order_by(AuditCheckpoint.seq.desc())
        .limit(1)
    ).first()
    return (int(row.seq), row.row_hash) if row else None


def write_checkpoint(
    session: Session, signer: SigningKey, seq: int, row_hash: str, state: Any
) -> Checkpoint:
    """Sign and insert the checkpoint of head (`seq`, `row_hash`), chained to the previous
    one, in the caller's transaction (which holds the chain lock). `state`: the
    `chain.ChainState` read under that lock (its anchor is signed along)."""
    now = datetime.now(UTC)
    previous = last_checkpoint(session)
    payload = {
        "seq": seq,
        "hash": row_hash,
        "time": iso(now),
        "anchor": {"seq": state.anchor_seq, "hash": state.anchor_hash},
        "prev": {"seq": previous[0], "hash": previous[1]} if previous else None,
    }
    statement = sign_statement(signer, CHECKPOINT_TYP, payload)
    session.add(
        AuditCheckpoint(
            seq=seq, row_hash=row_hash, created_at=now, kid=signer.kid, statement=statement
        )
    )
    session.flush()
    return Checkpoint(seq, row_hash, signer.kid, statement, now)


def list_checkpoints(session: Session, limit: int) -> list[Checkpoint]:
    """The newest `limit` checkpoints (at most `MAX_LIST`), oldest first."""
    rows = session.scalars(
        select(AuditCheckpoint)
        .order_by(AuditCheckpoint.seq.desc())
        .limit(max(1, min(limit, MAX_LIST)))
    ).all()
    return [
        Checkpoint(row.seq, row.row_hash, row.kid, row.statement, row.created_at)
        for row in reversed(rows)
    ]


def all_checkpoints(session: Session) -> list[tuple[int, str, str]]:
    """Every checkpoint as (seq, row_hash, statement), by seq: what `audit verify` checks."""
    rows = session.execute(
        select(AuditCheckpoint.seq, AuditCheckpoint.row_hash, AuditCheckpoint.statement).order_by(
            AuditCheckpoint.seq
        )
    ).all()
    return [(int(r.seq), r.row_hash, r.statement) for r in rows]


class Sink:
    """The write-once copy (`OAUTH2_AUDIT_CHECKPOINT_SINK`): `target` is a file path or an
    http(s) URL; empty: nothing is sent. `push(item)` never raises."""

    def __init__(self, target: str) -> None:
        self.target = target.strip()
        self.failures = 0

    @property
    def is_url(self) -> bool:
        return self.target.startswith(("https://", "http://"))

    def push(self, item: dict[str, Any]) -> bool:
        """Send one statement (`Checkpoint.as_dict()` or a retention record's): append one
        JSON line to the file, or POST it to the URL within `SINK_TIMEOUT` seconds.
        Returns False (logged without the statement, counted) when it failed."""
        if not self.target:
            return True
        line = json.dumps(item, separators=(",", ":"), sort_keys=True)
        try:
            if self.is_url:
                answer = httpx.post(
                    self.target,
                    content=line,
                    headers={"Content-Type": "application/json"},
                    timeout=SINK_TIMEOUT,
                )
                answer.raise_for_status()
            else:
                descriptor = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(descriptor, (line + "\n").encode())
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
        except (OSError, httpx.HTTPError) as exc:
            self.failures += 1
            metrics.AUDIT_SINK_FAILURES.inc()
            log.error(
                "audit checkpoint sink: %s %s not written (%s); it stays in the database",
                item.get("type"),
                item.get("seq", item.get("last_seq")),
                type(exc).__name__,
            )
            return False
        return True
