"""A loopback TCP proxy the tests put between the server and PostgreSQL, to cut and restore.

Outage tests must never stop or reconfigure the machine's PostgreSQL (DESIGN.md invariant
11 is tested against a simulated outage): the server under test connects to this proxy
instead, and the test decides what the network does.

- `cut()`: close every proxied connection and refuse new ones (connection refused), as when
  the database host goes down;
- `stall()`: keep accepting but forward nothing, in either direction (packets dropped), as
  when the network or the database hangs: only timeouts end the waiting;
- `restore()`: forward again; connections opened during a stall are closed (their bytes
  were dropped, so their protocol state is lost).

It runs its own asyncio loop in a daemon thread; every method is called from the test's
thread and returns once the change is in effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

CHUNK = 65536


class TcpProxy:
    """Forward 127.0.0.1:`port` to `target_host`:`target_port` until cut or stalled."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.stalled = False
        self.accepted = 0  # connections accepted since start (a test can watch reconnects)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stalled_writers: set[asyncio.StreamWriter] = set()

    # -- control, from the test's thread ----------------------------------------------

    def start(self) -> TcpProxy:
        """Listen on a free loopback port (`self.port`) and start forwarding."""
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        """Refuse new connections and close every open one (both directions)."""
        self._call(self._cut())

    def stall(self) -> None:
        """Forward nothing from now on; new connections are accepted and hang."""
        self._call(self._set_stalled(True))

    def restore(self) -> None:
        """Forward again, listening on the same port (after `cut` or `stall`)."""
        self._call(self._restore())

    def stop(self) -> None:
        """Close everything and end the proxy's thread."""
        with contextlib.suppress(RuntimeError):
            self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    # -- the proxy, on its own loop ---------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._close_all()

    async def _set_stalled(self, stalled: bool) -> None:
        self.stalled = stalled

    async def _restore(self) -> None:
        if self.stalled:
            self.stalled = False
            for writer in list(self._stalled_writers):
                writer.close()
            self._stalled_writers.clear()
        if self._server is None:
            await self._listen()

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        self._stalled_writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        if self.stalled:
            self._stalled_writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        if self.stalled:
            self._stalled_writers.add(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer, (writer, up_writer)),
            self._pump(up_reader, writer, (writer, up_writer)),
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if self.stalled:
                    for side in pair:  # a connection that saw a stall cannot resume
                        self._stalled_writers.add(side)
                    continue  # dropped on the floor
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for side in pair:
                side.close()
                self._writers.discard(side)
