"""One end of a corolla stream: framed reads, whole-unit writes, deadlines on every wait.

A unit is a header frame, its payload chunks and its end frame; `Peer.write_unit` holds the
write lock for the whole unit so two senders never interleave on one stream. Reads go through
a `FrameReader`, which validates every frame and header before anything is allocated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from ..message import Message
from ..transport import credentials as cred
from ..transport.streams import channel_options
from ..wire import codec
from ..wire import corolla_pb2 as pb

#: zero bytes to finish a payload whose source died, so the stream's framing stays intact
_PAD = bytes(1 << 20)


class PeerClosed(ConnectionError):
    """The other side closed the stream or the connection broke."""


class Peer:
    def __init__(
        self,
        read: Callable[[], Awaitable[Any]],
        write: Callable[[bytes], Awaitable[None]],
        limits: codec.Limits,
        label: str,
    ):
        self._read, self._write = read, write
        self.reader = codec.FrameReader(limits)
        self.lock = asyncio.Lock()
        self.label = label
        self.last_seen = time.monotonic()
        self.closed = False

    # -- reading --------------------------------------------------------------------------
    async def recv_raw(self, timeout: float | None = None, waiting_for: str = "a frame") -> bytes:
        try:
            data = await asyncio.wait_for(self._read(), timeout) if timeout else await self._read()
        except asyncio.TimeoutError:
            raise TimeoutError(f"{self.label}: no {waiting_for} within {timeout:.0f} s") from None
        except grpc.aio.AioRpcError as e:
            self.closed = True
            raise PeerClosed(f"{self.label}: {e.code().name}: {e.details()}") from None
        except Exception as e:  # noqa: BLE001 - a finished or cancelled RPC raises grpc's internal errors
            self.closed = True
            raise PeerClosed(f"{self.label}: cannot read: {type(e).__name__}: {e}") from None
        if data is grpc.aio.EOF or data is None:
            self.closed = True
            self.reader.close()  # WireError('truncated') when a unit was open
            raise PeerClosed(f"{self.label}: stream ended")
        self.last_seen = time.monotonic()
        return data

    async def recv(self, timeout: float | None = None, waiting_for: str = "a frame") -> tuple[str, Any]:
        """The next event: ("frame" | "header" | "chunk" | "end", value)."""
        return self.reader.feed(await self.recv_raw(timeout, waiting_for))

    async def expect(self, body: str, timeout: float, waiting_for: str) -> pb.Frame:
        """The next control frame, which must carry `body` (a `Refused` is raised as PeerRefused)."""
        kind, value = await self.recv(timeout, waiting_for)
        if kind != "frame":
            raise codec.WireError("unexpected", f"{self.label}: expected {waiting_for}, got a {kind}")
        which = value.WhichOneof("body")
        if which == "refused":
            raise PeerRefused(value.refused.code, value.refused.reason)
        if which != body:
            raise codec.WireError("unexpected", f"{self.label}: expected {waiting_for}, got {which}")
        return value

    async def read_message(self, header_frame: pb.Frame, timeout: float | None = None) -> tuple[Message, pb.End]:
        """Assemble the payload that follows `header_frame` into a Message (arrays preallocated)."""
        h = header_frame.header
        asm = codec.ArrayAssembler(h)
        while True:
            kind, value = await self.recv(timeout, f"the payload of message {h.message_id}")
            if kind == "chunk":
                asm.write(value)
            elif kind == "end":
                if not value.ok:
                    return codec.message_of(h, None), value
                return codec.message_of(h, asm.arrays()), value
            else:  # the reader only gives chunks and the end inside a unit
                raise codec.WireError("unexpected", f"{self.label}: {kind} inside message {h.message_id}")

    # -- writing --------------------------------------------------------------------------
    async def send(self, **body: Any) -> None:
        data = codec.frame_bytes(**body)
        await self.exclusively(self._send, data)

    async def exclusively(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``fn(*args)`` holding the write lock, to the end even if the caller is cancelled.

        gRPC cancels a handler whose own stream ends; were that handler writing a unit to
        another peer, a unit cut in half would break that peer's framing for good.
        """

        async def locked() -> Any:
            async with self.lock:
                return await fn(*args)

        return await asyncio.shield(asyncio.ensure_future(locked()))

    async def _send(self, data: bytes) -> None:
        try:
            await self._write(data)
        except Exception as e:  # noqa: BLE001 - a finished or cancelled RPC raises grpc's internal errors
            self.closed = True
            raise PeerClosed(f"{self.label}: cannot write: {type(e).__name__}: {e}") from None

    async def write_unit(self, header: bytes, chunks: Iterable[bytes] | AsyncIterable[bytes], end: bytes) -> None:
        """Write a header, its chunks and its end as one unit (never cut in half)."""
        await self.exclusively(self._write_unit, header, chunks, end)

    async def _write_unit(self, header: bytes, chunks: Any, end: bytes) -> None:
        await self._send(header)
        if hasattr(chunks, "__aiter__"):
            async for c in chunks:
                await self._send(c)
        else:
            for c in chunks:
                await self._send(c)
        await self._send(end)

    async def pad(self, nbytes: int) -> None:
        """Send `nbytes` of zeros (the caller holds the lock): keeps the framing when a payload's source died."""
        while nbytes > 0:
            n = min(nbytes, len(_PAD))
            await self._send(_PAD if n == len(_PAD) else _PAD[:n])
            nbytes -= n


class PeerRefused(ConnectionError):
    """The coordinator refused this peer; `code` says why (``unauthorized``, ``version``, ...)."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason

    @property
    def final(self) -> bool:
        """Another try will not help (a node id in use may be free again later)."""
        return self.code in ("unauthorized", "version", "protocol")


def tls_hint(credentials: Any) -> str:
    """What to check when a coordinator cannot be reached (a TLS mismatch looks like no answer)."""
    if credentials is None:
        return (
            "is it running at that address, and is it plaintext? This connection is plaintext (--insecure); "
            "a TLS coordinator needs --root-cert CA.pem instead"
        )
    return (
        "is it running at that address, and does it serve TLS with a certificate signed by the --root-cert CA "
        "for this host name? A plaintext coordinator (serve --insecure) needs --insecure here"
    )


@asynccontextmanager
async def connect(server: str, method: str, credentials: Any, timeout: float) -> AsyncIterator[tuple[Any, Peer]]:
    """A channel to the coordinator and one stream on it, as a `Peer`; closed on exit."""
    opts = channel_options(codec.Limits().max_chunk)
    channel = (
        grpc.aio.secure_channel(server, credentials, options=opts)
        if credentials is not None
        else grpc.aio.insecure_channel(server, options=opts)
    )
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"coordinator {server} not reachable within {timeout:.0f} s; {tls_hint(credentials)}"
            ) from None
        call = channel.stream_stream(method)()
        yield call, Peer(call.read, call.write, codec.Limits(), f"coordinator {server}")
    finally:
        await channel.close(grace=None)


async def handshake(peer: Peer, hello: pb.Hello, key: Any, timeout: float) -> pb.Welcome:
    """Say hello, answer the coordinator's challenge with `key` when it asks, return its welcome."""
    hello.version = codec.WIRE_VERSION
    if key is not None:
        hello.public_key = cred.public_bytes(key)
    await peer.send(hello=hello)
    kind, f = await peer.recv(timeout, "the coordinator's answer to hello")
    which = f.WhichOneof("body") if kind == "frame" else kind
    if which == "challenge":
        if key is None:
            raise PeerRefused("unauthorized", f"the coordinator asks {hello.role}s for a key; pass --key FILE")
        c = f.challenge
        await peer.send(auth=pb.Auth(signature=cred.sign_challenge(key, bytes(c.nonce), hello.role, c.coordinator_id)))
        kind, f = await peer.recv(timeout, "the coordinator's welcome")
        which = f.WhichOneof("body") if kind == "frame" else kind
    if which == "refused":
        raise PeerRefused(f.refused.code, f.refused.reason)
    if which != "welcome":
        raise codec.WireError("unexpected", f"expected a welcome, got {which}")
    return f.welcome
