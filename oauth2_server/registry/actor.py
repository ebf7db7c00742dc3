"""Who makes an admin change, as recorded in its `admin_*` audit row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from oauth2_server.audit.log import AuditEvent, RequestContext, revoked_token
from oauth2_server.storage.tokens import RevokedToken


@dataclass(frozen=True)
class Actor:
    """Who makes an admin change or reads the audit trail: the admin client, its token's
    `jti` and the named person the client is registered to (API; issue #11 item 2), or
    the operator of the CLI: the OS account the process runs as and its host, which the
    server cannot authenticate. Audit rows carry `client_id` = the admin client (null
    from the CLI). `bootstrap`: the client is the first start's bootstrap admin."""

    client_id: str | None
    token_id: str | None
    context: RequestContext = field(default_factory=RequestContext)
    via: str = "api"
    operator: str | None = None
    host: str | None = None
    person: str | None = None
    bootstrap: bool = False

    def details(self, **details: Any) -> dict[str, Any]:
        """`details` with who acted: `via`, and `admin_jti` and `person` (API; null when
        the admin client is registered to no one) or `operator`, `host` and
        `"authenticated": false` (CLI); `"bootstrap": true` when the bootstrap admin
        client acted."""
        who: dict[str, Any] = {"via": self.via, **details}
        if self.token_id:
            who["admin_jti"] = self.token_id
            who["person"] = self.person
        if self.bootstrap:
            who["bootstrap"] = True
        if self.operator:
            who["operator"] = self.operator
            who["host"] = self.host
            who["authenticated"] = False
        return who

    def event(self, action: str, **kwargs: Any) -> AuditEvent:
        """An audit event by this actor, `details` completed by `Actor.details`."""
        details = self.details(**kwargs.pop("details", {}))
        return AuditEvent(action, self.context, client_id=self.client_id, details=details, **kwargs)

    def revoked(self, tokens: list[RevokedToken], **details: Any) -> list[AuditEvent]:
        """One `token_revoked` row (`audit.log.revoked_token`) by this actor per token a
        change revoked; `details` says what the revocation named."""
        who = self.details(**details)
        return [revoked_token(token, self.context, self.client_id, **who) for token in tokens]


def before(current: Any, changes: Mapping[str, Any], **known: Any) -> dict[str, Any]:
    """The value each field in `changes` had before the change, for the audit row's
    `details.before` beside `details.changes` (issue #11 item 3): from `known` when given
    (values not on the record, e.g. a client's branches), else `current`'s attribute.
    Callers pass only fields that hold no secret or hash."""
    return {key: known[key] if key in known else getattr(current, key) for key in changes}
