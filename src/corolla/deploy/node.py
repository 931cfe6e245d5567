"""A long-lived node (`corolla node`): one stream to the coordinator, the data owner's ClientApp.

The node keeps one bidirectional stream open. Messages are pushed to it the moment they exist;
it runs them one at a time in a worker thread (so heartbeats keep flowing during training) and
streams each reply back. When the stream breaks it reconnects with exponential backoff and
jitter, asking for the same node id. Replies it has made are kept (a few, bounded in bytes) so a
message re-sent after a coordinator restart is answered without training twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import random
import time
from collections import OrderedDict
from typing import Any

import grpc

from .. import buffers
from ..client.app import ClientApp, run_message
from ..client.context import Context
from ..message import Message
from ..records import Config
from ..transport.streams import NODE_METHOD, tune_malloc
from ..wire import codec
from ..wire import corolla_pb2 as pb
from .peer import Peer, PeerClosed, PeerRefused, connect, handshake

log = logging.getLogger("corolla.node")


#: the order of a round's stages, for `NodeStateHistory`
STAGE_ORDER = {"train": 0, "evaluate": 1}


class NodeStateHistory:
    """A node's `Context.state` for one run, as it was after each of the last few stages.

    A message re-sent for a stage the node already ran (its driver died and resumed from the
    last checkpoint) starts from the state before that stage, not after it, so the resumed run
    ends exactly where an uninterrupted one would.
    """

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._after: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()

    def before(self, stage: tuple[int, int]) -> dict[str, Any]:
        earlier = [k for k in self._after if k < stage]
        return copy.deepcopy(self._after[max(earlier)]) if earlier else {}

    def after(self, stage: tuple[int, int], state: dict[str, Any]) -> None:
        for k in [k for k in self._after if k >= stage]:
            del self._after[k]  # a stage run again replaces what came after it
        self._after[stage] = state
        while len(self._after) > self.keep:
            self._after.popitem(last=False)


class NodeRefused(RuntimeError):
    """The coordinator will not take this node (unknown key, other wire version...)."""


class Node:
    def __init__(
        self,
        app: ClientApp,
        server: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        key: Any = None,
        node_config: Config | None = None,
        node_id: int | None = None,
        name: str = "",
        chunk_size: int = codec.DEFAULT_CHUNK,
        max_backoff: float = 10.0,
        connect_timeout: float = 10.0,
        keep_replies_bytes: int = 256 << 20,
    ):
        self.app, self.server, self.credentials, self.key = app, server, credentials, key
        self.node_config: Config = dict(node_config or {})
        if node_id is None and "partition-id" in self.node_config:
            node_id = int(self.node_config["partition-id"])  # the id simulation gives that partition
        self.node_id = node_id
        self.name = name
        self.chunk_size = chunk_size
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self.keep_replies_bytes = keep_replies_bytes
        self.states: dict[str, NodeStateHistory] = {}  # run id -> Context.state by stage
        self.replies: OrderedDict[str, Message] = OrderedDict()
        self.running: dict[str, asyncio.Future] = {}
        self._pulls: dict[str, asyncio.Event] = {}  # reply id -> set when the coordinator pulls it
        self.handled = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="corolla-app")
        self._rng = random.Random()  # reconnect jitter only: it must differ between nodes, so not seeded

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set; reconnect on every break. NodeRefused when refused for good."""
        tune_malloc()
        stop = stop or asyncio.Event()
        attempt = 0
        while not stop.is_set():
            try:
                welcomed = await self._session(stop)
                if welcomed:
                    attempt = 0
            except PeerRefused as e:
                if e.final:
                    raise NodeRefused(f"the coordinator at {self.server} refused this node: {e.code}: {e.reason}")
                log.warning("refused by %s: %s: %s; retrying", self.server, e.code, e.reason)
            except (PeerClosed, TimeoutError, codec.WireError, grpc.aio.AioRpcError) as e:
                log.warning("connection to %s lost: %s", self.server, e)
            if stop.is_set():
                break
            delay = min(self.max_backoff, 0.25 * 2**attempt) * self._rng.uniform(0.5, 1.0)
            attempt += 1
            log.info("reconnecting to %s in %.1f s", self.server, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _session(self, stop: asyncio.Event) -> bool:
        async with connect(self.server, NODE_METHOD, self.credentials, self.connect_timeout) as (call, peer):
            hello = pb.Hello(role="node", properties=codec.to_entries(self.node_config), name=self.name)
            if self.node_id is not None:
                hello.has_node_id, hello.node_id = True, self.node_id
            welcome = await handshake(peer, hello, self.key, self.connect_timeout)
            self.node_id = welcome.node_id
            log.info("node %d connected to %s", self.node_id, self.server)
            return await self._serve(peer, welcome, call, stop)

    async def _serve(self, peer: Peer, welcome: pb.Welcome, call: Any, stop: asyncio.Event) -> bool:
        hb = welcome.heartbeat_s or 2.0
        loop = asyncio.get_running_loop()
        beats = loop.create_task(self._heartbeats(peer, hb, call))
        stopper = loop.create_task(stop.wait())
        reader = loop.create_task(self._read(peer))
        try:
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()  # raises what broke the stream
        finally:
            for t in (beats, stopper, reader):
                t.cancel()
            call.cancel()
            peer.closed = True
            for pulled in self._pulls.values():
                pulled.set()  # replies waiting to be pulled give up; they are kept for a re-send
        return True

    async def _heartbeats(self, peer: Peer, hb: float, call: Any) -> None:
        while True:
            await asyncio.sleep(hb)
            buffers.pool.trim()  # a node between runs does not keep last run's model buffers
            if time.monotonic() - peer.last_seen > 3 * hb:
                log.warning("coordinator %s silent for %.1f s; reconnecting", self.server, 3 * hb)
                call.cancel()
                return
            if not peer.lock.locked():
                try:
                    await peer.send(heartbeat=pb.Heartbeat(sent=time.time()))
                except PeerClosed:
                    return

    async def _read(self, peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        while True:
            kind, f = await peer.recv()
            if kind == "frame":
                which = f.WhichOneof("body")
                if which == "refused":
                    raise PeerRefused(f.refused.code, f.refused.reason)
                if which == "pull":
                    self._pulls.setdefault(f.pull.message_id, asyncio.Event()).set()
                continue
            if kind != "header":
                raise codec.WireError("unexpected", f"a {kind} outside a message")
            h = f.header
            msg, end = await peer.read_message(f)
            if not end.ok:
                continue
            loop.create_task(self._answer(peer, msg, codec.from_entries(h.run_config), int(h.seed)))
            del msg  # the task holds it; this frame must not keep a model alive during the next one

    async def _answer(self, peer: Peer, msg: Message, run_config: Config, seed: int) -> None:
        mid = msg.metadata.message_id
        reply = self.replies.get(mid)
        if reply is None:
            fut = self.running.get(mid)
            if fut is None:
                fut = self.running[mid] = asyncio.get_running_loop().run_in_executor(
                    self._pool, self._handle, msg, run_config, seed
                )
            try:
                reply = await asyncio.shield(fut)
            finally:
                self.running.pop(mid, None)
            self._keep(mid, reply)
        try:
            await self._send_reply(peer, reply)
        except PeerClosed:
            log.info("reply to %s not sent (stream closed); kept for when it is asked again", mid)

    async def _send_reply(self, peer: Peer, reply: Message) -> None:
        """Header, then (once the coordinator pulls it) the payload, then the end.

        Waiting for the pull keeps a reply queued behind a busy driver here, in the reply's own
        arrays, instead of in the coordinator's buffers. The stream ending wakes the wait."""
        h = codec.header_of(reply)
        pulled = self._pulls.setdefault(h.message_id, asyncio.Event()) if h.payload_bytes else None

        async def unit() -> None:
            await peer._send(codec.frame_bytes(header=h))
            if pulled is not None:
                await pulled.wait()
                if peer.closed:
                    raise PeerClosed("stream closed before the coordinator pulled the reply")
            for chunk in codec.payload_chunks(reply.content.arrays, self.chunk_size):
                await peer._send(chunk)
            await peer._send(codec.frame_bytes(end=pb.End(message_id=h.message_id, ok=True)))

        try:
            await peer.exclusively(unit)
        finally:
            self._pulls.pop(h.message_id, None)

    def _handle(self, msg: Message, run_config: Config, seed: int) -> Message:
        run_id = msg.metadata.run_id
        history = self.states.setdefault(run_id, NodeStateHistory())
        stage = (msg.metadata.round, STAGE_ORDER.get(msg.kind, len(STAGE_ORDER)))
        ctx = Context(
            node_id=int(self.node_id if self.node_id is not None else msg.metadata.dst),
            node_config=dict(self.node_config),
            run_config=run_config,
            state=history.before(stage),
            run_id=run_id,
            seed=seed,
            round=msg.metadata.round,
        )
        t0 = time.perf_counter()
        reply = run_message(self.app, msg, ctx)
        history.after(stage, ctx.state)
        self.handled += 1
        log.info(
            "%s for run %s round %d: %s in %.2f s",
            msg.kind,
            run_id,
            msg.metadata.round,
            "ok" if reply.ok else reply.error,
            time.perf_counter() - t0,
        )
        return reply

    def _keep(self, mid: str, reply: Message) -> None:
        """Keep the latest replies within the byte budget; one larger than the budget is not kept
        (a re-sent message for it is trained again), so a node holds one model, not two."""
        if reply.content.arrays.nbytes > self.keep_replies_bytes:
            return
        self.replies[mid] = reply
        total = sum(r.content.arrays.nbytes for r in self.replies.values())
        while len(self.replies) > 16 or total > self.keep_replies_bytes:
            _, old = self.replies.popitem(last=False)
            total -= old.content.arrays.nbytes
