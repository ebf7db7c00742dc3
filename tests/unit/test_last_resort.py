"""`web.errors.LastResort` when the answer had already started (a streamed export that
fails half way): nothing more can be sent, so one ERROR line naming the exception class
and the route, the traceback only at DEBUG, and the connection ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import StreamingResponse
from starlette.routing import Route

from oauth2_server.web import errors


def test_failure_after_the_response_started_is_one_error_line(caplog):
    async def rows() -> AsyncIterator[bytes]:
        yield b"first row\n"
        raise KeyError("secret detail")

    async def export(request: Any) -> StreamingResponse:
        return StreamingResponse(rows(), media_type="text/csv")

    app = Starlette(
        routes=[Route("/export", export)],
        middleware=[Middleware(errors.LastResort, handler=errors.unhandled)],
    )
    caplog.set_level(logging.DEBUG, logger="oauth2_server.errors")

    async def call() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await client.get("/export")

    with pytest.raises(Exception):  # noqa: B017 - the answer cannot be completed
        asyncio.run(call())
    lines = [r for r in caplog.records if r.name == "oauth2_server.errors"]
    errors_ = [r for r in lines if r.levelno == logging.ERROR]
    assert len(errors_) == 1 and errors_[0].exc_info is None
    message = errors_[0].getMessage()
    assert message.startswith("KeyError after the response started on GET /export")
    assert "secret detail" not in message
    debug = [r for r in lines if r.levelno == logging.DEBUG]
    assert len(debug) == 1 and debug[0].exc_info is not None
