"""A tiny TCP forwarder on 127.0.0.1 that can start late and be stopped.

It stands for a database server that is not reachable yet (booting, failing over):
until :meth:`LateProxy.start` is called nothing listens on its port, so connection
attempts are refused; afterwards every connection is forwarded to the real server.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.helpers import closed_port


class LateProxy:
    """Forward ``127.0.0.1:port`` to ``target_host:target_port`` once started.

    Args:
        target_host, target_port: the real server.
        port: the port to listen on (default: a free one).
    """

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or closed_port()
        self.accepted = 0
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Begin accepting and forwarding connections."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def start_after(self, delay: float) -> None:
        """Sleep ``delay`` seconds, then :meth:`start`."""
        await asyncio.sleep(delay)
        await self.start()

    async def stop(self) -> None:
        """Stop listening and cut every forwarded connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        for task in list(self._pipes):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(_pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst.close()
