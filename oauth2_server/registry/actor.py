"""Who makes an admin change, as recorded in its `admin_*` audit row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from oauth2_server.audit.log import AuditEvent, RequestContext


@dataclass(frozen=True)
class Actor:
    """Who makes an admin change or reads the audit trail: the admin client and its
    token's `jti` (API), or the operator of the CLI: the OS account the process runs as
    and its host, which the server cannot authenticate. Audit rows carry `client_id` =
    the admin client (null from the CLI)."""

    client_id: str | None
    token_id: str | None
    context: RequestContext = field(default_factory=RequestContext)
    via: str = "api"
    operator: str | None = None
    host: str | None = None

    def event(self, action: str, **kwargs: Any) -> AuditEvent:
        """An audit event by this actor; `details` gets `via`, and `admin_jti` (API) or
        `operator`, `host` and `"authenticated": false` (CLI)."""
        details = {"via": self.via, **kwargs.pop("details", {})}
        if self.token_id:
            details["admin_jti"] = self.token_id
        if self.operator:
            details["operator"] = self.operator
            details["host"] = self.host
            details["authenticated"] = False
        return AuditEvent(action, self.context, client_id=self.client_id, details=details, **kwargs)
