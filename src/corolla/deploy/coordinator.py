"""The coordinator (`corolla serve`): node registry with liveness, message routing, persistence.

Nodes and drivers each hold one bidirectional stream. A driver's message for several nodes
crosses the driver's connection once (`Header.dsts`); the coordinator pushes its payload to each
node as it arrives, holding a window of it, not the model (`Payload`). A
node's reply is relayed chunk by chunk to the driver that sent the message, so the coordinator's
memory is O(chunks in flight), not O(model x nodes). Runs are persisted in a SQLite store.

Faults: a node whose stream breaks is dropped at once and every message it held turns into a
``node-lost`` error reply; a message for a node that is not connected waits for it until the
message's deadline (a restarted coordinator gets its nodes back within seconds); a peer that
breaks the protocol is refused with the reason, logged, and everyone else is served on.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from ..store import Store
from ..store.sqlite import StoreError
from ..transport import credentials as cred
from ..transport.streams import DRIVER_METHOD, NODE_METHOD, server_options, tune_malloc
from ..wire import codec
from ..wire import corolla_pb2 as pb
from .peer import Peer, PeerClosed

log = logging.getLogger("corolla.coordinator")

#: how far the coordinator reads a driver's payload ahead of the slowest node it is writing to
WINDOW = 16 << 20
#: chunks of a node's reply read ahead of the driver's stream
RELAY_AHEAD = 8
HANDSHAKE_S = 10.0


class Payload:
    """One message's array bytes, kept once for all its destinations and streamed to them as
    they arrive from the driver (a node starts receiving before the driver has finished sending).

    Each destination is a consumer with a cursor; a chunk every consumer has passed is dropped,
    and the driver is read no further than `window` bytes ahead of the slowest destination being
    written, so the coordinator holds a window, not the model. A destination waiting for its
    node to connect keeps the chunks it has not had (bounded by the model), without slowing the
    others.
    """

    def __init__(self, total: int, window: int = WINDOW):
        self.total, self.window = total, window
        self.chunks: list[bytes | None] = []
        self.received = 0
        self.complete = False
        self.ok = True
        self._cursors: dict[int, int] = {}  # consumer -> index of its next chunk
        self._active: set[int] = set()  # consumers being written now (they pace the driver)
        self._trimmed = 0
        self._tokens = itertools.count()
        self._changed = asyncio.Condition()

    def consumer(self) -> int:
        token = next(self._tokens)
        self._cursors[token] = 0
        return token

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def add(self, chunk: bytes) -> None:
        """Append a chunk from the driver; waits while the window ahead of the active destinations is full."""
        self.chunks.append(chunk)
        self.received += len(chunk)
        await self._notify()
        async with self._changed:
            await self._changed.wait_for(self._has_room)

    def _has_room(self) -> bool:
        live = [self._cursors[t] for t in self._active if t in self._cursors]
        if not live:
            return True
        ahead = len(self.chunks) - min(live)
        return ahead * (self.received / max(1, len(self.chunks))) < self.window

    async def finish(self, ok: bool) -> None:
        self.complete, self.ok = True, ok
        await self._notify()

    async def stream(self, token: int):
        """The chunks for consumer `token`, as they come; ends when the payload is complete."""
        self._active.add(token)
        try:
            while True:
                i = self._cursors[token]
                if i < len(self.chunks):
                    chunk = self.chunks[i]
                    self._cursors[token] = i + 1
                    self._trim()
                    await self._notify()
                    yield chunk
                elif self.complete:
                    return
                else:
                    async with self._changed:
                        await self._changed.wait_for(lambda: self.complete or self._cursors[token] < len(self.chunks))
        finally:
            self._active.discard(token)

    def drop(self, token: int) -> None:
        """Consumer `token` is done (sent, lost or given up)."""
        self._cursors.pop(token, None)
        self._active.discard(token)
        self._trim()
        asyncio.get_running_loop().create_task(self._notify())

    def _trim(self) -> None:
        low = min(self._cursors.values(), default=len(self.chunks))  # no consumers left: nothing to keep
        for j in range(self._trimmed, low):
            self.chunks[j] = None
        self._trimmed = max(self._trimmed, low)


@dataclass
class Delivery:
    header: pb.Header
    payload: Payload | None
    owner: "DriverSession"
    token: int = -1  # this destination's cursor in the payload

    def drop(self) -> None:
        if self.payload is not None:
            self.payload.drop(self.token)

    @property
    def message_id(self) -> str:
        return self.header.message_id


@dataclass
class NodeSession:
    node_id: int
    peer: Peer
    public_key: bytes
    properties: dict[str, Any]
    name: str
    connected_since: float = field(default_factory=time.time)
    in_flight: dict[str, "DriverSession"] = field(default_factory=dict)
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    relaying: bool = False  # waiting to hand a reply to a busy driver: not a sign of death
    task: asyncio.Task | None = None  # the stream's handler, cancelled when the node goes silent
    silent: bool = False


@dataclass
class DriverSession:
    sid: int
    peer: Peer
    public_key: bytes
    alive: bool = True


class Coordinator:
    def __init__(
        self,
        store_dir: str | Path,
        *,
        authorized_keys: dict[bytes, str] | None = None,
        driver_keys: dict[bytes, str] | None = None,
        heartbeat_s: float = 2.0,
        limits: codec.Limits = codec.Limits(),
    ):
        self.store = Store(store_dir)
        self.authorized_keys = authorized_keys
        self.driver_keys = driver_keys
        self.heartbeat_s = heartbeat_s
        self.limits = limits
        self.id = secrets.token_hex(8)
        self.nodes: dict[int, NodeSession] = {}
        self.held: dict[int, list[Delivery]] = defaultdict(list)  # for nodes not connected (yet)
        self._changed = asyncio.Event()
        self._drivers = 0
        self.server: grpc.aio.Server | None = None

    # -- server ---------------------------------------------------------------------------
    async def start(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        tune_malloc()
        self.server = grpc.aio.server(options=server_options(self.limits.max_chunk, self.heartbeat_s))
        handlers = {
            "Node": grpc.stream_stream_rpc_method_handler(self._node_stream),
            "Driver": grpc.stream_stream_rpc_method_handler(self._driver_stream),
        }
        assert NODE_METHOD.endswith("/Node") and DRIVER_METHOD.endswith("/Driver")
        generic = grpc.method_handlers_generic_handler("corolla.v1.Coordinator", handlers)
        self.server.add_generic_rpc_handlers((generic,))
        port = (
            self.server.add_secure_port(address, credentials)
            if credentials is not None
            else self.server.add_insecure_port(address)
        )
        if port == 0:
            raise OSError(f"cannot listen on {address} (in use, or not an address of this machine)")
        await self.server.start()
        self._reaper = asyncio.get_running_loop().create_task(self._reap_held())
        host = address.rsplit(":", 1)[0]
        log.info("coordinator %s listening on %s:%d (%s)", self.id, host, port, "TLS" if credentials else "plaintext")
        return port

    async def wait(self) -> None:
        assert self.server is not None
        await self.server.wait_for_termination()

    async def stop(self, grace: float = 1.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
        self.store.close()

    # -- handshake ------------------------------------------------------------------------
    async def _handshake(self, peer: Peer, role: str, context: Any) -> pb.Hello | None:
        """Hello, then the signed challenge when keys are required; None (after a Refused) if refused."""
        try:
            hello = (await peer.expect("hello", HANDSHAKE_S, "a hello")).hello
        except (codec.WireError, TimeoutError, PeerClosed) as e:
            log.warning("refused a %s peer %s: %s", role, context.peer(), e)
            await self._refuse(peer, "protocol", f"expected a corolla hello: {e}")
            return None
        if hello.version != codec.WIRE_VERSION:
            return await self._refused(
                peer, context, role, "version",
                f"this coordinator speaks wire version {codec.WIRE_VERSION}, the peer {hello.version}; "
                f"install matching corolla versions",
            )
        if hello.role != role:
            return await self._refused(peer, context, role, "protocol", f"a {hello.role!r} hello on the {role} stream")
        allowed = self.authorized_keys if role == "node" else self.driver_keys
        if allowed is None:
            return hello
        if not hello.public_key:
            return await self._refused(
                peer, context, role, "unauthorized",
                f"this coordinator authenticates {role}s; start the {role} with --key FILE "
                f"(make one with `corolla keys new`)",
            )
        key = bytes(hello.public_key)
        if key not in allowed:
            fp = cred.fingerprint(key) if len(key) == 32 else f"{len(key)}-byte key"
            return await self._refused(
                peer, context, role, "unauthorized",
                f"key {fp} is not in this coordinator's authorized {role} keys",
            )
        nonce = cred.new_nonce()
        await peer.send(challenge=pb.Challenge(nonce=nonce, coordinator_id=self.id))
        try:
            auth = (await peer.expect("auth", HANDSHAKE_S, "the signed challenge")).auth
        except (codec.WireError, TimeoutError, PeerClosed) as e:
            return await self._refused(peer, context, role, "protocol", f"no signed challenge: {e}")
        if not cred.verify_challenge(key, bytes(auth.signature), nonce, role, self.id):
            return await self._refused(
                peer, context, role, "unauthorized", f"bad signature for key {cred.fingerprint(key)}"
            )
        return hello

    async def _refused(self, peer: Peer, context: Any, role: str, code: str, reason: str) -> None:
        log.warning("refused %s %s: %s: %s", role, context.peer(), code, reason)
        await self._refuse(peer, code, reason)
        return None

    async def _refuse(self, peer: Peer, code: str, reason: str) -> None:
        try:
            await peer.send(refused=pb.Refused(code=code, reason=reason))
        except PeerClosed:
            pass

    def _peer(self, context: Any, label: str) -> Peer:
        return Peer(context.read, context.write, self.limits, label)

    # -- nodes ----------------------------------------------------------------------------
    async def _node_stream(self, request_iterator: Any, context: Any) -> None:
        peer = self._peer(context, f"node at {context.peer()}")
        hello = await self._handshake(peer, "node", context)
        if hello is None:
            return
        key = bytes(hello.public_key)
        node_id = self._node_id(hello, key)
        old = self.nodes.get(node_id)
        if old is not None and not old.peer.closed:
            if key and old.public_key == key:
                log.info("node %d reconnected; dropping its old stream", node_id)
                old.peer.closed = True
                await self._drop_node(old, "reconnected")
            else:
                await self._refused(
                    peer, context, "node", "node-id-in-use",
                    f"node id {node_id} is held by another connected node; give this node another id "
                    f"(--node-id, or a different partition-id)",
                )
                return
        session = NodeSession(
            node_id=node_id,
            peer=peer,
            public_key=key,
            properties=codec.from_entries(hello.properties),
            name=hello.name,
        )
        peer.label = f"node {node_id}"
        await peer.send(
            welcome=pb.Welcome(
                node_id=node_id,
                heartbeat_s=self.heartbeat_s,
                max_chunk=self.limits.max_chunk,
                coordinator_id=self.id,
            )
        )
        session.task = asyncio.current_task()
        self.nodes[node_id] = session
        for d in self.held.pop(node_id, []):
            await session.outbox.put(d)
        self._changed.set()
        log.info("node %d connected from %s (%d connected)", node_id, context.peer(), len(self.nodes))
        loop = asyncio.get_running_loop()
        writer = loop.create_task(self._node_writer(session))
        watchdog = loop.create_task(self._watchdog(session))
        reason = "stream ended"
        try:
            await self._node_reader(session)
        except PeerClosed as e:
            reason = str(e)
        except codec.WireError as e:
            reason = f"protocol error ({e.code}): {e}"
            log.warning("node %d broke the protocol: %s; dropping it", node_id, e)
            await self._refuse(peer, e.code, str(e))
        except asyncio.CancelledError:
            reason = "no heartbeat" if session.silent else "the coordinator is stopping"
        finally:
            writer.cancel()
            watchdog.cancel()
            if self.nodes.get(node_id) is session:
                await self._drop_node(session, reason)

    def _node_id(self, hello: pb.Hello, key: bytes) -> int:
        if hello.has_node_id:
            return int(hello.node_id)
        if key:  # stable across reconnects and coordinator restarts
            return int.from_bytes(hashlib.sha256(key).digest()[:6], "big")
        while True:
            nid = secrets.randbits(48)
            if nid not in self.nodes:
                return nid

    async def _drop_node(self, s: NodeSession, reason: str) -> None:
        s.peer.closed = True
        if self.nodes.get(s.node_id) is s:
            del self.nodes[s.node_id]
        self._changed.set()
        lost = list(s.in_flight.items())
        s.in_flight.clear()
        while not s.outbox.empty():
            d = s.outbox.get_nowait()
            lost.append((d.message_id, d.owner))
            d.drop()
        log.info("node %d left (%s); %d messages lost", s.node_id, reason, len(lost))
        for mid, owner in lost:
            await self._error_to(owner, mid, s.node_id, "node-lost", f"node {s.node_id} disconnected: {reason}")

    async def _error_to(self, owner: DriverSession, message_id: str, node_id: int, code: str, text: str) -> None:
        if not owner.alive:
            return
        h = pb.Header(
            kind="",
            src=node_id,
            dst=-1,
            message_id=f"{self.id}-{secrets.token_hex(4)}",
            reply_to=message_id,
            created=time.time(),
            error=pb.ErrorInfo(code=code, text=text),
        )
        try:
            await owner.peer.write_unit(
                codec.frame_bytes(header=h), (), codec.frame_bytes(end=pb.End(message_id=h.message_id, ok=True))
            )
        except PeerClosed:
            owner.alive = False

    async def _node_writer(self, s: NodeSession) -> None:
        while True:
            d: Delivery = await s.outbox.get()
            try:
                if not d.owner.alive:
                    continue
                if d.header.deadline and time.time() > d.header.deadline:
                    continue  # the driver has given up on it already
                s.in_flight[d.message_id] = d.owner
                await s.peer.exclusively(self._deliver, s, d)
            except PeerClosed:
                return
            finally:
                d.drop()

    async def _deliver(self, s: NodeSession, d: Delivery) -> None:
        """Header, the payload as it streams in from the driver, end (void if the driver's payload broke)."""
        await s.peer._send(codec.frame_bytes(header=d.header))
        sent, ok, reason = 0, True, ""
        if d.payload is not None:
            async for chunk in d.payload.stream(d.token):
                await s.peer._send(chunk)
                sent += len(chunk)
            if not d.payload.ok:
                await s.peer.pad(d.header.payload_bytes - sent)
                ok, reason = False, "the driver's payload broke off"
        await s.peer._send(codec.frame_bytes(end=pb.End(message_id=d.message_id, ok=ok, reason=reason)))

    async def _watchdog(self, s: NodeSession) -> None:
        """Heartbeats out; a node silent for 3 heartbeats (and not held up by us) is dropped."""
        current = asyncio.current_task()
        assert current is not None
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                if not s.peer.lock.locked():
                    await s.peer.send(heartbeat=pb.Heartbeat(sent=time.time()))
            except PeerClosed:
                pass
            silent = time.monotonic() - s.peer.last_seen
            if silent > 3 * self.heartbeat_s and not s.relaying:
                log.warning("node %d sent nothing for %.1f s; dropping it", s.node_id, silent)
                s.peer.closed = True
                s.silent = True
                if s.task is not None:
                    s.task.cancel()
                return

    async def _node_reader(self, s: NodeSession) -> None:
        while True:
            kind, value = await s.peer.recv()
            if kind == "frame":
                continue  # heartbeats (last_seen is updated by every read)
            if kind != "header":
                raise codec.WireError("unexpected", f"a {kind} outside a message")
            await self._relay_reply(s, value.header)

    async def _relay_reply(self, s: NodeSession, h: pb.Header) -> None:
        """Forward a node's reply, chunk by chunk, to the driver that sent the message."""
        owner = s.in_flight.pop(h.reply_to, None)
        h.src = s.node_id  # the coordinator, not the node, says who sent it
        h.dst = -1
        h.ClearField("dsts")
        h.ClearField("dst_message_ids")
        if owner is None or not owner.alive:
            log.info("node %d replied to %s, which no driver waits for; dropped", s.node_id, h.reply_to or "nothing")
            await self._pull(s, h)
            await self._skip_payload(s)
            return
        s.relaying = True
        try:
            await owner.peer.exclusively(self._forward, s, h, owner)
        finally:
            s.relaying = False

    async def _forward(self, s: NodeSession, h: pb.Header, owner: DriverSession) -> None:
        """The relay itself; runs holding the driver's write lock, to the end (see `Peer.exclusively`)."""
        s.peer.last_seen = time.monotonic()
        to_driver = owner.alive
        remaining = h.payload_bytes

        async def put(data: bytes) -> None:
            nonlocal to_driver
            if to_driver:
                try:
                    await owner.peer._send(data)
                except PeerClosed:
                    to_driver = owner.alive = False

        await put(codec.frame_bytes(header=h))
        await self._pull(s, h)
        ahead: asyncio.Queue = asyncio.Queue(RELAY_AHEAD)  # read the node while the driver's write completes

        async def read() -> None:
            try:
                while True:
                    kind, value = await s.peer.recv(None, "the reply's payload")
                    await ahead.put((kind, value))
                    if kind == "end":
                        return
            except (PeerClosed, codec.WireError) as e:
                await ahead.put(("error", e))

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                kind, value = await ahead.get()
                if kind == "chunk":
                    remaining -= len(value)
                    await put(value)
                elif kind == "end":
                    await put(codec.frame_bytes(end=value))
                    return
                elif kind == "error":
                    raise value
        except (PeerClosed, codec.WireError) as e:
            # finish the unit so the driver's stream stays framed, and say the reply is void
            if to_driver:
                try:
                    await owner.peer.pad(remaining)
                except PeerClosed:
                    to_driver = owner.alive = False
            await put(
                codec.frame_bytes(
                    end=pb.End(message_id=h.message_id, ok=False, reason=f"node-lost: node {s.node_id}: {e}")
                )
            )
            raise
        finally:
            reader.cancel()

    async def _pull(self, s: NodeSession, h: pb.Header) -> None:
        """Ask the node for the reply's payload (it waits for this after the header)."""
        if h.payload_bytes:
            try:
                await s.peer.send(pull=pb.Pull(message_id=h.message_id))
            except PeerClosed:
                pass  # the read that follows notices

    async def _skip_payload(self, s: NodeSession) -> None:
        while True:
            kind, _ = await s.peer.recv(None, "a payload to skip")
            if kind == "end":
                return

    async def _reap_held(self) -> None:
        """Messages held for absent nodes are dropped at their deadline (the driver times them out)."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for nid in list(self.held):
                keep = []
                for d in self.held[nid]:
                    if (d.header.deadline and now > d.header.deadline) or not d.owner.alive:
                        d.drop()
                    else:
                        keep.append(d)
                if keep:
                    self.held[nid] = keep
                else:
                    del self.held[nid]

    # -- drivers --------------------------------------------------------------------------
    async def _driver_stream(self, request_iterator: Any, context: Any) -> None:
        peer = self._peer(context, f"driver at {context.peer()}")
        hello = await self._handshake(peer, "driver", context)
        if hello is None:
            return
        self._drivers += 1
        d = DriverSession(self._drivers, peer, bytes(hello.public_key))
        peer.label = f"driver {d.sid}"
        await peer.send(
            welcome=pb.Welcome(heartbeat_s=self.heartbeat_s, max_chunk=self.limits.max_chunk, coordinator_id=self.id)
        )
        log.info("driver %d connected from %s", d.sid, context.peer())
        tasks: set[asyncio.Task] = set()
        try:
            while True:
                kind, value = await peer.recv()
                if kind == "header":
                    await self._route(d, value.header)
                elif kind == "frame":
                    t = asyncio.get_running_loop().create_task(self._driver_request(d, value))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                else:
                    raise codec.WireError("unexpected", f"a {kind} outside a message")
        except PeerClosed:
            pass
        except codec.WireError as e:
            log.warning("driver %d broke the protocol: %s", d.sid, e)
            await self._refuse(peer, e.code, str(e))
        finally:
            d.alive = False
            for t in tasks:
                t.cancel()
            log.info("driver %d disconnected", d.sid)

    async def _route(self, d: DriverSession, h: pb.Header) -> None:
        """Queue a driver's message for each destination, then stream its payload (once) to them."""
        payload = Payload(h.payload_bytes) if h.payload_bytes else None
        dsts = list(h.dsts) or [h.dst]
        ids = list(h.dst_message_ids) or [h.message_id]
        h.ClearField("dsts")
        h.ClearField("dst_message_ids")
        for dst, mid in zip(dsts, ids):
            one = pb.Header()
            one.CopyFrom(h)
            one.dst, one.message_id = dst, mid
            delivery = Delivery(one, payload, d, payload.consumer() if payload is not None else -1)
            node = self.nodes.get(dst)
            if node is not None and not node.peer.closed:
                await node.outbox.put(delivery)
            else:
                self.held[dst].append(delivery)
        ok = False
        try:
            while True:
                kind, value = await d.peer.recv(None, f"the payload of message {h.message_id}")
                if kind == "chunk":
                    assert payload is not None
                    await payload.add(value)
                elif kind == "end":
                    ok = value.ok
                    break
        finally:
            if payload is not None:
                await payload.finish(ok)

    async def _driver_request(self, d: DriverSession, f: pb.Frame) -> None:
        which = f.WhichOneof("body")
        try:
            if which == "list_nodes":
                await self._wait_nodes(f.list_nodes.min_nodes, f.list_nodes.wait_s)
                await d.peer.send(request_id=f.request_id, nodes=self.node_list())
            elif which == "list_runs":
                await d.peer.send(request_id=f.request_id, runs=pb.RunList(runs=self.run_records()))
            elif which == "run_update":
                self._save_run(f.run_update.run)
                await d.peer.send(request_id=f.request_id, ack=pb.Ack(text="saved"))
            elif which == "cancel":
                ids = set(f.cancel.message_ids)
                for nid, held in list(self.held.items()):
                    for x in held:
                        if x.message_id in ids:
                            x.drop()
                    self.held[nid] = [x for x in held if x.message_id not in ids]
            elif which == "heartbeat":
                pass
            else:
                await d.peer.send(request_id=f.request_id, refused=pb.Refused(code="unexpected", reason=which or ""))
        except PeerClosed:
            d.alive = False

    async def _wait_nodes(self, min_nodes: int, wait_s: float) -> None:
        end = time.monotonic() + max(0.0, wait_s)
        while len(self.nodes) < min_nodes and time.monotonic() < end:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), end - time.monotonic())
            except asyncio.TimeoutError:
                break

    def node_list(self) -> pb.NodeList:
        out = pb.NodeList()
        for nid in sorted(self.nodes):
            s = self.nodes[nid]
            out.nodes.append(
                pb.NodeInfo(
                    node_id=nid,
                    properties=codec.to_entries(s.properties),
                    connected_since=s.connected_since,
                    last_seen=time.time() - (time.monotonic() - s.peer.last_seen),
                    key_fingerprint=cred.fingerprint(s.public_key) if s.public_key else "",
                    name=s.name,
                    in_flight=len(s.in_flight) + s.outbox.qsize(),
                )
            )
        return out

    # -- runs -----------------------------------------------------------------------------
    def _save_run(self, r: pb.RunRecord) -> None:
        try:
            self.store.get_run(r.run_id)
        except StoreError:
            self.store.create_run(
                project=r.project, seed=r.seed, num_rounds=r.num_rounds, num_nodes=0, backend="deployment",
                config={}, run_id=r.run_id,
            )
        info = self.store.get_run(r.run_id)
        if info.num_rounds != r.num_rounds:
            self.store.update_run(r.run_id, num_rounds=r.num_rounds)
        if r.summary_json:
            record = json.loads(r.summary_json)
            done = {x["round"] for x in self.store.rounds(r.run_id)}
            if record.get("round") not in done:
                self.store.commit_round(r.run_id, record)
        if r.status and r.status != info.status:
            self.store.set_status(r.run_id, r.status, r.error or None)

    def run_records(self) -> list[pb.RunRecord]:
        out = []
        for info in self.store.list_runs():
            rounds = self.store.rounds(info.run_id)
            out.append(
                pb.RunRecord(
                    run_id=info.run_id, status=info.status, project=info.project, seed=info.seed,
                    num_rounds=info.num_rounds, rounds_done=max((r["round"] for r in rounds), default=0),
                    created=info.created, updated=info.updated, error=info.error or "",
                )
            )
        return out


async def serve(
    address: str,
    store_dir: str | Path,
    *,
    credentials: grpc.ServerCredentials | None = None,
    authorized_keys: dict[bytes, str] | None = None,
    driver_keys: dict[bytes, str] | None = None,
    heartbeat_s: float = 2.0,
    ready: Any = None,
) -> None:
    """Run a coordinator until cancelled (`corolla serve`)."""
    c = Coordinator(store_dir, authorized_keys=authorized_keys, driver_keys=driver_keys, heartbeat_s=heartbeat_s)
    port = await c.start(address, credentials)
    if ready is not None:
        ready(port)
    try:
        await c.wait()
    finally:
        await c.stop()
