"""`oauth2-server audit verify`: the hash chain checked against signed evidence
(issue #11 item 5), with no head written down by hand.

Besides the chain itself (`chain.ChainWalker`: every sealed row from the anchor links
and matches its hash), verification checks:

1. every signed checkpoint (`audit.checkpoints`) verifies under the issuer's keys (all
   of them, retired ones included, or an auditor's own JWKS copy), matches its table row,
   and links to the previous one (`prev`), so none was deleted in between;
2. every row at a checkpoint's seq has the signed hash: a row altered and every later
   hash recomputed (chain row included) differs from the next checkpoint;
3. no checkpoint lies beyond the head: the table was not emptied or cut at the end;
4. the retention records (`audit.retention`) verify, chain from the baseline without a
   gap, and end exactly at the chain's anchor; every checkpoint's signed anchor is the
   baseline or the end of one of them. So rows removed at the start (a prefix deleted,
   a partition dropped) with the anchor moved, by anyone without the signing key, are
   reported;
5. no straggler (`audit.sealing`): an unsealed row inside the sealed range, reported
   with the command that seals it, `oauth2-server audit repair`.

Checkpoints copied elsewhere (the sink file) can be given too: each must verify and be
present in the database, which catches the checkpoint table emptied along with the rest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from oauth2_server.audit import checkpoints as audit_checkpoints
from oauth2_server.audit import retention as audit_retention
from oauth2_server.audit.chain import ChainState, ChainWalker, VerifyReport, chain_state, walk_chain
from oauth2_server.audit.sealing import stragglers
from oauth2_server.audit.signing import StatementError, public_keys, verify_statement
from oauth2_server.db.models import TokenLog
from oauth2_server.storage.keys import all_public_jwks

REPAIR_HINT = "seal them at the head of the chain with `oauth2-server audit repair`"


@dataclass
class Evidence:
    """What verification reads besides the rows, from one consistent moment: the chain
    state, verification keys, checkpoints (seq, hash, JWS), retention records and the
    stragglers (count, first ids)."""

    state: ChainState
    keys: dict[str, Any]
    checkpoints: list[tuple[int, str, str]]
    records: list[Any]
    straggler_count: int
    straggler_ids: list[int]
    head_now: int = 0
    signed: dict[int, str] = field(default_factory=dict)
    waiting: int = 0  # unsealed rows newer than `sealed_through` (not stragglers)


def read_evidence(session: Session, jwks: Mapping[str, Any] | None) -> Evidence | None:
    """The evidence, or None when retention moved the anchor while it was read (retry)."""
    state = chain_state(session)
    keys = public_keys(jwks if jwks is not None else all_public_jwks(session))
    found = audit_checkpoints.all_checkpoints(session)
    records = audit_retention.all_records(session)
    count, ids = stragglers(session, state)
    unsealed = session.scalar(
        select(func.count()).select_from(TokenLog).where(TokenLog.seal_seq.is_(None))
    )
    later = chain_state(session)
    if (later.anchor_seq, later.anchor_hash) != (state.anchor_seq, state.anchor_hash):
        return None
    evidence = Evidence(state, keys, found, records, count, ids, later.head_seq)
    evidence.waiting = int(unsealed or 0) - count
    return evidence


def _check_records(evidence: Evidence, report: VerifyReport) -> set[tuple[int, str]]:
    """Check the retention records (4.); returns the anchors they justify."""
    state = evidence.state
    anchor = (state.baseline_seq, state.baseline_hash)
    valid = {anchor}
    for record in evidence.records:
        where = f"retention record seal_seq {record.first_seq}–{record.last_seq}"
        try:
            payload = verify_statement(
                record.statement, evidence.keys, audit_retention.RETENTION_TYP
            )
        except StatementError as exc:
            report.fail("forged", f"{where} does not verify: {exc}", record.first_seq)
            return valid
        signed = (payload.get("first_seq"), payload.get("last_seq"), payload.get("last_hash"))
        if signed != (record.first_seq, record.last_seq, record.last_hash):
            report.fail("forged", f"{where} differs from its signed statement", record.first_seq)
            return valid
        prev = payload.get("prev_anchor") or {}
        if (prev.get("seq"), prev.get("hash")) != anchor or record.first_seq != anchor[0] + 1:
            report.fail(
                "deleted",
                f"{where} does not start where the previous one ended (seal_seq {anchor[0]}): "
                "a retention record is missing or was altered",
                record.first_seq,
            )
            return valid
        anchor = (record.last_seq, record.last_hash)
        valid.add(anchor)
        report.retention_records += 1
    if (state.anchor_seq, state.anchor_hash) != anchor:
        report.fail(
            "deleted",
            f"the chain starts after seal_seq {state.anchor_seq} but signed retention records "
            f"account for removals up to seal_seq {anchor[0]} only: rows were removed (or "
            "the anchor moved) without a retention record",
            state.anchor_seq,
        )
    return valid


def _check_checkpoints(
    evidence: Evidence, valid_anchors: set[tuple[int, str]], report: VerifyReport
) -> None:
    """Check the checkpoints (1., 3.) and collect the signed hashes for the walk (2.)."""
    previous: tuple[int, str] | None = None
    for seq, row_hash, statement in evidence.checkpoints:
        where = f"checkpoint seal_seq {seq}"
        try:
            payload = verify_statement(statement, evidence.keys, audit_checkpoints.CHECKPOINT_TYP)
        except StatementError as exc:
            return report.fail("forged", f"{where} does not verify: {exc}", seq)
        if (payload.get("seq"), payload.get("hash")) != (seq, row_hash):
            return report.fail("forged", f"{where} differs from its signed statement", seq)
        prev = payload.get("prev")
        if (None if prev is None else (prev.get("seq"), prev.get("hash"))) != previous:
            return report.fail(
                "deleted",
                f"{where} does not follow the previous checkpoint "
                f"({'none' if previous is None else previous[0]}): checkpoints were deleted",
                seq,
            )
        anchor = payload.get("anchor") or {}
        if (anchor.get("seq"), anchor.get("hash")) not in valid_anchors:
            return report.fail(
                "deleted",
                f"{where} was signed when the chain started after seal_seq {anchor.get('seq')}, "
                "which no signed retention record accounts for: rows were removed or the "
                "baseline moved",
                seq,
            )
        if seq > evidence.head_now:
            return report.fail(
                "deleted",
                f"{where} lies beyond the chain's head {evidence.head_now}: sealed rows were "
                "removed (the table emptied or cut) and the head moved back",
                seq,
            )
        previous = (seq, row_hash)
        report.checkpoints += 1
        report.checkpoint_seq = seq
        evidence.signed[seq] = row_hash
    return None


def check_copies(evidence: Evidence, lines: Sequence[str], report: VerifyReport) -> None:
    """Checkpoints copied to the sink (JSON lines): each that verifies must be in the
    database with the same hash (the tables were not emptied or rewritten)."""
    stored = {seq: row_hash for seq, row_hash, _ in evidence.checkpoints}
    for number, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
        except ValueError:
            return report.fail("forged", f"line {number} of the checkpoint copy is not JSON")
        if not isinstance(item, dict) or item.get("type") != "checkpoint":
            continue
        try:
            payload = verify_statement(
                str(item.get("jws")), evidence.keys, audit_checkpoints.CHECKPOINT_TYP
            )
        except StatementError as exc:
            return report.fail("forged", f"line {number} of the checkpoint copy: {exc}")
        seq, row_hash = payload.get("seq"), payload.get("hash")
        if stored.get(seq) != row_hash:  # type: ignore[call-overload]
            return report.fail(
                "deleted",
                f"checkpoint seal_seq {seq} of the copy is missing from (or differs in) the "
                "database: checkpoints were deleted or rewritten",
                seq if isinstance(seq, int) else None,
            )
    return None


def _report_stragglers(evidence: Evidence, report: VerifyReport) -> None:
    ids = evidence.straggler_ids
    shown = ", ".join(str(i) for i in ids) + (", …" if evidence.straggler_count > len(ids) else "")
    through = evidence.state.sealed_through
    report.fail(
        "unsealed",
        f"{evidence.straggler_count} row(s) created before the chain was sealed through "
        f"{through.isoformat() if through else '-'} are not sealed (ids {shown}): left by "
        f"an older release, or inserted afterwards; {REPAIR_HINT}",
        log_id=ids[0] if ids else None,
    )


def _notes(evidence: Evidence, report: VerifyReport) -> None:
    head = evidence.state.head_seq
    last = report.checkpoint_seq or 0
    if head > last and report.ok:
        report.notes.append(
            f"sealed rows with seal_seq {last + 1}–{head} are not covered by a signed "
            "checkpoint yet (the next seal run signs one)"
        )


async def verify_audit_trail(
    sessionmaker: async_sessionmaker[AsyncSession],
    expect: tuple[int, str] | None = None,
    *,
    jwks: Mapping[str, Any] | None = None,
    copies: Sequence[str] = (),
    batch_size: int = 2000,
) -> VerifyReport:
    """Verify the chain and its evidence (module docstring) and report the first problem.
    `expect`: (seal_seq, row_hash) of a head recorded earlier, checked too; `jwks`: the
    verification keys (a JWKS document, default every key in the database); `copies`:
    lines of the checkpoint sink file."""
    evidence = None
    for _ in range(5):
        async with sessionmaker() as session:
            evidence = await session.run_sync(read_evidence, jwks)
        if evidence is not None:
            break
    if evidence is None:
        raise RuntimeError("retention kept moving the chain's anchor; verify again later")
    probe = VerifyReport(evidence.state.head_seq, evidence.state.head_hash, 0)
    valid = _check_records(evidence, probe)
    _check_checkpoints(evidence, valid, probe)
    check_copies(evidence, copies, probe)
    walker = ChainWalker(evidence.state, expect, evidence.signed)
    report = await walk_chain(sessionmaker, walker, batch_size)
    report.checkpoints, report.checkpoint_seq = probe.checkpoints, probe.checkpoint_seq
    report.retention_records = probe.retention_records
    report.stragglers = evidence.straggler_count
    report.pending += evidence.waiting
    if probe.problem is not None and report.problem is None:
        report.problem = probe.problem
    if evidence.straggler_count:
        _report_stragglers(evidence, report)
    _notes(evidence, report)
    return report
