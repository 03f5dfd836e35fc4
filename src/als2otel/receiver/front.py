"""The ALS port's front: TLS ended here, and connections handed over by the workers' parent.

gRPC's Python server does TLS itself but says nothing of a handshake it refused: a
client without a valid certificate would vanish without a trace. So with
``receiver.tls`` the port is this front: it does each TLS handshake (counted in
``als2otel_tls_handshakes_failed_total{reason}`` and logged, rate-limited, when it
fails), then relays the connection's bytes both ways to the gRPC server, which listens
on a Unix socket in a directory only this process may enter. Each relayed connection
reaches gRPC from a socket named after the client's address, so the streams' logs
still name the client.

With workers, the parent accepts every connection and hands it to the worker with the
least load (:mod:`..workers`); the worker's front takes it (:meth:`Front.take`) and relays
it the same way, with TLS or without. A worker over its share of the load sheds a
connection (:meth:`Front.goaway`): the front puts an HTTP/2 GOAWAY between two of the
frames gRPC sends the client, so the client opens its next streams on a new connection,
which the parent deals again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any

from ..net import split_hostport
from ..settings import TlsConfig
from ..stats import LogLimiter, Stats
from ..tls import CertificateFiles

log = logging.getLogger("als2otel.receiver")

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client has to complete its TLS handshake."""

MAX_PENDING_HANDSHAKES = 64
"""TLS handshakes under way at once. Each holds ~256 KiB of buffers (asyncio's) until it ends; at
the bound, the one that has waited longest is cut to make room (``reason="overload"``): a real
client's handshake takes a network round trip or two, so a flood of silent connections cannot
hold the port, nor the process's memory."""
CHUNK = 256 * 1024

GOAWAY = bytes((0, 0, 8, 0x7, 0, 0, 0, 0, 0)) + (2**31 - 1).to_bytes(4, "big") + bytes(4)
"""An HTTP/2 GOAWAY frame (RFC 9113, section 6.8) with NO_ERROR and the largest stream id as the
last one processed: the client opens no new stream on the connection, and those open go on."""


_CERTIFICATE = {
    "CERTIFICATE_VERIFY_FAILED",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE",
    "NO_CERTIFICATE_RETURNED",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
}
_VERSION = {"UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"}
_NOT_TLS = {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL"}


def _reason(error: BaseException) -> str:
    """Why a handshake failed, as one of a small fixed set of label values."""
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ssl.SSLCertVerificationError):
        return "certificate"
    if isinstance(error, ssl.SSLError):
        code = error.reason or ""
        if code in _CERTIFICATE:
            return "certificate"
        if code in _VERSION:
            return "version"
        if code in _NOT_TLS:
            return "not_tls"  # plaintext (an HTTP/2 preface, say) sent to the TLS port
        return "protocol"
    return "closed"  # the client went away mid-handshake


_DETAILS = {
    "timeout": f"no handshake within {HANDSHAKE_TIMEOUT:g} s",
    "closed": "the client closed the connection during the handshake",
    "overload": f"cut to make room: {MAX_PENDING_HANDSHAKES} handshakes were under way",
}


class Front:
    """The ALS port's listener (or taker of handed connections), relaying to the gRPC server at
    :attr:`backend`; TLS when ``config`` is given."""

    def __init__(self, listen: str, config: TlsConfig | None, stats: Stats, limiter: LogLimiter) -> None:
        self._listen = listen
        self._files = CertificateFiles(config) if config is not None else None
        self._min_version = config.min_version if config is not None else ""
        self._context = self._files.mutual_context(self._min_version) if self._files is not None else None
        self._stats = stats
        self._limiter = limiter
        self._directory = Path(tempfile.mkdtemp(prefix="als2otel-"))  # 0700: this process only
        self.backend = str(self._directory / "als.sock")
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Transport] = set()
        # Handshakes under way, oldest first (a dict keeps order), and those cut to make room.
        self._handshaking: dict[asyncio.Task[Any], None] = {}
        self._cut: set[asyncio.Task[Any]] = set()
        self._numbers = itertools.count()
        self._handed: set[asyncio.Future[Any]] = set()
        self._relays: dict[str, _Relay] = {}  # by the name of the socket each reaches gRPC from
        self.port = 0

    async def start(self) -> int:
        hostport = split_hostport(self._listen)
        assert hostport is not None  # validated with the configuration
        host, port = hostport
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), host or None, port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def take(self, sock: socket.socket) -> None:
        """Serve a connection accepted elsewhere (the workers' parent handed it over)."""
        sock.setblocking(False)
        self._handed.add(
            asyncio.ensure_future(
                asyncio.get_running_loop().connect_accepted_socket(lambda: _Connection(self), sock)
            )
        )
        for done in [task for task in self._handed if task.done()]:
            self._handed.discard(done)

    @property
    def open_connections(self) -> int:
        """Connections open now, handed-over ones still being set up included."""
        return len(self._connections) + sum(1 for task in self._handed if not task.done())

    def goaway(self, peer: str, grace: float) -> bool:
        """Ask the client of the relayed connection gRPC names ``peer`` to open its next streams on a
        new connection (a GOAWAY, at the next frame boundary); the connection is closed ``grace``
        seconds later, if the client has not closed it by then. False if no such connection is open,
        or it was asked already."""
        relay = self._relays.get(peer.removeprefix("unix-abstract:").partition("%20")[0])
        if relay is None or relay.closing is not None:
            return False
        relay.goaway()
        relay.closing = asyncio.get_running_loop().call_later(grace, relay.writer.close)
        return True

    async def stop(self) -> None:
        """No new connections; those relayed already end when gRPC ends them."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def close(self) -> None:
        """Once gRPC has stopped: cut what is still open, remove the socket's directory."""
        for transport in list(self._connections):
            transport.abort()
        with contextlib.suppress(OSError):
            os.unlink(self.backend)
        with contextlib.suppress(OSError):
            self._directory.rmdir()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = writer.transport
        try:
            await self._serve(reader, writer)
        finally:
            await _close(writer)
            self._connections.discard(connection)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = "unknown"
        if isinstance(peer, tuple):
            client = f"ipv6:[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"ipv4:{peer[0]}:{peer[1]}"
        if self._files is not None and not await self._handshake(reader, writer, client):
            return
        await self._relay(reader, writer, client)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str
    ) -> bool:
        """The TLS handshake, bounded and counted; False (logged) if it failed."""
        files = self._files
        assert files is not None
        fresh = files.reload(lambda: files.mutual_context(self._min_version), "ALS")
        context = self._context = fresh or self._context
        assert context is not None
        handshake = asyncio.current_task()
        assert handshake is not None
        if len(self._handshaking) >= MAX_PENDING_HANDSHAKES:
            oldest = next(iter(self._handshaking))
            del self._handshaking[oldest]
            self._cut.add(oldest)
            oldest.cancel()  # its start_tls closes the connection
        self._handshaking[handshake] = None
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await writer.start_tls(context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT + 1)
        except (OSError, TimeoutError, EOFError, asyncio.CancelledError) as error:
            cut = handshake in self._cut
            if isinstance(error, asyncio.CancelledError) and not cut:
                raise  # the front is stopping
            reason = "overload" if cut else _reason(error)
            self._stats.tls_handshakes_failed.inc(reason)
            detail = _DETAILS.get(reason) or str(error) or type(error).__name__
            self._limiter.warning(
                f"tls_{reason}", "TLS handshake from %s refused (%s): %s", client, reason, detail
            )
            return False
        finally:
            self._handshaking.pop(handshake, None)
            self._cut.discard(handshake)
        return True

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        name = f"als2otel-{os.getpid()}-{next(self._numbers)}"
        try:
            # Named after the client (an abstract name, no file): gRPC's peer() for its streams.
            upstream.bind(f"\0{name} {client}")
            upstream.setblocking(False)
            await asyncio.get_running_loop().sock_connect(upstream, self.backend)
        except OSError:
            upstream.close()
            log.warning("the ALS server behind the front is not reachable; closing %s's connection", client)
            return
        up_reader, up_writer = await asyncio.open_unix_connection(sock=upstream, limit=CHUNK)
        relay = self._relays[name] = _Relay(writer)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer, relay))
        finally:
            del self._relays[name]
            if relay.closing is not None:
                relay.closing.cancel()
            await _close(up_writer)


class _Relay:
    """What gRPC writes to one client, frame by frame: where a frame of the front's own may go in."""

    __slots__ = ("_goaway", "_header", "_left", "closing", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.closing: asyncio.TimerHandle | None = None
        self._left = 0  # bytes of the current frame's payload not yet written
        self._header = b""  # the part of the next frame's 9-byte header written so far
        self._goaway = False  # asked for, waiting for a frame boundary

    def goaway(self) -> None:
        if self._left or self._header:
            self._goaway = True
        else:
            self.writer.write(GOAWAY)

    def write(self, data: bytes) -> None:
        """Write what gRPC sent, with a GOAWAY asked for at the first frame boundary in it."""
        boundary = self._walk(data)
        if self._goaway and boundary is not None:
            self._goaway = False
            self.writer.write(data[:boundary])
            self.writer.write(GOAWAY)
            data = data[boundary:]
        self.writer.write(data)

    def _walk(self, data: bytes) -> int | None:
        """Follow the frames through ``data``: the offset of the first boundary in it, if any."""
        first: int | None = None
        position, end = 0, len(data)
        while True:
            step = min(self._left, end - position)
            position += step
            self._left -= step
            if self._left:
                return first
            if first is None and not self._header:
                first = position
            if position == end:
                return first
            piece = data[position : position + 9 - len(self._header)]
            position += len(piece)
            self._header += piece
            if len(self._header) == 9:
                self._left = int.from_bytes(self._header[:3], "big")
                self._header = b""


class _Connection(asyncio.StreamReaderProtocol):
    """A client's connection, known to the front from its first moment (so a stop can cut it)."""

    def __init__(self, front: Front) -> None:
        super().__init__(asyncio.StreamReader(limit=CHUNK), front._accept)
        self._front = front

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The TCP connection (under TLS once the handshake is done); _accept forgets it at its end.
        assert isinstance(transport, asyncio.Transport)
        self._front._connections.add(transport)
        super().connection_made(transport)


CLOSE_TIMEOUT = 2.0
"""Seconds a closing connection may take to say goodbye (TLS close_notify) before it is cut."""


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close gracefully, what was written delivered first; cut it if the peer does not answer."""
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()


async def _pump(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, relay: _Relay | None = None
) -> None:
    """Bytes from ``source`` to ``sink`` (through ``relay``, which follows the frames, when given)
    until either end closes; then the other is closed too."""
    write = sink.write if relay is None else relay.write
    try:
        while data := await source.read(CHUNK):
            write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()  # what was written is still sent first
