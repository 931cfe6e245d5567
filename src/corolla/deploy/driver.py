"""The driver: a `Grid` backed by a coordinator, so a workflow runs unchanged in deployment.

The workflow is plain synchronous code; the gRPC stream lives on an asyncio loop in a
background thread. `send` groups messages that share one `Arrays` object into one header with
many destinations, so a round's global arrays cross the driver's connection once. Replies are
assembled as their chunks arrive (straight into preallocated arrays) and handed to the workflow
one by one; at most `max_queued_bytes` of them wait, beyond that the stream is not read, and
gRPC flow control holds the senders back (memory O(model), whatever the number of nodes).

The connection heals itself: when the stream breaks (coordinator restarted, network), the
driver reconnects with backoff and re-sends every message still waiting for a reply, with the
same ids; nodes answer re-sent messages from the replies they kept, without training twice.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from ..grid import timeout_reply
from ..message import Error, Message, Metadata
from ..records import Arrays, Config
from ..transport.streams import DRIVER_METHOD, event_loop, tune_malloc
from ..wire import codec
from ..wire import corolla_pb2 as pb
from .peer import Peer, PeerClosed, PeerRefused, connect, handshake, tls_hint

log = logging.getLogger("corolla.driver")


class DriverError(RuntimeError):
    """The coordinator cannot be used: refused, unreachable past the deadline, too few nodes."""


class NodeTable(Sequence[int]):
    """The connected nodes' ids (sorted) with their properties: a `NodeView` for selectors."""

    def __init__(self, infos: Sequence[pb.NodeInfo]):
        self._ids = [int(i.node_id) for i in infos]
        self._props = {int(i.node_id): codec.from_entries(i.properties) for i in infos}
        self.infos = list(infos)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: Any) -> Any:
        return self._ids[index]

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)

    def __repr__(self) -> str:
        return f"NodeTable({self._ids})"

    def properties(self, node_id: int) -> Mapping[str, Any]:
        return self._props[node_id]


@dataclass
class _Group:
    """Messages sharing arrays and header fields: one header, many destinations, one payload."""

    template: Message
    ids: dict[str, int]  # message id -> destination, for those still waiting for a reply
    arrays: Arrays = field(default_factory=Arrays)


class DeployGrid:
    def __init__(
        self,
        server: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        key: Any = None,
        run_config: Config | None = None,
        seed: int = 0,
        min_nodes: int = 1,
        wait_nodes_s: float = 60.0,
        chunk_size: int = codec.DEFAULT_CHUNK,
        connect_timeout: float = 10.0,
        reconnect_for: float = 120.0,
        max_queued_bytes: int = 256 << 20,
    ):
        self.server = server
        self.credentials, self.key = credentials, key
        self.run_config: Config = dict(run_config or {})
        self.seed = seed
        self.min_nodes, self.wait_nodes_s = min_nodes, wait_nodes_s
        self.chunk_size = chunk_size
        self.connect_timeout, self.reconnect_for = connect_timeout, reconnect_for
        self.max_queued_bytes = max_queued_bytes
        self._replies: queue.Queue = queue.Queue()
        self._queued = 0  # bytes of replies assembled and not yet folded by the workflow
        self._big = False
        self._groups: dict[int, _Group] = {}
        self._by_id: dict[str, int] = {}  # message id -> group key
        self._group_keys = itertools.count()
        self._requests = itertools.count(1)
        self._answers: dict[int, asyncio.Future] = {}
        self._peer: Peer | None = None
        self._closing = False
        self._last_count: int | None = None  # nodes seen by the last node_ids()
        self._reconnected = False
        self._rng = random.Random()  # reconnect jitter only
        tune_malloc()
        self._loop = event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="corolla-driver", daemon=True)
        self._thread.start()
        self._connected = asyncio.Event()  # set and cleared on the loop thread only
        self._room = asyncio.Event()
        self._room.set()
        self._fatal: BaseException | None = None
        self._conn_task = asyncio.run_coroutine_threadsafe(self._connection(), self._loop)
        self._wait_connected(connect_timeout, first=True)

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- connection -----------------------------------------------------------------------
    def _wait_connected(self, timeout: float, first: bool = False) -> None:
        end = time.monotonic() + timeout
        while not self._connected.is_set():
            if self._fatal is not None:
                raise self._fatal
            if time.monotonic() > end:
                what = "connect to" if first else "reconnect to"
                raise DriverError(
                    f"could not {what} the coordinator at {self.server} within {timeout:.0f} s; "
                    f"{tls_hint(self.credentials)}"
                )
            time.sleep(0.02)

    async def _connection(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                await self._session()
                attempt = 0
            except PeerRefused as e:
                if e.final:
                    self._fatal = DriverError(f"the coordinator at {self.server} refused this driver: {e}")
                    return
                log.warning("refused by %s: %s", self.server, e)
            except (PeerClosed, TimeoutError, codec.WireError, grpc.aio.AioRpcError, OSError) as e:
                if not self._closing:
                    log.warning("connection to coordinator %s lost: %s", self.server, e)
            self._connected.clear()
            self._peer = None
            for fut in self._answers.values():
                if not fut.done():
                    fut.set_exception(PeerClosed("connection lost"))
            self._answers.clear()
            if self._closing:
                return
            delay = min(5.0, 0.2 * 2**attempt) * self._rng.uniform(0.5, 1.0)
            attempt += 1
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        async with connect(self.server, DRIVER_METHOD, self.credentials, self.connect_timeout) as (call, peer):
            await handshake(peer, pb.Hello(role="driver"), self.key, self.connect_timeout)
            if self._peer is None and self._last_count is not None:
                self._reconnected = True
            self._peer = peer
            reader = asyncio.get_running_loop().create_task(self._read(peer))
            await self._resend(peer)
            self._connected.set()
            log.info("driver connected to %s", self.server)
            try:
                await reader
            finally:
                call.cancel()

    async def _read(self, peer: Peer) -> None:
        while True:
            if self._queued >= self.max_queued_bytes or (self._queued and self._big):
                self._room.clear()
                await self._room.wait()  # the workflow has not folded what it has; hold the stream
            kind, f = await peer.recv()
            if kind == "header":
                msg, end = await peer.read_message(f)
                if not end.ok:
                    reason = end.reason or "the reply was cut off"
                    code, _, text = reason.partition(": ")
                    msg = Message(kind=msg.kind, metadata=msg.metadata, error=Error(code, text))
                self._deliver(msg)
                del msg  # queued; this frame must not keep a model alive while the next is assembled
            elif kind == "frame":
                which = f.WhichOneof("body")
                if which == "refused" and not f.request_id:
                    raise PeerRefused(f.refused.code, f.refused.reason)
                fut = self._answers.pop(f.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(f)
            else:
                raise codec.WireError("unexpected", f"a {kind} outside a message")

    def _deliver(self, msg: Message) -> None:
        mid = msg.metadata.reply_to
        key = self._by_id.pop(mid, None)
        if key is None:
            return  # a reply nobody waits for (timed out, or a duplicate after a re-send)
        g = self._groups.get(key)
        if g is not None:
            g.ids.pop(mid, None)
            if not g.ids:
                del self._groups[key]
        size = msg.content.arrays.nbytes
        self._big = size >= self.max_queued_bytes // 2  # large models: one reply at a time
        self._queued += size
        self._replies.put((mid, msg, size))

    def _release(self, size: int) -> None:
        self._queued -= size
        if self._queued < self.max_queued_bytes and not (self._queued and self._big):
            self._room.set()

    async def _resend(self, peer: Peer) -> None:
        for g in list(self._groups.values()):
            if g.ids:
                await self._write_group(peer, g)

    async def _write_group(self, peer: Peer, g: _Group) -> None:
        h = codec.header_of(
            g.template,
            dsts=list(g.ids.values()),
            dst_message_ids=list(g.ids),
            run_config=self.run_config,
            seed=self.seed,
        )
        await peer.write_unit(
            codec.frame_bytes(header=h),
            codec.payload_chunks(g.arrays, self.chunk_size),
            codec.frame_bytes(end=pb.End(message_id=h.message_id, ok=True)),
        )

    async def _request(self, timeout: float, **body: Any) -> pb.Frame:
        peer = self._peer
        if peer is None:
            raise PeerClosed("not connected")
        rid = next(self._requests)
        fut = asyncio.get_running_loop().create_future()
        self._answers[rid] = fut
        await peer.send(request_id=rid, **body)
        return await asyncio.wait_for(fut, timeout)

    def request(self, timeout: float = 30.0, **body: Any) -> pb.Frame:
        """Send a control request and wait for its answer, riding out one reconnect."""
        end = time.monotonic() + self.reconnect_for
        while True:
            self._wait_connected(max(0.0, end - time.monotonic()))
            try:
                return self._call(self._request(timeout, **body), timeout + 5)
            except PeerClosed:
                if time.monotonic() > end:
                    raise DriverError(f"lost the coordinator at {self.server} and could not get it back")
                time.sleep(0.1)
            except (asyncio.TimeoutError, TimeoutError):
                raise DriverError(f"the coordinator at {self.server} did not answer within {timeout:.0f} s") from None

    # -- Grid -----------------------------------------------------------------------------
    def node_ids(self) -> NodeTable:
        """The connected nodes. The first call waits up to `wait_nodes_s` for `min_nodes` of them;
        later calls take whoever is connected (after a reconnect, giving the nodes a moment to
        come back), so a run goes on when nodes leave."""
        if self._last_count is None:
            need, wait = self.min_nodes, self.wait_nodes_s
        else:
            need, wait = max(1, self._last_count), (3.0 if self._reconnected else 0.0)
        self._reconnected = False
        nodes = self._list_nodes(need, wait)
        if not nodes and self._last_count is not None:
            nodes = self._list_nodes(1, self.wait_nodes_s)
        if len(nodes) < (self.min_nodes if self._last_count is None else 1):
            raise DriverError(
                f"only {len(nodes)} of the {max(1, self.min_nodes)} nodes needed are connected to {self.server} "
                f"after {self.wait_nodes_s:.0f} s; start more nodes (corolla node --server {self.server} ...) "
                f"or lower --min-nodes"
            )
        self._last_count = len(nodes)
        return nodes

    def _list_nodes(self, need: int, wait: float) -> NodeTable:
        f = self.request(wait + 10, list_nodes=pb.ListNodes(min_nodes=need, wait_s=wait))
        return NodeTable(f.nodes.nodes)

    def send(self, messages: Sequence[Message]) -> list[str]:
        groups: dict[tuple, _Group] = {}
        for m in messages:
            if not m.metadata.message_id:
                raise ValueError("a message to send needs a message id (use Message.create)")
            md = m.metadata
            config = repr(sorted(m.content.config.items()))
            k = (id(m.content.arrays), m.kind, md.run_id, md.round, md.deadline, config)
            g = groups.get(k)
            if g is None:
                g = groups[k] = _Group(template=m, ids={}, arrays=m.content.arrays)
            g.ids[md.message_id] = md.dst
        self._call(self._add_groups(list(groups.values())))
        return [m.metadata.message_id for m in messages]

    async def _add_groups(self, groups: list[_Group]) -> None:
        for g in groups:
            key = next(self._group_keys)
            self._groups[key] = g
            for mid in g.ids:
                self._by_id[mid] = key
        peer = self._peer
        if peer is None:
            return  # sent when the connection is back
        try:
            for g in groups:
                await self._write_group(peer, g)
        except PeerClosed:
            pass  # the reconnect re-sends them

    def receive(self, message_ids: Sequence[str], timeout: float) -> Iterator[Message]:
        """Replies as they arrive. A reply counts against `max_queued_bytes` until the caller
        asks for the next one (it has folded it by then), so a large model's replies are held
        one at a time, not one being folded and another being assembled."""
        waiting = set(message_ids)
        end = time.time() + timeout
        held = 0
        try:
            while waiting:
                if self._fatal is not None:
                    raise self._fatal
                left = end - time.time()
                if left <= 0:
                    break
                try:
                    mid, msg, size = self._replies.get(timeout=min(left, 0.5))
                except queue.Empty:
                    continue
                if mid not in waiting:
                    self._loop.call_soon_threadsafe(self._release, size)
                    continue
                waiting.discard(mid)
                held = size
                yield msg
                del msg
                self._loop.call_soon_threadsafe(self._release, held)
                held = 0
        finally:
            if held:
                self._loop.call_soon_threadsafe(self._release, held)
            if waiting:
                self._loop.call_soon_threadsafe(self._forget, set(waiting))
        for mid in list(waiting):
            yield timeout_reply(self._lookup(mid), timeout)

    def _lookup(self, mid: str) -> Message:
        """The sent message `mid` (for its timeout reply)."""
        for g in self._groups.values():
            if mid in g.ids:
                t = g.template
                return Message(kind=t.kind, metadata=replace(t.metadata, dst=g.ids[mid], message_id=mid))
        return Message(kind="", metadata=Metadata(message_id=mid))

    def _forget(self, mids: set[str]) -> None:
        for mid in mids:
            key = self._by_id.pop(mid, None)
            g = self._groups.get(key) if key is not None else None
            if g is not None:
                g.ids.pop(mid, None)
                if not g.ids:
                    del self._groups[key]
        peer = self._peer
        if peer is not None:
            self._loop.create_task(self._cancel(peer, mids))

    async def _cancel(self, peer: Peer, mids: set[str]) -> None:
        try:
            await peer.send(cancel=pb.Cancel(message_ids=sorted(mids)))
        except PeerClosed:
            pass

    # -- runs -----------------------------------------------------------------------------
    def report_run(self, record: pb.RunRecord) -> None:
        """Tell the coordinator how the run is going (it persists it for `corolla runs --server`)."""
        try:
            self.request(30.0, run_update=pb.RunUpdate(run=record))
        except DriverError as e:
            log.warning("could not report run %s to the coordinator: %s", record.run_id, e)

    def list_runs(self) -> list[pb.RunRecord]:
        return list(self.request(30.0, list_runs=pb.ListRuns()).runs.runs)

    def close(self) -> None:
        self._closing = True

        async def stop() -> None:
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()

        try:
            self._call(stop(), 5)
        except Exception:  # noqa: BLE001 - closing must not raise
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> "DeployGrid":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
